"""Subword tokenizers trained with HF `tokenizers`: byte-level BPE (seed 000) and WordPiece.

Byte-level BPE starts from the 256 byte tokens, so it encodes any Unicode text and
decodes it back exactly; it saves vocab.json + merges.txt beside tokenizer.json.
WordPiece splits the word tokenizer's pieces into `##`-continued subwords.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers, trainers

from ..config import TokenizerConfig
from .hf import EOT, UNK, HFTokenizer, concat_decoder, train_backend, word_pre_tokenizer

DEFAULT_VOCAB_SIZE = 30_000  # seed 000's vocabulary
CONTINUING_PREFIX = "##"


def fit_bpe(cfg: TokenizerConfig, texts: Iterable[str]) -> HFTokenizer:
    """Train a byte-level BPE tokenizer (GPT-2's pre-tokenization) with `<|endoftext|>`."""
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size or DEFAULT_VOCAB_SIZE,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
    )
    return train_backend(backend, trainer, texts)


def fit_wordpiece(cfg: TokenizerConfig, texts: Iterable[str]) -> HFTokenizer:
    """Train a WordPiece tokenizer with `<|endoftext|>` and `<unk>`."""
    backend = HFBackend(models.WordPiece(unk_token=UNK, continuing_subword_prefix=CONTINUING_PREFIX))
    backend.pre_tokenizer = word_pre_tokenizer()
    backend.decoder = concat_decoder(CONTINUING_PREFIX)
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size or DEFAULT_VOCAB_SIZE,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOT, UNK],
        continuing_subword_prefix=CONTINUING_PREFIX,
    )
    return train_backend(backend, trainer, texts)
