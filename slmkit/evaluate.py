"""Loss, perplexity and bits per token/byte of a model over a whole token array."""

from __future__ import annotations

import math

import numpy as np
import torch

from .model import GPT


@torch.no_grad()
def mean_loss(model: GPT, tokens: np.ndarray, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over every token of `tokens` after the first.

    The array is cut into consecutive, non-overlapping windows of block_size
    (the last one shorter), so every token is predicted exactly once.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    T = model.config.block_size
    n = len(tokens) - 1  # tokens that have a target
    total, count = 0.0, 0
    starts = list(range(0, n, T))
    full = [s for s in starts if s + T <= n]
    for i in range(0, len(full), batch_size):
        idx = np.asarray(full[i : i + batch_size])[:, None] + np.arange(T + 1)
        window = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64)).to(device)
        _, loss = model(window[:, :-1], window[:, 1:])
        total += loss.item() * window[:, 1:].numel()
        count += window[:, 1:].numel()
    if n % T:  # the remainder, one short window
        s = starts[-1]
        window = torch.from_numpy(np.asarray(tokens[s : n + 1], dtype=np.int64))[None].to(device)
        _, loss = model(window[:, :-1], window[:, 1:])
        total += loss.item() * window[:, 1:].numel()
        count += window[:, 1:].numel()
    model.train(was_training)
    return total / max(count, 1)


def report(loss: float, tokens: int, text_bytes: int) -> dict[str, float]:
    """loss, perplexity, bits per token and bits per byte (comparable across tokenizers)."""
    bits_per_token = loss / math.log(2)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700)),
        "bits_per_token": bits_per_token,
        "bits_per_byte": bits_per_token * tokens / max(text_bytes, 1),
    }
