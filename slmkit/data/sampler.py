"""The windows a model reads: random ones from a shard (the batches `slm train` draws), and the consecutive
ones that predict every token of a text once (`slm eval`, serve's prompt log-probabilities)."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import DataError
from .shards import Shard


class WindowSampler:
    """Random (x, y) windows of `seq_len` tokens from a shard; its position is its RNG state."""

    def __init__(self, shard: Shard, seq_len: int, batch_size: int, seed: int):
        if len(shard) < seq_len + 1:
            raise DataError(
                f"{shard.path} has {len(shard)} tokens, fewer than one window of {seq_len} + 1; "
                "use more text or a smaller --train.seq_len / --model.block_size"
            )
        self.tokens = shard.tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.offsets = np.arange(seq_len + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: (batch, seq_len) int64, y shifted by one."""
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)
        window = torch.from_numpy(self.tokens[starts[:, None] + self.offsets].astype(np.int64))
        return window[:, :-1], window[:, 1:]

    def resize(self, seq_len: int, batch_size: int) -> None:
        """Draw windows of `seq_len` tokens, `batch_size` of them, from now on (the same random stream)."""
        self.seq_len, self.batch_size = seq_len, batch_size
        self.offsets = np.arange(seq_len + 1)

    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def windows(tokens: Sequence[int] | np.ndarray, block_size: int, batch_size: int) -> Iterator[torch.Tensor]:
    """The consecutive, non-overlapping windows of `tokens` that predict every token after the first exactly
    once: (B, block_size + 1) int64 tensors of up to `batch_size` windows (input window[:, :-1], targets
    window[:, 1:]), then the remainder as one shorter (1, r + 1) window."""
    tokens = np.asarray(tokens)
    n = max(len(tokens) - 1, 0)  # tokens that have a target
    full = n // block_size
    for first in range(0, full, batch_size):
        starts = np.arange(first, min(first + batch_size, full)) * block_size
        yield torch.from_numpy(np.asarray(tokens[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64))
    if n % block_size:
        yield torch.from_numpy(np.asarray(tokens[full * block_size :], dtype=np.int64))[None]
