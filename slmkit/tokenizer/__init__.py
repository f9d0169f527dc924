"""Tokenizers behind one interface (`Tokenizer`): fit one of a kind on text, or load a saved one.

Each kind is one module declaring `KIND = TokenizerKind(...)` (see registry.py); `fit_tokenizer`
and `load_tokenizer` find it there. A saved tokenizer.json is either our own JSON with a
"kind" key (char, gpt2) or a Hugging Face tokenizer.json whose model type names the kind
(word, bpe, wordpiece).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from ..errors import DataError
from .base import Tokenizer
from .char import CharTokenizer
from .chat import TEMPLATE_FILE, ChatTokenizer
from .gpt2 import GPT2Tokenizer
from .hf import HFTokenizer
from .registry import TokenizerKind, get_kind, kind_of_hf_model, kinds

if TYPE_CHECKING:
    from ..config import TokenizerConfig

__all__ = [
    "Tokenizer", "CharTokenizer", "ChatTokenizer", "GPT2Tokenizer", "HFTokenizer", "TokenizerKind",
    "fit_tokenizer", "load_tokenizer", "get_kind", "kinds",
]  # fmt: skip


def fit_tokenizer(cfg: "TokenizerConfig", texts: Iterable[str]) -> Tokenizer:
    """Train a tokenizer of kind `cfg.kind` on `texts` (a fixed kind such as gpt2 ignores them)."""
    kind = get_kind(cfg.kind)
    kind.check_vocab_size(cfg.vocab_size)
    return kind.fit(texts, cfg.vocab_size, cfg.min_frequency)


def load_tokenizer(path_or_name: Path | str, kind: Optional[str] = None, eot_token: Optional[str] = None) -> Tokenizer:
    """Load a saved tokenizer (a file, or a folder holding tokenizer.json) or a fixed kind by name ("gpt2").

    With `kind`, a tokenizer of another kind is an error. `eot_token`: the end-of-text token of a Hugging
    Face tokenizer.json (default: the one its special_tokens_map.json names, else <|endoftext|>). A chat_template.json beside the file adds the
    chat markers (a ChatTokenizer).
    """
    path = Path(path_or_name)
    fixed = kinds().get(str(path_or_name))
    if not path.exists() and fixed is not None and fixed.fixed:
        tokenizer = fixed.fit([], 0, 0)
    else:
        file = path / "tokenizer.json" if path.is_dir() else path
        tokenizer = _load_file(file, eot_token)
        if (file.parent / TEMPLATE_FILE).is_file():  # a chat run's: its markers follow the vocabulary
            tokenizer = ChatTokenizer.load(tokenizer, file.parent / TEMPLATE_FILE)
    if kind is not None and tokenizer.kind != kind:
        raise DataError(
            f"{path_or_name} holds a {tokenizer.kind!r} tokenizer, expected {kind!r}; "
            "re-run `slm prepare --force` or fix tokenizer.kind"
        )
    return tokenizer


def _load_file(path: Path, eot_token: Optional[str] = None) -> Tokenizer:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"tokenizer file {path} does not exist; run `slm prepare` first") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path} is not a tokenizer file (not valid JSON); re-run `slm prepare`") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a tokenizer file (not a JSON object); re-run `slm prepare`")
    valid = ", ".join(kinds())
    if "kind" in data:
        declared = kinds().get(data["kind"])
        if declared is None or declared.hf_model:
            raise DataError(f"{path}: unknown tokenizer kind {data['kind']!r}; valid: {valid}")
        return declared.load(data, str(path))
    model = data.get("model")
    if isinstance(model, dict) and "type" in model:
        declared = kind_of_hf_model(model["type"])
        if declared is None:
            models = ", ".join(f"{k.hf_model} ({k.name})" for k in kinds().values() if k.hf_model)
            raise DataError(f"{path}: unknown tokenizer kind: Hugging Face model {model['type']!r}; valid: {models}")
        return declared.load(data, str(path), eot_token)
    raise DataError(f"{path}: unknown tokenizer kind: no 'kind' key and no Hugging Face model; re-run `slm prepare`")
