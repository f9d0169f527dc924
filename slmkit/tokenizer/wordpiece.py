"""WordPiece trained with HF `tokenizers`: the word tokenizer's pieces split into `##`-continued subwords."""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer as HFBackend
from tokenizers import models, trainers

from .hf import EOT, UNK, HFTokenizer, concat_decoder, train_backend, word_pre_tokenizer
from .registry import TokenizerKind

DEFAULT_VOCAB_SIZE = 30_000
CONTINUING_PREFIX = "##"


def fit_wordpiece(texts: Iterable[str], vocab_size: int, min_frequency: int) -> HFTokenizer:
    """Train a WordPiece tokenizer with `<|endoftext|>` and `<unk>`."""
    backend = HFBackend(models.WordPiece(unk_token=UNK, continuing_subword_prefix=CONTINUING_PREFIX))
    backend.pre_tokenizer = word_pre_tokenizer()
    backend.decoder = concat_decoder(CONTINUING_PREFIX)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size or DEFAULT_VOCAB_SIZE,
        min_frequency=min_frequency,
        special_tokens=[EOT, UNK],
        continuing_subword_prefix=CONTINUING_PREFIX,
    )
    return train_backend(backend, trainer, texts, "wordpiece")


KIND = TokenizerKind(
    name="wordpiece",
    fit=fit_wordpiece,
    load=HFTokenizer.loader("wordpiece"),
    default_vocab_size=DEFAULT_VOCAB_SIZE,
    min_vocab_size=3,  # <|endoftext|>, <unk> and one piece
    lossy=True,
    hf_model="WordPiece",
    summary="WordPiece subwords (`##` continuations) fitted on the train split; characters it never saw become <unk>",
)
