"""Where text comes from: each module of this package that defines `KIND = SourceKind(...)` is one kind of
`data.source` (kjv, tinyshakespeare, hf:<dataset>, local files/folders/globs).

`Corpus(cfg)` opens the kind that claims `cfg.source` and streams its train and val splits
as normalized `(text, ends_document)` pieces (see base.py for the protocol and the split).
A tokenizer is fitted on the train split only (`Corpus.texts`), so the val split is unseen.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING, Iterator, Optional

from ...errors import DataError
from .base import Piece, Source, SourceKind, normalize, normalized_pieces

if TYPE_CHECKING:  # config validates against the source kinds: no import back at run time
    from ...config import DataConfig

__all__ = ["Corpus", "Piece", "Source", "SourceKind", "kinds", "source_kind", "source_label", "normalize", "normalized_pieces"]

FIT_CHARS = 1 << 16  # HF trainers parallelize over texts: fit on smaller ones (2x faster than 1 MB)


@functools.lru_cache(maxsize=1)
def kinds() -> dict[str, SourceKind]:
    """Every source kind declared by a module of this package, by name; fallback kinds last."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        kind = getattr(importlib.import_module(f"{__name__}.{info.name}"), "KIND", None)
        if isinstance(kind, SourceKind):
            found.append(kind)
    return {kind.name: kind for kind in sorted(found, key=lambda k: k.fallback)}


def source_kind(source: str) -> SourceKind:
    """The kind that claims `data.source=source`; DataError listing the valid forms otherwise."""
    for kind in kinds().values():
        if kind.claims(source):
            return kind
    forms = [kind.form for kind in kinds().values()]
    raise DataError(f"data.source {source!r} is not {', '.join(forms[:-1])} nor {forms[-1]}")


def source_label(source: str) -> str:
    """A short name of `data.source` for runs: its kind's label (a path that does not exist yet is named by the path)."""
    kind = next((k for k in kinds().values() if k.claims(source)), None)
    return (kind or next(k for k in kinds().values() if k.fallback)).label(source)


def _split_at_lines(text: str, size: int) -> Iterator[str]:
    """`text` in parts of about `size` characters, each ending at a newline where there is one."""
    start = 0
    while len(text) - start > size:
        end = text.find("\n", start + size) + 1
        if end == 0:
            break
        yield text[start:end]
        start = end
    if start < len(text):
        yield text[start:]


class Corpus:
    """The documents of `cfg.source`, split into train and val, streamed as normalized pieces."""

    def __init__(self, cfg: DataConfig):
        cfg.validate()
        self.cfg = cfg
        self.source: Source = source_kind(cfg.source).open(cfg)

    def pieces(self, split: str) -> Iterator[Piece]:
        """(text, ends_document) pieces of `split` ('train' or 'val'), normalized, in order."""
        return self.source.pieces(split)

    def documents(self, split: str) -> Iterator[str]:
        """Whole normalized documents of `split` (their pieces joined)."""
        parts: list[str] = []
        for text, ends in self.pieces(split):
            parts.append(text)
            if ends:
                yield "".join(parts)
                parts = []

    def all_documents(self) -> Iterator[str]:
        """Every normalized, non-empty document of the source, unsplit and in order (for evaluation)."""
        yield from (d for d in self.source.all_documents() if d)

    def size_hint(self) -> Optional[int]:
        """Bytes to read (for a progress bar's total), or None when unknown."""
        return self.source.size_hint()

    def texts(self) -> Iterator[str]:
        """The train split's text in parts of about FIT_CHARS: what a tokenizer is fitted on."""
        for text, _ in self.pieces("train"):
            yield from _split_at_lines(text, FIT_CHARS)
