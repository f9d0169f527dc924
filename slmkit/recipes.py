"""`slm recipes`: every shipped recipe with its seed, data, tokenizer, model shape and exact parameter count.

No torch and no corpus needed: the parameter count is computed from the model's shape, and the
character vocabulary of the pinned tinyshakespeare file (fixed by its SHA-256) is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import ModelConfig, RunConfig, list_recipes, load_recipe
from .data import sources
from .tokenizer import bpe, gpt2, word

FIXED_VOCAB = {"gpt2": gpt2.VOCAB_SIZE}  # tokenizers whose vocabulary does not depend on the corpus
# tokenizer.vocab_size=0 means these
DEFAULT_VOCAB = {"word": word.DEFAULT_VOCAB_SIZE, "bpe": bpe.DEFAULT_VOCAB_SIZE, "wordpiece": bpe.DEFAULT_VOCAB_SIZE}

# Distinct characters (with '\n') of the fixed corpora, by (source, data.lowercase): the built-in KJV
# and the pinned tinyshakespeare (sources.TINYSHAKESPEARE_SHA256); the whitespace options change none.
# Valid up to this val_fraction; tests/test_recipes.py checks each against the vocabulary `prepare` fits.
PINNED_CHARS = {("kjv", False): 65, ("tinyshakespeare", False): 65, ("tinyshakespeare", True): 39}
PINNED_MAX_VAL_FRACTION = 0.1

# What `slm prepare` downloads for a source, in bytes (the HF figures: download_size on the dataset card).
DOWNLOAD_BYTES = {
    "tinyshakespeare": sources.TINYSHAKESPEARE_SIZE,
    "hf:wikitext-2-raw-v1": 7_300_000,
    "hf:wikitext-103-raw-v1": 315_466_397,
    "hf:tinystories": 1_000_775_442,
}


@dataclass
class RecipeSummary:
    """One row of `slm recipes`."""

    name: str
    seed: str
    source: str
    tokenizer: str
    shape: str
    vocab_size: Optional[int]  # None: a char vocabulary whose corpus is not on this machine
    parameters: Optional[int]
    vocab_note: str = ""
    download: str = ""  # what `slm prepare` fetches first ("" = nothing)

    def line(self) -> str:
        """The row as printed by `slm recipes`."""
        params = f"{self.parameters:,} params" if self.parameters is not None else "params need the corpus"
        vocab = f"vocab {self.vocab_size:,}" if self.vocab_size is not None else "vocab ?"
        notes = "; ".join(n for n in (self.vocab_note, self.download) if n)
        return (
            f"{self.name:26s} seed={self.seed or '-':4s} data={self.source:22s} tokenizer={self.tokenizer:9s} "
            f"{self.shape:34s} {vocab:13s} {params}" + (f" ({notes})" if notes else "")
        )


def parameter_count(m: ModelConfig, vocab_size: int) -> int:
    """Exact parameter count of the GPT `m` describes with `vocab_size` tokens (GPT.num_parameters()), without torch."""
    d, ff, b = m.n_embd, m.d_ff or 4 * m.n_embd, int(m.bias)
    norm = d if m.norm == "rmsnorm" else d + b * d  # RMSNorm: a weight, never a bias

    def linear(n_in: int, n_out: int) -> int:
        return n_in * n_out + b * n_out

    mlp = linear(d, ff) * (2 if m.mlp == "swiglu" else 1) + linear(ff, d)  # swiglu: c_gate beside c_fc
    block = 2 * norm + linear(d, 3 * d) + linear(d, d) + mlp  # ln_1, ln_2, c_attn, c_proj, mlp (qk_norm: no weight)
    pos = m.block_size * d if m.pos_embedding == "learned" else 0  # sinusoidal and rotary tables are buffers
    head = 0 if m.tie_embeddings else vocab_size * d
    return vocab_size * d + pos + m.n_layer * block + norm + head


def _download(cfg: RunConfig) -> str:
    """What `slm prepare` downloads for the recipe's source, or "" when nothing (or it is cached)."""
    source = cfg.data.source
    if source == "tinyshakespeare" and sources.tinyshakespeare_cached():
        return ""
    if source in DOWNLOAD_BYTES:
        return f"downloads {DOWNLOAD_BYTES[source] / 1e6:,.1f} MB"
    return "downloads from the Hugging Face hub" if source.startswith("hf:") else ""


def _local_char_source(cfg: RunConfig) -> Optional[str]:
    """Why a char recipe's corpus is readable here without a download, or None when it is not."""
    source = cfg.data.source
    if source == "kjv":
        return "built in"
    if source == "tinyshakespeare":
        return "cached" if sources.tinyshakespeare_cached() else None
    if source.startswith("hf:"):
        return None
    return "local" if Path(source).exists() or any(c in source for c in "*?[") else None


def recipe_vocab_size(cfg: RunConfig) -> tuple[Optional[int], str]:
    """The vocabulary the recipe's model gets, and how it was found; (None, why) when it needs a download."""
    tk, data = cfg.tokenizer, cfg.data
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "model.vocab_size"
    if tk.kind in FIXED_VOCAB:
        return FIXED_VOCAB[tk.kind], ""
    if tk.kind != "char":
        # A trained tokenizer reaches its vocab_size on any real corpus (a tiny one may give fewer).
        return tk.vocab_size or DEFAULT_VOCAB[tk.kind], ""
    if (data.source, data.lowercase) in PINNED_CHARS and data.val_fraction <= PINNED_MAX_VAL_FRACTION:
        chars = PINNED_CHARS[data.source, data.lowercase]
        return chars, f"{chars} characters of {data.source}"
    where = _local_char_source(cfg)
    if where is None:
        return None, f"char vocabulary of {data.source}: download it with `slm prepare --recipe {cfg.name}`"
    from .tokenizer import CharTokenizer

    chars = CharTokenizer.fit(sources.Corpus(data).texts()).vocab_size
    return chars, f"{chars} characters of {data.source}, {where}"


def summarize(cfg: RunConfig) -> RecipeSummary:
    """The `slm recipes` row of one loaded recipe."""
    m = cfg.model
    shape = f"{m.n_layer}x{m.n_embd} h{m.n_head} ff{m.d_ff or 4 * m.n_embd} ctx{m.block_size} {m.pos_embedding}"
    vocab, note = recipe_vocab_size(cfg)
    params = parameter_count(m, vocab) if vocab is not None else None
    return RecipeSummary(
        cfg.name, cfg.seed, cfg.data.source, cfg.tokenizer.kind, shape, vocab, params, note, _download(cfg)
    )


def summarize_recipes() -> list[RecipeSummary]:
    """A row for every shipped recipe, sorted by name."""
    return [summarize(load_recipe(str(path))) for path in list_recipes()]
