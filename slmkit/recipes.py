"""`slm recipes`: every shipped recipe with the seed system it reproduces, its data, tokenizer, model shape and exact parameter count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config import RunConfig, list_recipes, load_recipe
from .data.sources import Corpus, source_kind
from .model import count_parameters
from .tokenizer import get_kind


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
    if not source.download(cfg.data.source):
        chars = kind.fit(Corpus(cfg.data).texts(), tk.vocab_size, tk.min_frequency).vocab_size
        return chars, f"{chars} characters of {cfg.data.source}"
    if source.pinned_chars:  # lowercasing is the only normalization that merges characters
        chars = len({c.lower() if cfg.data.lowercase else c for c in source.pinned_chars})
        return chars, f"{chars} characters of the pinned {cfg.data.source}"
    return None, f"{tk.kind} vocabulary of {cfg.data.source}: download it with `slm prepare --recipe {cfg.name}`"


def summarize(cfg: RunConfig) -> RecipeSummary:
    """The `slm recipes` row of one loaded recipe; the parameter count is computed by building the model."""
    m = cfg.model
    shape = f"{m.n_layer}x{m.n_embd} h{m.n_head} ff{m.d_ff or 4 * m.n_embd} ctx{m.block_size} {m.pos_embedding}"
    vocab, note = recipe_vocab_size(cfg)
    params = count_parameters(m, vocab) if vocab is not None else None
    download = source_kind(cfg.data.source).download(cfg.data.source)
    return RecipeSummary(cfg.name, cfg.reproduces, cfg.data.source, cfg.tokenizer.kind, shape, vocab, params, note, download)


def summarize_recipes() -> list[RecipeSummary]:
    """A row for every shipped recipe, sorted by name."""
    return [summarize(load_recipe(str(path))) for path in list_recipes()]
