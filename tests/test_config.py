import pytest

from slmkit.config import RunConfig, list_recipes, load_config, load_recipe, parse_overrides, save_config
from slmkit.errors import ConfigError


def test_default_recipe_is_kjv_char():
    cfg = load_recipe()
    assert cfg.name == "kjv-char"
    assert cfg.data.source == "kjv" and cfg.tokenizer.kind == "char"
    assert cfg.train.max_minutes == 5


def test_every_shipped_recipe_loads():
    assert list_recipes()
    for path in list_recipes():
        assert load_recipe(str(path)).name == path.stem


def test_overrides_both_forms_and_types():
    over = parse_overrides(["--train.lr=3e-4", "--model.n_layer", "6", "--data.lowercase=true", "--data.source", "x.txt"])
    cfg = load_recipe("kjv-char", over)
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
        load_recipe("kjv-char", overrides)


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
    cfg = load_recipe("kjv-char", {"model.n_layer": 3, "train.lr": 5e-4})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert RunConfig().validate() is not None
