"""The tokenizer kinds: each module of this package that defines `KIND = TokenizerKind(...)` adds one.

A kind declares its name, how it is fitted on text and loaded from its saved file, its
default and minimum vocabulary size and whether it is lossy. `tokenizer.kind` and
`tokenizer.vocab_size` are validated against these declarations (config.py), and
`fit_tokenizer` / `load_tokenizer` dispatch through them: adding a kind is one new module.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import Tokenizer


@dataclass(frozen=True)
class TokenizerKind:
    """What the rest of slmkit knows about one tokenizer kind."""

    name: str  # the tokenizer.kind value
    fit: Callable[[Iterable[str], int, int], "Tokenizer"]  # (train texts, vocab_size, min_frequency) -> tokenizer
    load: Callable[..., "Tokenizer"]  # (parsed tokenizer.json, its path[, eot_token of an hf_model kind]) -> tokenizer
    default_vocab_size: Optional[int]  # tokenizer.vocab_size=0 means this; None: one per character of the text
    min_vocab_size: int = 1  # its special tokens and base alphabet
    fixed: bool = False  # the vocabulary is the default one whatever the text (gpt2)
    lossy: bool = False  # text outside the vocabulary becomes an unknown token (its unk_id is not None)
    hf_model: str = ""  # the Hugging Face model type its tokenizer.json holds ("" = our own JSON with "kind")
    summary: str = ""  # one line for the README's config table and error messages

    def vocab_size(self, requested: int) -> Optional[int]:
        """The vocabulary size a fit aims at for `tokenizer.vocab_size=requested` (None: the text decides)."""
        return requested or self.default_vocab_size

    def check_vocab_size(self, requested: int) -> None:
        """Raise ConfigError when `tokenizer.vocab_size=requested` cannot be fitted by this kind."""
        if requested < 0:
            raise ConfigError(f"tokenizer.vocab_size={requested} must be >= 0")
        if self.fixed and requested not in (0, self.default_vocab_size):
            raise ConfigError(
                f"tokenizer.vocab_size={requested}: {self.name}'s vocabulary is fixed at {self.default_vocab_size}; use 0"
            )
        if 0 < requested < self.min_vocab_size:
            raise ConfigError(
                f"tokenizer.vocab_size={requested} is too small for a {self.name} tokenizer: "
                f"it needs at least {self.min_vocab_size} (its special tokens and base alphabet); use 0 for the default"
            )


@functools.lru_cache(maxsize=1)
def kinds() -> dict[str, TokenizerKind]:
    """Every kind declared by a module of slmkit.tokenizer, by name."""
    found: dict[str, TokenizerKind] = {}
    package = importlib.import_module(__package__)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__package__}.{info.name}")
        kind = getattr(module, "KIND", None)
        if isinstance(kind, TokenizerKind):
            found[kind.name] = kind
    return found


def get_kind(name: str) -> TokenizerKind:
    """The declaration of tokenizer kind `name`; ConfigError naming the valid kinds otherwise."""
    known = kinds()
    if name not in known:
        raise ConfigError(f"tokenizer.kind={name!r} is not known; valid: {', '.join(known)}")
    return known[name]


def kind_of_hf_model(model_type: str) -> Optional[TokenizerKind]:
    """The kind whose saved tokenizer.json holds a Hugging Face model of `model_type`, if any."""
    return next((k for k in kinds().values() if k.hf_model == model_type), None)
