"""Word-level tokenizer (seed 004's SimpleTokenizer), trained with HF `tokenizers` WordLevel.

Words, punctuation marks and whitespace characters are tokens, so text made of known
tokens decodes back exactly; a word outside the vocabulary becomes `<unk>`.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer as HFBackend
from tokenizers import models, trainers

from ..config import TokenizerConfig
from .hf import EOT, UNK, HFTokenizer, concat_decoder, train_backend, word_pre_tokenizer

DEFAULT_VOCAB_SIZE = 10_000  # seed 004's --vocab_size


def fit_word(cfg: TokenizerConfig, texts: Iterable[str]) -> HFTokenizer:
    """Train a word-level tokenizer: the `vocab_size` most frequent pieces, `<|endoftext|>` and `<unk>`."""
    backend = HFBackend(models.WordLevel(unk_token=UNK))
    backend.pre_tokenizer = word_pre_tokenizer()
    backend.decoder = concat_decoder()
    trainer = trainers.WordLevelTrainer(
        vocab_size=cfg.vocab_size or DEFAULT_VOCAB_SIZE,
        min_frequency=cfg.min_frequency,
        special_tokens=[EOT, UNK],
    )
    return train_backend(backend, trainer, texts)
