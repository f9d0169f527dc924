"""`slm recipes`: every shipped recipe with the seed system it reproduces, its data, tokenizer, model shape and exact parameter count.

No torch: the parameter count is computed from the model's shape (tests/test_recipes.py checks it
equals the built model's for every recipe and several option combinations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .chat import SPECIAL_TOKENS
from .config import DataConfig, ModelConfig, RunConfig, list_recipes, load_recipe
from .data.sources import Corpus, source_kind
from .tokenizer import get_kind


# the data settings under which a source's pinned_chars hold only at their defaults: the pinned texts are valid
# UTF-8 whose only whitespace is " " and "\n", so the other normalizations leave their characters as they are
# (lowercase is applied to them; tests/test_recipes.py checks this against what `prepare` fits)
PINNED_SETTINGS = ("format", "val_fraction")


@dataclass
class RecipeSummary:
    """One row of `slm recipes`."""

    name: str
    reproduces: str
    source: str
    tokenizer: str
    shape: str
    vocab_size: Optional[int]  # None: a char vocabulary whose corpus is not on this machine
    parameters: Optional[int]
    vocab_note: str = ""
    download: str = ""  # what its data source downloads the first time ("" = nothing)

    def line(self) -> str:
        """The row as printed by `slm recipes`."""
        params = f"{self.parameters:,} params" if self.parameters is not None else "params need the corpus"
        vocab = f"vocab {self.vocab_size:,}" if self.vocab_size is not None else "vocab ?"
        notes = [self.vocab_note] * bool(self.vocab_note) + [f"downloads {self.download}"] * bool(self.download)
        note = f" ({'; '.join(notes)})" if notes else ""
        return (
            f"{self.name:26s} reproduces={self.reproduces or '-':4s} data={self.source:22s} tokenizer={self.tokenizer:9s} "
            f"{self.shape:34s} {vocab:13s} {params}{note}"
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


def recipe_vocab_size(cfg: RunConfig) -> tuple[Optional[int], str]:
    """The vocabulary the recipe's model gets, and how it was found; (None, why) when it needs a download."""
    tk = cfg.tokenizer
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "model.vocab_size"
    kind = get_kind(tk.kind)
    if kind.vocab_size(tk.vocab_size) is not None:
        # A trained tokenizer reaches its vocab_size on any real corpus (a tiny one may give fewer).
        return kind.vocab_size(tk.vocab_size), ""
    source = source_kind(cfg.data.source)  # the vocabulary is the characters of its train split
    if source.pinned_chars and pinned_split(cfg.data):  # lowercasing is the only setting applied to them
        chars = len({c.lower() if cfg.data.lowercase else c for c in source.pinned_chars})
        return chars, f"{chars} characters of the pinned {cfg.data.source}"
    if not source.download(cfg.data.source):
        chars = kind.fit(Corpus(cfg.data).texts(), tk.vocab_size, tk.min_frequency).vocab_size
        if cfg.data.format == "chat":  # its markers follow the characters
            return chars + len(SPECIAL_TOKENS), f"{chars} characters of {cfg.data.source} + {len(SPECIAL_TOKENS)} chat markers"
        return chars, f"{chars} characters of {cfg.data.source}"
    return None, f"{tk.kind} vocabulary of {cfg.data.source}: download it with `slm prepare --recipe {cfg.name}`"


def pinned_split(data: DataConfig) -> bool:
    """Whether the train split is the one a source's pinned_chars were counted on (the default settings)."""
    return all(getattr(data, key) == getattr(DataConfig(), key) for key in PINNED_SETTINGS)


def summarize(cfg: RunConfig) -> RecipeSummary:
    """The `slm recipes` row of one loaded recipe."""
    m = cfg.model
    shape = f"{m.n_layer}x{m.n_embd} h{m.n_head} ff{m.d_ff or 4 * m.n_embd} ctx{m.block_size} {m.pos_embedding}"
    vocab, note = recipe_vocab_size(cfg)
    params = parameter_count(m, vocab) if vocab is not None else None
    download = source_kind(cfg.data.source).download(cfg.data.source)
    return RecipeSummary(cfg.name, cfg.reproduces, cfg.data.source, cfg.tokenizer.kind, shape, vocab, params, note, download)


def summarize_recipes() -> list[RecipeSummary]:
    """A row for every shipped recipe, sorted by name."""
    return [summarize(load_recipe(str(path))) for path in list_recipes()]
