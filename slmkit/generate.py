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

from typing import Any, Generator, Iterable, Iterator, Optional, Union

import torch
from torch.nn import functional as F

from .model import GPT
from .sampling import SamplingParams
from .chat import SPECIAL_TOKENS
from .tokenizer import Tokenizer
from .tokenizer.chat import chat_prompt

REPLACEMENT = "\ufffd"  # what decoders put for the bytes of an incomplete UTF-8 character
MAX_CHAR_TOKENS = 4  # a UTF-8 character has at most 4 bytes, so at most 4 byte-level tokens


def process_logits(logits: torch.Tensor, params: SamplingParams, seen: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Next-token logits (vocab,) after the repetition penalty, temperature, top-k and top-p (-inf = excluded).

    `seen` is a (vocab,) bool mask of the tokens in the context; the penalty divides their positive
    logits and multiplies their negative ones (CTRL). At temperature 0 only the penalty applies
    (the others never change the argmax the caller takes).
    """
    if params.repetition_penalty != 1.0 and seen is not None:
        penalty = params.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
    if params.temperature == 0:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if 0 < params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already hold top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= params.top_p
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


class TokenSampler:
    """One sequence's sampling state: its params, its seeded generator and the ids it has seen.

    A batch of sequences holds one each (with a PieceDecoder and a StopMatcher), so every
    sequence draws from its own generator exactly as it would alone.
    """

    def __init__(self, params: SamplingParams, vocab_size: int, context: list[int], device: torch.device):
        self.params = params
        self.generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self.seen: Optional[torch.Tensor] = None  # (vocab,) bool: ids in the context, for the penalty
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(context, device=device)] = True

    def choose(self, logits: torch.Tensor) -> int:
        """The next token given its logits (vocab,); it then counts as seen."""
        logits = process_logits(logits.float(), self.params, self.seen)
        if self.params.temperature == 0:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(F.softmax(logits, dim=-1).cpu(), 1, generator=self.generator))
        if self.seen is not None:
            self.seen[token] = True
        return token


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


def chosen(params: Optional[SamplingParams], options: dict[str, Any]) -> SamplingParams:
    """`params` (default SamplingParams()) with the keyword `options` changed, validated."""
    if params is not None and not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a SamplingParams, not {type(params).__name__}; give max_new_tokens=N by keyword")
    return (params or SamplingParams()).replace(**options).validate()


@torch.no_grad()
def sample_ids(
    model: GPT, ids: list[int], params: Optional[SamplingParams] = None, use_cache: bool = True, **options: Any
) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids after `ids` (non-empty); the window slides past block_size.

    `options` change fields of `params` (default SamplingParams()); stop strings are for the text (see stream).
    """
    params = chosen(params, options)
    steps = next_logits(model, ids, params.max_new_tokens, use_cache)
    sampler = TokenSampler(params, model.config.vocab_size, ids, model.device)
    token = None
    try:
        for _ in range(params.max_new_tokens):
            token = sampler.choose(next(steps) if token is None else steps.send(token))
            yield token
    finally:
        steps.close()  # puts the model back in its mode, even when the caller stops early


class PieceDecoder:
    """One sequence's text decoding: each token's text as it arrives, holding back the tokens of
    an incomplete multi-byte character.

    Each piece is decoded after the token before it (the last `context` id at first), so decoders
    that join tokens (spaces between words, WordPiece's ##) place the boundary right.
    """

    def __init__(self, tokenizer: Tokenizer, context: Optional[list[int]] = None):
        self.tokenizer = tokenizer
        self.prev = list(context[-1:]) if context else []
        self.prev_text = tokenizer.decode(self.prev)
        self.pending: list[int] = []

    def push(self, token: int) -> str:
        """The text `token` completes ("" while a character's other bytes are still to come)."""
        self.pending.append(token)
        text = self.tokenizer.decode(self.prev + self.pending)
        if text.endswith(REPLACEMENT) and len(self.pending) < MAX_CHAR_TOKENS:
            return ""
        return self._emit(text)

    def flush(self) -> str:
        """The text of the tokens still held when the sequence ends."""
        return self._emit(self.tokenizer.decode(self.prev + self.pending)) if self.pending else ""

    def _emit(self, text: str) -> str:
        piece = text[len(self.prev_text) :] if text.startswith(self.prev_text) else self.tokenizer.decode(self.pending)
        self.prev, self.pending = self.pending[-1:], []
        self.prev_text = self.tokenizer.decode(self.prev)
        return piece


def decode_pieces(tokenizer: Tokenizer, ids: Iterable[int], context: Optional[list[int]] = None) -> Iterator[str]:
    """The text of the ids as they arrive (see PieceDecoder)."""
    decoder = PieceDecoder(tokenizer, context)
    for token in ids:
        if piece := decoder.push(token):
            yield piece
    if rest := decoder.flush():
        yield rest


class StopMatcher:
    """One sequence's stop-string state: text that could begin a stop string is held back
    until it is known not to; `stopped` once a stop string appears (it is never emitted)."""

    def __init__(self, stop: Optional[Iterable[str]]):
        self.stops = [s for s in stop or () if s]
        self.held = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        """The text of `piece` (and of what was held) that can be emitted now."""
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        held = self.held + piece
        found = [i for i in (held.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped, self.held = True, ""
            return held[: min(found)]
        # the longest end of `held` that is the start of a stop string stays held
        starts = (k for s in self.stops for k in range(1, min(len(s), len(held) + 1)) if held.endswith(s[:k]))
        keep = max(starts, default=0)
        self.held = held[len(held) - keep :]
        return held[: len(held) - keep]

    def flush(self) -> str:
        """What is still held when the text ends without a stop string."""
        held, self.held = self.held, ""
        return held


def until_stop(pieces: Iterable[str], stop: Optional[Iterable[str]]) -> Iterator[str]:
    """Pass text pieces through up to (not including) the first stop string."""
    matcher = StopMatcher(stop)
    for piece in pieces:
        text = matcher.push(piece)
        if text:
            yield text
        if matcher.stopped:
            return
    if rest := matcher.flush():
        yield rest


def stream(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str = "",
    params: Optional[SamplingParams] = None,
    use_cache: bool = True,
    messages: Optional[list[dict[str, str]]] = None,
    **options: Any,
) -> Iterator[str]:
    """Yield decoded text pieces as tokens are sampled after `prompt` (empty: start a new document).

    `params` says how (default SamplingParams(): see it for each option); keyword `options`
    change its fields, e.g. stream(model, tok, "And", temperature=0, max_new_tokens=50).
    `messages` (a chat run's): the assistant's reply to this conversation instead, up to its END (or any) marker.
    """
    params = chosen(params, options)  # bad options fail here, not at the first next()
    if messages is not None:  # a chat run's reply: after the assistant's marker, up to its END (or any marker)
        ids, params = chat_prompt(tokenizer, messages), params.replace(stop=params.stop + SPECIAL_TOKENS)
    else:
        ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    return until_stop(decode_pieces(tokenizer, sample_ids(model, ids, params, use_cache), ids), params.stop)


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str = "",
    params: Optional[SamplingParams] = None,
    use_cache: bool = True,
    num_samples: int = 1,
    messages: Optional[list[dict[str, str]]] = None,
    **options: Any,
) -> Union[str, list[str]]:
    """The text sampled after `prompt` (without the prompt); a list of num_samples texts when > 1.

    `params`, `options` and `messages` as for stream. Sample i uses seed + i, so the first of several samples
    is the text num_samples=1 gives.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    params = chosen(params, options)
    texts = ["".join(stream(model, tokenizer, prompt, params.nth(i), use_cache, messages)) for i in range(num_samples)]
    return texts[0] if num_samples == 1 else texts
