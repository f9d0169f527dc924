"""What the kinds trained with Hugging Face `tokenizers` share (word, bpe, wordpiece): one tokenizer.json.

The kind is not stored separately: it is the file's model type (each kind declares its
`hf_model`), so any HF tokenizer.json holding `<|endoftext|>` loads; one whose end-of-text token is
another (a pretrained checkpoint's `<|im_end|>`, `</s>`) names it in SPECIAL_TOKENS_FILE beside it,
Hugging Face's own file. Text is always
ordinary text: a literal "<|endoftext|>" in a document is split like any other
characters, never turned into the end-of-text id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from tokenizers import Regex
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, pre_tokenizers

from ..atomic import atomic_path, atomic_write_text
from ..errors import DataError
from .base import Tokenizer

EOT = "<|endoftext|>"
UNK = "<unk>"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"  # {"eos_token": ...} beside tokenizer.json when it is not EOT

# Words, single punctuation marks and single whitespace characters are separate pieces, so
# decoding is plain concatenation and text made of known pieces round-trips exactly.
WORD_PATTERN = r"\w+|[^\w\s]|\s"


def word_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer of the word and wordpiece kinds (whitespace kept as pieces)."""
    return pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")


def concat_decoder(continuing_prefix: str = "") -> decoders.Decoder:
    """Decode by concatenating tokens (after stripping a wordpiece continuation prefix)."""
    if not continuing_prefix:
        return decoders.Fuse()
    return decoders.Sequence([decoders.Replace(continuing_prefix, ""), decoders.Fuse()])


def train_backend(
    backend: HFBackend, trainer, texts: Iterable[str], kind: str, cls: Optional[type["HFTokenizer"]] = None
) -> "HFTokenizer":
    """Train `backend` with `trainer` on `texts` and wrap it as a tokenizer of `kind` (class `cls`)."""
    trainer.show_progress = False  # its four bars on a terminal; prepare draws one, over the tokenizing
    backend.train_from_iterator(texts, trainer)
    return (cls or HFTokenizer)(backend, "trained tokenizer", kind)


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer` behind the slmkit interface."""

    def __init__(self, backend: HFBackend, origin: str, kind: str, eot_token: str = EOT):
        eot = backend.token_to_id(eot_token)
        if eot is None:
            raise DataError(f"{origin}: tokenizer has no {eot_token} token; retrain it with `slm prepare --force`")
        backend.encode_special_tokens = True  # not saved in tokenizer.json, so set on every load
        self.backend = backend
        self.kind = kind
        self.eot_token = eot_token
        self._eot_id = eot
        self._unk_id = backend.token_to_id(UNK)

    @classmethod
    def from_file(cls, path: Path | str, kind: str, eot_token: Optional[str] = None) -> "HFTokenizer":
        """Load a Hugging Face tokenizer.json as a tokenizer of `kind` whose end-of-text is `eot_token`
        (default: the one SPECIAL_TOKENS_FILE beside it names, else EOT)."""
        try:
            backend = HFBackend.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception for every parse error
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{path} is not a valid Hugging Face tokenizer file ({first}); re-run `slm prepare`") from None
        return cls(backend, str(path), kind, eot_token or saved_eot_token(Path(path)))

    @classmethod
    def loader(cls, kind: str):
        """The `TokenizerKind.load` of a kind saved as a Hugging Face tokenizer.json."""
        return lambda data, path, eot_token=None: cls.from_file(path, kind, eot_token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        return self._eot_id

    @property
    def unk_id(self) -> Optional[int]:
        return self._unk_id

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def save(self, path: Path | str) -> None:
        """Write tokenizer.json (atomically), and SPECIAL_TOKENS_FILE beside it if the end-of-text is not EOT."""
        with atomic_path(Path(path)) as tmp:
            self.backend.save(str(tmp))
        special = Path(path).parent / SPECIAL_TOKENS_FILE
        if self.eot_token != EOT:
            atomic_write_text(special, json.dumps({"eos_token": self.eot_token}, indent=2))
        else:
            special.unlink(missing_ok=True)  # a stale one would name another end-of-text


def saved_eot_token(path: Path) -> str:
    """The end-of-text token SPECIAL_TOKENS_FILE beside tokenizer.json `path` names (a string or an
    AddedToken's {"content": ...}), else EOT."""
    special = path.parent / SPECIAL_TOKENS_FILE
    if not special.is_file():
        return EOT
    try:
        eos = json.loads(special.read_text(encoding="utf-8")).get("eos_token")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise DataError(f"{special} is not a JSON object; delete it or restore it") from None
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return eos if isinstance(eos, str) and eos else EOT
