"""Byte-level BPE trained with HF `tokenizers` (GPT-2's pre-tokenization).

It starts from the 256 byte tokens, so it encodes any Unicode text and decodes it back
exactly; it saves vocab.json + merges.txt beside tokenizer.json.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers, trainers

from .hf import EOT, HFTokenizer, train_backend
from .registry import TokenizerKind

DEFAULT_VOCAB_SIZE = 30_000
MIN_VOCAB_SIZE = 257  # <|endoftext|> and the 256 byte tokens


class BPETokenizer(HFTokenizer):
    """A byte-level BPE tokenizer; its saved form adds vocab.json and merges.txt (GPT-2's files)."""

    def save(self, path: Path | str) -> None:
        """Write tokenizer.json, then vocab.json and merges.txt beside it."""
        super().save(path)
        folder = Path(path).parent
        # The library writes both files; write them into a temp folder, then rename each into place.
        staging = Path(tempfile.mkdtemp(prefix=".vocab-merges.", dir=folder))
        try:
            for written in self.backend.model.save(str(staging)):
                os.replace(written, folder / Path(written).name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def fit_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> BPETokenizer:
    """Train a byte-level BPE tokenizer with `<|endoftext|>`."""
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size or DEFAULT_VOCAB_SIZE,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
    )
    return train_backend(backend, trainer, texts, "bpe", BPETokenizer)


KIND = TokenizerKind(
    name="bpe",
    fit=fit_bpe,
    load=BPETokenizer.loader("bpe"),
    default_vocab_size=DEFAULT_VOCAB_SIZE,
    min_vocab_size=MIN_VOCAB_SIZE,
    hf_model="BPE",
    summary="byte-level BPE (GPT-2's pre-tokenization) fitted on the train split; lossless",
)
