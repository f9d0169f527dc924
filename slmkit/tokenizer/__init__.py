"""Tokenizers behind one interface; `load_tokenizer` finds the kind from the saved file.

    kind       saved as                                  trained by
    char       {"kind": "char", "chars": [...]}          CharTokenizer.fit
    word       HF tokenizer.json (model WordLevel)       fit_word
    bpe        HF tokenizer.json + vocab.json/merges.txt fit_bpe
    wordpiece  HF tokenizer.json (model WordPiece)       fit_wordpiece
    gpt2       {"kind": "gpt2"}                          (fixed; tiktoken)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from ..config import TOKENIZER_KINDS, TokenizerConfig
from ..errors import DataError
from .base import Tokenizer
from .bpe import fit_bpe, fit_wordpiece
from .char import CharTokenizer
from .gpt2 import GPT2Tokenizer
from .hf import KIND_OF_MODEL, HFTokenizer
from .word import fit_word

__all__ = ["Tokenizer", "CharTokenizer", "GPT2Tokenizer", "HFTokenizer", "fit_tokenizer", "load_tokenizer"]

_FITTERS = {
    "char": lambda cfg, texts: CharTokenizer.fit(texts),
    "word": fit_word,
    "bpe": fit_bpe,
    "wordpiece": fit_wordpiece,
    "gpt2": lambda cfg, texts: GPT2Tokenizer(),
}
_OWN_FORMATS = {"char": CharTokenizer, "gpt2": GPT2Tokenizer}  # our JSON, with a "kind" key
_NAMES = {"gpt2": GPT2Tokenizer}  # load_tokenizer("gpt2") needs no file


def fit_tokenizer(cfg: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
    """Train a tokenizer of kind `cfg.kind` on `texts` (gpt2 is fixed and ignores them)."""
    cfg.validate()
    if cfg.kind not in _FITTERS:
        raise DataError(f"tokenizer.kind={cfg.kind!r} is not available; valid: {', '.join(TOKENIZER_KINDS)}")
    return _FITTERS[cfg.kind](cfg, texts)


def load_tokenizer(path_or_name: Path | str, kind: Optional[str] = None) -> Tokenizer:
    """Load a saved tokenizer (a file, or a folder holding tokenizer.json) or a named one ("gpt2").

    With `kind`, a tokenizer of another kind is an error.
    """
    path = Path(path_or_name)
    if not path.exists() and str(path_or_name) in _NAMES:
        tokenizer: Tokenizer = _NAMES[str(path_or_name)]()
    else:
        tokenizer = _load_file(path / "tokenizer.json" if path.is_dir() else path)
    if kind is not None and tokenizer.kind != kind:
        raise DataError(
            f"{path_or_name} holds a {tokenizer.kind!r} tokenizer, expected {kind!r}; "
            "re-run `slm prepare --force` or fix tokenizer.kind"
        )
    return tokenizer


def _load_file(path: Path) -> Tokenizer:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"tokenizer file {path} does not exist; run `slm prepare` first") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path} is not a tokenizer file (not valid JSON); re-run `slm prepare`") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a tokenizer file (not a JSON object); re-run `slm prepare`")
    if "kind" in data:
        kind = data["kind"]
        if kind not in _OWN_FORMATS:
            raise DataError(f"{path}: unknown tokenizer kind {kind!r}; valid: {', '.join(TOKENIZER_KINDS)}")
        return _OWN_FORMATS[kind].from_dict(data, str(path))
    model = data.get("model")
    if isinstance(model, dict) and "type" in model:
        if model["type"] not in KIND_OF_MODEL:
            raise DataError(
                f"{path}: unknown tokenizer kind: Hugging Face model {model['type']!r}; "
                f"valid: {', '.join(KIND_OF_MODEL)} (tokenizer.kind {', '.join(KIND_OF_MODEL.values())})"
            )
        return HFTokenizer.from_file(path)
    raise DataError(f"{path}: unknown tokenizer kind: no 'kind' key and no Hugging Face model; re-run `slm prepare`")
