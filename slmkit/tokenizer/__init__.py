"""Tokenizers behind one interface; `load_tokenizer` finds the kind from the saved file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..config import TokenizerConfig
from ..errors import DataError
from .base import Tokenizer
from .char import CharTokenizer

__all__ = ["Tokenizer", "CharTokenizer", "fit_tokenizer", "load_tokenizer"]

_KINDS = {"char": CharTokenizer}


def fit_tokenizer(cfg: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
    """Train a tokenizer of kind `cfg.kind` on `texts`."""
    if cfg.kind == "char":
        return CharTokenizer.fit(texts)
    raise DataError(f"tokenizer.kind={cfg.kind!r} is not available; valid: {', '.join(_KINDS)}")


def load_tokenizer(path: Path | str) -> Tokenizer:
    """Load a tokenizer saved by `Tokenizer.save` (a file, or a run/shard folder holding tokenizer.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"tokenizer file {path} does not exist; run `slm prepare` first") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path} is not a tokenizer file (not valid JSON); re-run `slm prepare`") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in _KINDS:
        raise DataError(f"{path}: unknown tokenizer kind {kind!r}; valid: {', '.join(_KINDS)}")
    return _KINDS[kind].from_dict(data, str(path))
