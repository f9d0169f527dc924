"""Sampling text from a trained model with a KV cache, streamed piece by piece.

The context window: a prompt longer than block_size keeps its last block_size tokens. When the
window is full and one more token is needed, it slides: only its last block_size // 2 tokens are
kept (re-read in one batched forward pass), then it grows one token per step again. Sliding one
token at a time would be wrong with a cache for learned or sinusoidal positions (every kept token
changes position, so every cached key and value changes) and, with any positions, the kept tokens'
hidden states depend on the dropped ones; re-reading half a window every block_size // 2 tokens
costs about one batched token per new token and keeps each step exact. The price: past the block
size a token sees between block_size // 2 and block_size tokens, where cropping at every step
(nanoGPT, seed 002) sees block_size but needs a whole-window forward per token. The uncached path
(use_cache=False) uses the same window and recomputes it at every step, so both give the same
tokens; it exists for tests and the benchmark.
"""

from __future__ import annotations

from typing import Generator, Iterable, Iterator, Optional, Union

import torch
from torch.nn import functional as F

from .config import SampleConfig
from .model import GPT
from .tokenizer import Tokenizer

REPLACEMENT = "\ufffd"  # what decoders put for the bytes of an incomplete UTF-8 character
MAX_CHAR_TOKENS = 4  # a UTF-8 character has at most 4 bytes, so at most 4 byte-level tokens


def process_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seen: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Next-token logits (vocab,) after the repetition penalty, temperature, top-k and top-p (-inf = excluded).

    `seen` is a (vocab,) bool mask of the tokens in the context; the penalty divides their positive
    logits and multiplies their negative ones (CTRL). temperature=0 is left to the caller (argmax).
    """
    if repetition_penalty != 1.0 and seen is not None:
        penalized = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already hold top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def next_logits(model: GPT, ids: list[int], max_new_tokens: int, use_cache: bool = True) -> Generator[torch.Tensor, int, None]:
    """Yield the next token's logits (vocab,) given the window over `ids`; send() the chosen token for the next.

    Room for max_new_tokens sent tokens; the window slides past block_size (see the module docstring).
    """
    if not ids:
        raise ValueError("generation needs at least one context id (e.g. the tokenizer's eot_id)")
    was_training = model.training
    model.eval()  # no dropout; the caller's mode comes back when the generator is closed
    device = model.device
    block_size = model.config.block_size
    keep = max(1, block_size // 2)  # tokens kept when the window slides (see the module docstring)
    seq = torch.empty(len(ids) + max_new_tokens, dtype=torch.long, device=device)  # every id so far
    seq[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    n = len(ids)
    start = max(0, n - block_size)  # the window is seq[start:n]
    cache = model.new_cache() if use_cache else None
    fed = start  # with the cache, seq[start:fed] is cached
    try:
        while True:
            if cache is None:
                logits, _ = model(seq[None, start:n])
            else:
                logits, _ = model(seq[None, fed:n], cache=cache)
                fed = n
            seq[n] = yield logits[0, -1]
            n += 1
            if n - start > block_size:  # the window is full: slide
                start = fed = n - keep
                if cache is not None:
                    cache.reset()
    finally:
        model.train(was_training)


@torch.no_grad()
def sample_ids(
    model: GPT,
    ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int = 0,
    generator: Optional[torch.Generator] = None,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one at a time after `ids` (non-empty); the window slides past block_size."""
    steps = next_logits(model, ids, max_new_tokens, use_cache)
    seen = None
    if repetition_penalty != 1.0:
        device = model.device
        seen = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)  # ids in the context
        seen[torch.tensor(ids, device=device)] = True
    token = None
    try:
        for _ in range(max_new_tokens):
            logits = (next(steps) if token is None else steps.send(token)).float()  # (vocab,)
            if temperature == 0:
                if seen is not None:
                    logits = process_logits(logits, repetition_penalty=repetition_penalty, seen=seen)
                token = int(logits.argmax())
            else:
                probs = F.softmax(process_logits(logits, temperature, top_k, top_p, repetition_penalty, seen), dim=-1)
                token = int(torch.multinomial(probs.cpu(), 1, generator=generator))
            if seen is not None:
                seen[token] = True
            yield token
    finally:
        steps.close()  # puts the model back in its mode, even when the caller stops early


def decode_pieces(tokenizer: Tokenizer, ids: Iterable[int], context: Optional[list[int]] = None) -> Iterator[str]:
    """Text of the ids as they arrive, holding back the tokens of an incomplete multi-byte character.

    Each piece is decoded after the token before it (the last `context` id at first), so decoders
    that join tokens (spaces between words, WordPiece's ##) place the boundary right.
    """
    prev = list(context[-1:]) if context else []
    prev_text = tokenizer.decode(prev)
    pending: list[int] = []
    for token in ids:
        pending.append(token)
        text = tokenizer.decode(prev + pending)
        if text.endswith(REPLACEMENT) and len(pending) < MAX_CHAR_TOKENS:
            continue  # the character's other bytes are still to come
        yield text[len(prev_text) :] if text.startswith(prev_text) else tokenizer.decode(pending)
        prev, pending = pending[-1:], []
        prev_text = tokenizer.decode(prev)
    if pending:
        text = tokenizer.decode(prev + pending)
        yield text[len(prev_text) :] if text.startswith(prev_text) else tokenizer.decode(pending)


def until_stop(pieces: Iterable[str], stop: Optional[list[str]]) -> Iterator[str]:
    """Pass text pieces through up to (not including) the first stop string; text that could
    begin a stop string is held back until it is known not to."""
    stops = [s for s in (stop or []) if s]
    if not stops:
        yield from pieces
        return
    held = ""
    for piece in pieces:
        held += piece
        found = [i for i in (held.find(s) for s in stops) if i >= 0]
        if found:
            if min(found) > 0:
                yield held[: min(found)]
            return
        # the longest end of `held` that is the start of a stop string stays held
        keep = max((k for s in stops for k in range(1, min(len(s), len(held) + 1)) if held.endswith(s[:k])), default=0)
        if len(held) > keep:
            yield held[: len(held) - keep]
            held = held[len(held) - keep :]
    if held:
        yield held


def stream(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str = "",
    max_new_tokens: int = 300,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop: Optional[list[str]] = None,
    seed: Optional[int] = None,
    use_cache: bool = True,
) -> Iterator[str]:
    """Yield decoded text pieces as tokens are sampled after `prompt` (empty: start a new document).

    temperature 0 = greedy; top_k 0 and top_p 1 = off; generation ends after max_new_tokens or
    before the first `stop` string (which is not yielded); the same seed gives the same text.
    """
    SampleConfig(
        prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty,
    ).validate()  # here, not at the first next(): bad arguments fail at the call
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    tokens = sample_ids(model, ids, max_new_tokens, temperature, top_k, generator, top_p, repetition_penalty, use_cache)
    return until_stop(decode_pieces(tokenizer, tokens, ids), stop)


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str = "",
    max_new_tokens: int = 300,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop: Optional[list[str]] = None,
    seed: Optional[int] = None,
    use_cache: bool = True,
    num_samples: int = 1,
) -> Union[str, list[str]]:
    """The text sampled after `prompt` (without the prompt); a list of num_samples texts when > 1.

    Sample i uses seed + i, so the first of several samples is the text num_samples=1 gives.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    texts = [
        "".join(
            stream(
                model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop,
                None if seed is None else seed + i, use_cache,
            )
        )
        for i in range(num_samples)
    ]
    return texts[0] if num_samples == 1 else texts
