"""Word-level tokenizer, trained with HF `tokenizers` WordLevel.

Words, punctuation marks and whitespace characters are tokens, so text made of known
tokens decodes back exactly; a word outside the vocabulary becomes `<unk>`.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer as HFBackend
from tokenizers import models, trainers

from .hf import EOT, UNK, HFTokenizer, concat_decoder, train_backend, word_pre_tokenizer
from .registry import TokenizerKind

DEFAULT_VOCAB_SIZE = 10_000


def fit_word(texts: Iterable[str], vocab_size: int, min_frequency: int) -> HFTokenizer:
    """Train a word-level tokenizer: the `vocab_size` most frequent pieces, `<|endoftext|>` and `<unk>`."""
    backend = HFBackend(models.WordLevel(unk_token=UNK))
    backend.pre_tokenizer = word_pre_tokenizer()
    backend.decoder = concat_decoder()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size or DEFAULT_VOCAB_SIZE,
        min_frequency=min_frequency,
        special_tokens=[EOT, UNK],
    )
    return train_backend(backend, trainer, texts, "word")


KIND = TokenizerKind(
    name="word",
    fit=fit_word,
    load=HFTokenizer.loader("word"),
    default_vocab_size=DEFAULT_VOCAB_SIZE,
    min_vocab_size=3,  # <|endoftext|>, <unk> and one word
    lossy=True,
    hf_model="WordLevel",
    summary="the most frequent words, punctuation marks and whitespace of the train split; other words become <unk>",
)
