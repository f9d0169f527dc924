"""Sampling text from a trained model, streamed piece by piece."""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.nn import functional as F

from .model import GPT
from .tokenizer import Tokenizer


@torch.no_grad()
def sample_ids(
    model: GPT,
    ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int = 0,
    generator: Optional[torch.Generator] = None,
) -> Iterator[int]:
    """Yield new token ids one at a time; the context is cropped to the model's block size."""
    model.eval()
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block_size:])
        logits = logits[:, -1, :]  # (1, vocab)
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            next_id = torch.multinomial(probs.cpu(), 1, generator=generator).to(device)
        idx = torch.cat([idx, next_id], dim=1)
        yield int(next_id)


def stream(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str = "",
    max_new_tokens: int = 300,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: Optional[int] = None,
) -> Iterator[str]:
    """Yield decoded text pieces as tokens are sampled after `prompt` (empty: start a new document)."""
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for token in sample_ids(model, ids, max_new_tokens, temperature, top_k, generator):
        yield tokenizer.decode([token])


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str = "",
    max_new_tokens: int = 300,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: Optional[int] = None,
) -> str:
    """The text sampled after `prompt` (without the prompt)."""
    return "".join(stream(model, tokenizer, prompt, max_new_tokens, temperature, top_k, seed))
