"""What every data source shares: the protocol, the document split, and normalization.

A source yields normalized `(text, ends_document)` pieces of a split; the pieces of one
document concatenate to it. A source made of counted documents (`DocumentSource`: the KJV,
local files) is split by document: the last `val_fraction` of the documents are the val
split (as nanoGPT splits its text); a source that is a single document (one text file) is
split by characters the same way.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Protocol, TypeVar

from ...errors import DataError

if TYPE_CHECKING:  # config validates against the source kinds: no import back at run time
    from ...config import DataConfig

Piece = tuple[str, bool]  # (text, ends_document)
T = TypeVar("T")


class Source(Protocol):
    """The documents of one `data.source`, split into train and val."""

    def pieces(self, split: str) -> Iterator[Piece]:
        """(text, ends_document) pieces of `split` ('train' or 'val'), normalized, in order."""
        ...

    def all_documents(self) -> Iterator[str]:
        """Every normalized document, unsplit and in order (for evaluating a text)."""
        ...

    def size_hint(self) -> Optional[int]:
        """Bytes to read (for a progress bar's total), or None when unknown."""
        ...


@dataclass(frozen=True)
class SourceKind:
    """One kind of `data.source`, declared as `KIND = SourceKind(...)` in its module of this package."""

    name: str
    form: str  # how data.source names it, for error messages: "'kjv'", "hf:<dataset>", ...
    claims: Callable[[str], bool]  # does this data.source string belong to the kind?
    open: Callable[[DataConfig], Source]
    label: Callable[[str], str]  # a short name for shard folders and runs
    identity: Callable[[str], str] = str  # equal for data.source strings naming the same text (shard folder key)
    fallback: bool = False  # tried after every other kind (local paths)
    download: Callable[[str], str] = lambda source: ""  # what its first use downloads ("" = nothing, or it is here)
    # the characters of its train split under the default data settings, when the text is fixed (by its hash, or
    # shipped in a package): `slm recipes` counts a char vocabulary without reading (or downloading) the text
    pinned_chars: str = ""


# ---------------------------------------------------------------- normalization

_SPACES = re.compile(r"[^\S\n]+")


def normalize(text: str, cfg: DataConfig) -> str:
    """CRLF to LF (unless keep_crlf), Unicode NFC, then the options: lowercase, collapse whitespace, drop empty lines."""
    if not cfg.keep_crlf:
        text = text.replace("\r\n", "\n")
    text = unicodedata.normalize("NFC", text)
    if cfg.lowercase:
        text = text.lower()
    if cfg.collapse_whitespace:
        text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    if cfg.drop_empty_lines:
        text = "\n".join(line for line in text.split("\n") if line.strip())
    return text


def with_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """(item, is_last) for each item."""
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True


def normalized_pieces(raw: Iterable[str], cfg: DataConfig) -> Iterator[Piece]:
    """The non-empty normalized pieces of one document, the last marked as its end.

    A piece other than the last ends with a newline: normalizing the lines before it
    and keeping it gives the same text as normalizing the whole document at once."""
    def texts() -> Iterator[str]:
        for piece, last in with_last(raw):
            if not cfg.keep_crlf:
                piece = piece.replace("\r\n", "\n")
            if last or not piece.endswith("\n"):
                text = normalize(piece, cfg)
            else:
                core = normalize(piece[:-1], cfg)
                text = "" if cfg.drop_empty_lines and not core else core + "\n"
            if text:
                yield text

    for text, last in with_last(texts()):
        yield text, last


# ---------------------------------------------------------------- counted documents


class DocumentSource:
    """A source of counted documents, each an iterable of raw text pieces; subclasses give both."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self._chars: Optional[int] = None

    def count(self) -> int:
        """Number of documents."""
        raise NotImplementedError

    def raw_documents(self, skip: int = 0) -> Iterator[Iterable[str]]:
        """Each document as an iterable of raw pieces; the first `skip` ones are not read."""
        raise NotImplementedError

    def size_hint(self) -> Optional[int]:
        return None

    def pieces(self, split: str) -> Iterator[Piece]:
        count = self.count()
        if count == 0:
            raise DataError(f"data.source {self.cfg.source!r} has no text; point it at a non-empty corpus")
        if count == 1:
            yield from self._char_split(split)
            return
        cut = min(max(1, int(count * (1 - self.cfg.val_fraction))), count - 1)
        for i, doc in enumerate(self.raw_documents(skip=0 if split == "train" else cut)):
            if split == "train" and i >= cut:
                return
            yield from normalized_pieces(doc, self.cfg)

    def all_documents(self) -> Iterator[str]:
        for doc in self.raw_documents():
            yield "".join(text for text, _ in normalized_pieces(doc, self.cfg))

    def _single_document(self) -> Iterator[Piece]:
        return normalized_pieces(next(self.raw_documents()), self.cfg)

    def _char_split(self, split: str) -> Iterator[Piece]:
        """One document: the first (1 - val_fraction) of its characters are train, the rest val."""
        if self._chars is None:
            self._chars = sum(len(text) for text, _ in self._single_document())
        if self._chars == 0:
            raise DataError(f"data.source {self.cfg.source!r} has no text; point it at a non-empty corpus")
        cut = int(self._chars * (1 - self.cfg.val_fraction))
        start = 0
        for text, ends in self._single_document():
            end = start + len(text)
            if split == "train" and start < cut:
                yield text[: cut - start], end >= cut
            elif split == "val" and end > cut:
                yield text[max(0, cut - start) :], ends
            start = end
