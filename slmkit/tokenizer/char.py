"""Character-level tokenizer (seed 003's CharacterTokenizer): one id per distinct character.

Policy for characters not seen when fitting: `encode` raises a DataError that names
them (a silent drop would change the text the model sees); `encode(..., unknown="skip")`
drops them instead, which `slm sample` uses for prompts after warning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..atomic import atomic_write_text
from ..errors import DataError
from .base import Tokenizer

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

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            missing = sorted({c for c in text if c not in stoi})
            if unknown == "skip":
                return [stoi[c] for c in text if c in stoi]
            shown = ", ".join(repr(c) for c in missing[:10])
            raise DataError(
                f"text has {len(missing)} character(s) not in the char tokenizer's vocabulary ({shown}); "
                "remove them or refit the tokenizer on text that has them"
            ) from None

    def unknown_chars(self, text: str) -> list[str]:
        """Characters of `text` the vocabulary lacks."""
        return sorted({c for c in text if c not in self.stoi})

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
