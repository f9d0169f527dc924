"""The one tokenizer interface every kind implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional


class Tokenizer(ABC):
    """encode/decode text, with a vocabulary size, an end-of-text id and a saved form."""

    kind: str = ""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the model's embedding needs."""

    @property
    @abstractmethod
    def eot_id(self) -> int:
        """Id placed between documents."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text -> ids."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Ids -> text."""

    @abstractmethod
    def save(self, path: Path | str) -> None:
        """Write the tokenizer to a single file (atomically)."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text; kinds backed by a fast library override this."""
        return [self.encode(text) for text in texts]

    @property
    def unk_id(self) -> Optional[int]:
        """Id that stands for text outside the vocabulary (lossy kinds), or None when every text is kept."""
        return None

    def unknown_chars(self, text: str) -> list[str]:
        """Distinct characters of `text` that `encode` refuses (only a char tokenizer refuses any)."""
        return []

    def drop_unknown(self, text: str) -> tuple[str, int]:
        """`text` without the characters `encode` refuses, and how many were dropped."""
        return text, 0

    def token_bytes(self, ids: Optional[list[int]] = None) -> int:
        """UTF-8 byte length of the decoded ids (for bits per byte)."""
        return len(self.decode(ids or []).encode("utf-8"))
