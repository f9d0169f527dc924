"""Character-level tokenizer: one id per distinct character of the text it was fitted on.

Characters it has not seen: `encode` raises a DataError that names them (a silent drop
would change the text the model sees); `drop_unknown` removes them first, for callers
that chose to (`slm sample` for prompts, `--data.unknown=drop` for eval and fine-tuning).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..atomic import atomic_write_text
from ..errors import DataError
from .base import Tokenizer
from .registry import TokenizerKind

FORMAT_VERSION = 1


class CharTokenizer(Tokenizer):
    """Maps each character to an id; the newline character doubles as end-of-text."""

    kind = "char"

    def __init__(self, chars: Iterable[str] = ()):
        self.chars: list[str] = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def fit(cls, texts: Iterable[str]) -> "CharTokenizer":
        """Build the vocabulary: every distinct character of `texts`, sorted, plus '\\n'."""
        seen: set[str] = {"\n"}
        for text in texts:
            seen.update(text)
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def eot_id(self) -> int:
        # Characters have no special tokens: documents are separated by a newline.
        return self.stoi["\n"]

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            missing = self.unknown_chars(text)
            shown = ", ".join(repr(c) for c in missing[:10])
            raise DataError(
                f"text has {len(missing)} character(s) not in the char tokenizer's vocabulary ({shown}); "
                "remove them, refit the tokenizer on text that has them, or set --data.unknown=drop"
            ) from None

    def unknown_chars(self, text: str) -> list[str]:
        """Distinct characters of `text` the vocabulary lacks, sorted."""
        return sorted({c for c in text if c not in self.stoi})

    def drop_unknown(self, text: str) -> tuple[str, int]:
        """`text` without the characters the vocabulary lacks, and how many were dropped."""
        stoi = self.stoi
        kept = "".join(c for c in text if c in stoi)
        return kept, len(text) - len(kept)

    def decode(self, ids: list[int]) -> str:
        chars = self.chars
        return "".join(chars[i] for i in ids)

    def save(self, path: Path | str) -> None:
        atomic_write_text(path, json.dumps({"kind": self.kind, "version": FORMAT_VERSION, "chars": self.chars}))

    @classmethod
    def from_dict(cls, data: dict, path: str) -> "CharTokenizer":
        chars = data.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise DataError(f"{path}: char tokenizer file has no valid 'chars' list; re-run `slm prepare`")
        if len(set(chars)) != len(chars) or "\n" not in chars:
            raise DataError(f"{path}: char tokenizer vocabulary has duplicates or lacks '\\n'; re-run `slm prepare`")
        return cls(chars)


KIND = TokenizerKind(
    name="char",
    fit=lambda texts, vocab_size, min_frequency: CharTokenizer.fit(texts),
    load=CharTokenizer.from_dict,
    default_vocab_size=None,
    summary="one id per distinct character of the train split (vocab_size is ignored); newline ends a document",
)
