"""Every shipped recipe (but the speedrun ones, tested with their benchmark): it loads, its full-size
model has the exact parameter count written here, and it trains a few steps on a small local slice
of data in its real source's format (hub loaders pointed at local parquet folders)."""

import dataclasses
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from slmkit.config import list_recipes, load_recipe
from slmkit.data.prepare import fit_on_train
from slmkit.data.sources import Corpus, source_kind
from slmkit.data.sources import hf as hf_source
from slmkit.data.sources import kjv
from slmkit.model import GPT
from slmkit.recipes import pinned_split, parameter_count, summarize
from slmkit.runs import CONFIG
from slmkit.train import train

from conftest import TINY_TEXT  # tests/ is on sys.path: rootdir conftest

RECIPES = [p.stem for p in list_recipes() if not p.stem.startswith("speedrun-")]

# recipe -> (seed system it reproduces, vocab size the full-size model is counted with, exact parameter count)
EXPECTED = {
    "kjv-bpe": ("", 1024, 922_752),  # the default: byte-level BPE 1024, SwiGLU, rotary, no bias (issue 21)
    "kjv-char-gpt2": ("", 63, 817_792),  # the GPT-2-style reference; 63 characters of the train split
    "chat-arithmetic": ("", 46, 402_688),  # 42 characters of the generated set + 4 chat markers
    "shakespeare-char": ("002", 65, 818_048),
    "shakespeare-char-nodecay": ("002", 65, 818_048),
    "shakespeare-char-lower": ("003", 39, 814_720),  # lowercased: 65 - 26 letters
    "tinystories-gpt2-50m": ("001", 50257, 51_082_752),
    "wikitext103-bpe-tiny": ("000", 30000, 7_878_528),
    "wikitext2-word": ("004", 10000, 24_035_328),
    "wikitext2-bpe": ("004", 10000, 24_035_328),
}


def by_hand(m, vocab: int) -> int:
    """GPT-2's parameter formula: embeddings, per block LN + attention + MLP, final LN, untied head
    (SwiGLU: a second input matrix, the gate)."""
    d, ff, b = m.n_embd, m.d_ff or 4 * m.n_embd, int(m.bias)
    inputs = 2 if m.mlp == "swiglu" else 1
    block = 2 * (d + b * d) + (3 * d * d + b * 3 * d) + (d * d + b * d) + inputs * (d * ff + b * ff) + (ff * d + b * d)
    pos = m.block_size * d if m.pos_embedding == "learned" else 0
    head = 0 if m.tie_embeddings else vocab * d
    return vocab * d + pos + m.n_layer * block + (d + b * d) + head


def built_count(m, vocab: int) -> int:
    """The parameters of the GPT itself, built on the meta device (no memory)."""
    with torch.device("meta"):
        return GPT(dataclasses.replace(m, vocab_size=vocab)).num_parameters()


OPTIONS = [
    {}, {"bias": False}, {"norm": "rmsnorm"}, {"norm": "rmsnorm", "bias": False}, {"mlp": "swiglu", "d_ff": 344},
    {"mlp": "relu2", "qk_norm": True}, {"tie_embeddings": False}, {"pos_embedding": "rotary"},
    {"pos_embedding": "sinusoidal", "mlp": "swiglu", "bias": False, "tie_embeddings": False}, {"pos_embedding": "none"},
]


@pytest.mark.parametrize("name", [p.stem for p in list_recipes()])
def test_parameter_count_without_torch_equals_the_built_model(name):
    model = load_recipe(name).model
    for options in OPTIONS:
        m = dataclasses.replace(model, **options)
        assert parameter_count(m, 97) == built_count(m, 97), options


def test_every_seed_has_its_recipe():
    assert sorted(RECIPES) == sorted(EXPECTED)
    assert {EXPECTED[r][0] for r in RECIPES} == {"", "000", "001", "002", "003", "004"}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_with_its_seed_and_exact_parameter_count(name):
    cfg = load_recipe(name)
    seed, vocab, params = EXPECTED[name]
    assert cfg.reproduces == seed
    assert built_count(cfg.model, vocab) == parameter_count(cfg.model, vocab) == params == by_hand(cfg.model, vocab)


def test_seed_numbers():
    w = load_recipe("wikitext103-bpe-tiny")
    assert (w.tokenizer.kind, w.tokenizer.vocab_size, w.train.seq_len, w.model.block_size) == ("bpe", 30000, 128, 512)
    assert (w.model.n_embd, w.model.n_head, w.model.d_ff, w.model.pos_embedding) == (128, 2, 512, "sinusoidal")
    assert (w.train.batch_size, w.train.lr, w.train.max_epochs, w.train.max_minutes) == (32, 1e-4, 5, 0)
    assert (w.train.schedule, w.train.plateau_factor, w.train.plateau_patience, w.train.early_stop_patience) == (
        "plateau", 0.5, 2, 3
    )
    t = load_recipe("tinystories-gpt2-50m")
    assert 50e6 <= EXPECTED["tinystories-gpt2-50m"][2] <= 60e6
    assert (t.tokenizer.kind, t.train.optimizer, t.train.schedule) == ("gpt2", "adamw", "cosine") and t.train.warmup_steps > 0
    s, n = load_recipe("shakespeare-char"), load_recipe("shakespeare-char-nodecay")
    assert (s.train.optimizer, s.train.lr, s.train.schedule, s.train.gamma, s.train.grad_clip) == (
        "adam", 1e-3, "exponential", 0.95, 1.0
    )
    assert n.train.schedule == "constant" and n.train.grad_clip == 1.0
    low = load_recipe("shakespeare-char-lower")
    assert low.data.lowercase and low.data.collapse_whitespace and low.train.optimizer == "adam"
    assert low.train.eval_batches > 0 and low.train.sample_interval > 0 and low.train.early_stop_patience > 0
    for name, kind in (("wikitext2-word", "word"), ("wikitext2-bpe", "bpe")):
        c = load_recipe(name)
        m, tr = c.model, c.train
        assert (c.tokenizer.kind, c.tokenizer.vocab_size) == (kind, 10000)
        assert (m.n_embd, m.n_head, m.n_layer, m.d_ff, m.block_size, m.dropout) == (512, 8, 6, 2048, 512, 0.1)
        assert (tr.batch_size, tr.lr, tr.max_epochs) == (32, 3e-4, 10)


def test_default_job_numbers():
    """The default (issue 21) and the GPT-2-style reference: same shape and budget, the schedule
    a fraction of the budget."""
    new, old = load_recipe(), load_recipe("kjv-char-gpt2")
    shape = lambda c: (c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.block_size, c.train.batch_size)
    assert shape(new) == shape(old) == (4, 4, 128, 128, 32) and new.train.max_minutes == old.train.max_minutes == 5
    assert (new.tokenizer.kind, new.tokenizer.vocab_size) == ("bpe", 1024)
    m = new.model
    assert (m.bias, m.pos_embedding, m.norm, m.mlp, m.d_ff, m.qk_norm) == (False, "rotary", "rmsnorm", "swiglu", 344, True)
    t = new.train
    assert (t.optimizer, t.muon_lr, t.muon_momentum, t.lr, t.min_lr) == ("muon", 0.02, 0.8, 3e-3, 3e-4)
    assert (t.warmup_fraction, t.schedule, t.cooldown_fraction) == (0.03, "cosine", 0.5)
    assert (old.tokenizer.kind, old.model.pos_embedding, old.model.mlp, old.model.bias) == ("char", "learned", "gelu", True)
    assert (old.train.optimizer, old.train.lr, old.train.warmup_steps, old.train.cooldown_fraction) == ("adamw", 3e-3, 100, 1.0)


def test_char_vocab_is_counted_from_the_corpus_or_reported_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path))  # no tinyshakespeare here: no download is attempted
    row = summarize(load_recipe("shakespeare-char"))  # the pinned file's characters: no download needed
    assert (row.vocab_size, row.parameters, row.download) == (65, 818_048, "1.1 MB")
    row = summarize(load_recipe("shakespeare-char", {"data.source": "hf:wikitext-2-raw-v1"}))
    assert row.parameters is None and "slm prepare --recipe shakespeare-char" in row.vocab_note
    (tmp_path / "shakes.txt").write_text("abc\nab", encoding="utf-8")
    row = summarize(load_recipe("shakespeare-char", {"data.source": str(tmp_path / "shakes.txt")}))
    assert row.vocab_size == 4 and row.parameters == by_hand(load_recipe("shakespeare-char").model, 4)


PINNED = [  # (source, data settings): the defaults, and every normalization pinned_chars are said to survive
    (source, settings)
    for source in ("kjv", "tinyshakespeare")
    for settings in ({}, {"data.lowercase": True, "data.collapse_whitespace": True, "data.drop_empty_lines": True,
                          "data.keep_crlf": True, "data.errors": "replace"})
]  # fmt: skip


@pytest.mark.parametrize("source, settings", PINNED)
def test_pinned_characters_are_what_prepare_fits(source, settings):
    """The stored characters of a pinned text (what `slm recipes` counts without reading it) are the
    vocabulary `prepare` fits on its train split."""
    if source_kind(source).download(source):
        pytest.skip(f"{source} is not on this machine")
    cfg = load_recipe("kjv-char-gpt2", {"data.source": source, **settings})
    fitted = fit_on_train(cfg, Corpus(cfg.data))
    row = summarize(cfg)
    assert "pinned" in row.vocab_note and row.vocab_size == fitted.vocab_size
    if not settings:
        assert "".join(fitted.chars) == source_kind(source).pinned_chars


def test_pinned_characters_are_not_used_for_another_split(tmp_path, monkeypatch):
    assert pinned_split(load_recipe("kjv-char-gpt2").data)
    assert not pinned_split(load_recipe("kjv-char-gpt2", {"data.val_fraction": 0.5}).data)  # another train split: read it
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path))
    row = summarize(load_recipe("shakespeare-char", {"data.val_fraction": 0.5}))  # not here: unknown
    assert row.vocab_size is None and "download it" in row.vocab_note


# ---------------------------------------------------------------- a few training steps on local slices


def _parquet(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts}), path)


def _wikitext_rows(n_articles: int) -> list[str]:
    """Rows as Salesforce/wikitext stores them: one line each, ' = Title = ' starting an article."""
    lines = TINY_TEXT.splitlines()[:3]
    rows = []
    for a in range(n_articles):
        rows += ["", f" = Article {a} = \n", ""] + [f" {line} \n" for line in lines]
    return rows


def _local_source(name: str, source: str, tmp_path, monkeypatch) -> str:
    """Point the recipe's source at a local slice in the same format; returns the data.source to use."""
    if source.startswith("hf:"):
        key = source[3:]
        _, _, streaming = hf_source.HF_DATASETS[key]
        repo = tmp_path / key  # the folder name keeps "wikitext": articles are rejoined as on the hub
        if "wikitext" in key:
            _parquet(repo / "train-00000-of-00001.parquet", _wikitext_rows(12))
            _parquet(repo / "validation-00000-of-00001.parquet", _wikitext_rows(2))
        else:  # roneneldan/TinyStories: one story per row, train and validation
            stories = [f"Once upon a time there was a cat number {i}. It was happy." for i in range(40)]
            _parquet(repo / "data" / "train-00000-of-00001.parquet", stories)
            _parquet(repo / "data" / "validation-00000-of-00001.parquet", stories[:4])
        monkeypatch.setitem(hf_source.HF_DATASETS, key, (str(repo), None, streaming))
        return source  # unchanged: the hub loader itself reads the local folder
    if source == "arithmetic-reversal":
        return source  # generated by slmkit itself: already local
    if source == "kjv":
        path = tmp_path / "kjv.jsonl"  # the built-in corpus' own format: one JSON verse a line
        with open(kjv.kjv_path(), encoding="utf-8") as f:
            path.write_text("".join(next(f) for _ in range(300)), encoding="utf-8")
        return str(path)
    path = tmp_path / "input.txt"  # tinyshakespeare: one plain text file (holding the prompt's characters)
    path.write_text("O God, O God!\n" + TINY_TEXT, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_a_few_steps_on_a_local_slice(name, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    recipe = load_recipe(name)
    source = _local_source(name, recipe.data.source, tmp_path, monkeypatch)
    # Only the data, the batch and the budget change; the model is the recipe's, at full size.
    cfg = load_recipe(name, {
        "data.source": source, "data.shard_dir": str(tmp_path / "shards"), "data.num_workers": 1, "train.batch_size": 2,
        "train.seq_len": 32, "train.grad_accum_steps": 1, "train.max_steps": 3, "train.max_epochs": 0,
        "train.max_minutes": 0, "train.eval_interval": 3, "train.eval_batches": 2, "train.log_interval": 1,
        "train.warmup_steps": min(recipe.train.warmup_steps, 1), "train.sample_interval": min(recipe.train.sample_interval, 2),
        "sample.max_new_tokens": 5,
    })  # fmt: skip
    assert cfg.model == recipe.model and cfg.tokenizer == recipe.tokenizer
    result = train(cfg, out=tmp_path / "run", progress_bar=False)
    assert result.steps == 3 and math.isfinite(result.final_val.metrics["loss"])
    saved = yaml.safe_load((tmp_path / "run" / CONFIG).read_text())
    assert saved["reproduces"] == recipe.reproduces and saved["model"]["n_layer"] == recipe.model.n_layer
    assert saved["model"]["d_ff"] == recipe.model.d_ff and saved["model"]["n_embd"] == recipe.model.n_embd


def test_slm_recipes_prints_every_recipe_with_its_count(tmp_path, monkeypatch, capsys):
    from slmkit.cli import main

    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path))  # nothing downloaded: still every count, and what to fetch
    assert main(["recipes"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert sorted(lines) == sorted(p.stem for p in list_recipes())
    for name in RECIPES:
        seed, vocab, params = EXPECTED[name]
        assert f"reproduces={seed or '-'}" in lines[name]
        # tinyshakespeare is not downloaded here: its pinned file's characters are counted (issue 20.5)
        assert f"{params:,} params" in lines[name] and f"vocab {vocab:,}" in lines[name]
    assert "(65 characters of the pinned tinyshakespeare; downloads 1.1 MB)" in lines["shakespeare-char"]
    assert "downloads 13 MB" in lines["wikitext2-word"] and "downloads" not in lines["kjv-bpe"]
