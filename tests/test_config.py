import dataclasses

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmkit.config import (
    SECTIONS,
    RunConfig,
    from_dict,
    list_recipes,
    load_config,
    load_recipe,
    parse_overrides,
    save_config,
)
from slmkit.errors import ConfigError


def test_default_recipe_is_kjv_bpe():
    cfg = load_recipe()
    assert cfg.name == "kjv-bpe"
    assert cfg.data.source == "kjv" and cfg.tokenizer.kind == "bpe"
    assert cfg.model.pos_embedding == "rotary" and cfg.train.optimizer == "muon"
    assert cfg.train.max_minutes == 5


def test_every_shipped_recipe_loads():
    assert list_recipes()
    for path in list_recipes():
        assert load_recipe(str(path)).name == path.stem


def test_overrides_both_forms_and_types():
    over = parse_overrides(["--train.lr=3e-4", "--model.n_layer", "6", "--data.lowercase=true", "--data.source", "x.txt"])
    cfg = load_recipe("kjv-char-gpt2", over)
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.n_layer == 6
    assert cfg.data.lowercase is True
    assert cfg.data.source == "x.txt"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.lrr": 1}, "unknown key 'train.lrr'.*train.lr"),
        ({"optim.lr": 1}, "unknown key 'optim.lr'"),
        ({"model.n_layer": "four"}, "model.n_layer='four' should be int"),
        ({"model.n_layer": 2.5}, "should be int"),
        ({"train.lr": "fast"}, "should be float"),
        ({"data.lowercase": "maybe"}, "should be bool"),
        ({"model.n_embd": 100, "model.n_head": 3}, "not divisible"),
        ({"model.block_size": 0}, "model.block_size=0 must be a positive"),
        ({"train.batch_size": -4}, "train.batch_size=-4"),
        ({"tokenizer.kind": "morse"}, "tokenizer.kind='morse'"),
        ({"data.val_fraction": 1.5}, "val_fraction"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("kjv-char-gpt2", overrides)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*kjv-char"):
        load_recipe("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(str(bad))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("modle:\n  n_layer: 2\n")
    with pytest.raises(ConfigError, match="unknown section 'modle'"):
        load_recipe(str(wrong))
    with pytest.raises(ConfigError, match="overrides look like"):
        parse_overrides(["train.lr=1"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--train.lr"])


def test_config_yaml_round_trip(tmp_path):
    cfg = load_recipe("kjv-char-gpt2", {"model.n_layer": 3, "train.lr": 5e-4})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert RunConfig().validate() is not None


# --- random junk: the parser either builds a valid config or raises a one-line ConfigError ---
FIELD_NAMES = sorted({f.name for s in SECTIONS for f in dataclasses.fields(getattr(RunConfig(), s))})
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.sampled_from(["nan", "-1", "1e9"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8), st.integers())
sections = st.dictionaries(keys, values, max_size=4)
section_names = st.one_of(st.sampled_from([*SECTIONS, "name"]), st.text(max_size=8))
recipes = st.one_of(values, st.dictionaries(section_names, st.one_of(sections, values), max_size=4))


def valid_or_config_error(build) -> None:
    try:
        cfg = build()
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(cfg, RunConfig)
    cfg.validate()  # what was accepted is valid


@settings(max_examples=300, deadline=None)
@given(raw=recipes)
def test_random_recipe_structures_are_accepted_only_when_valid(raw):
    valid_or_config_error(lambda: from_dict(raw).validate())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), recipes.map(lambda r: yaml.safe_dump(r, allow_unicode=True))))
def test_random_recipe_files_never_crash(tmp_path, text):
    path = tmp_path / "junk.yaml"
    path.write_text(text, encoding="utf-8")
    valid_or_config_error(lambda: load_recipe(str(path)))


@settings(max_examples=300, deadline=None)
@given(
    args=st.lists(
        st.one_of(st.text(max_size=20), st.sampled_from(FIELD_NAMES).map(lambda k: f"--model.{k}=")),
        max_size=4,
    )
)
def test_random_command_lines_never_crash(args):
    valid_or_config_error(lambda: load_recipe("kjv-char-gpt2", parse_overrides(args)))
