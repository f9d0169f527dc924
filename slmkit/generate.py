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

Every generation goes through a `Batch` (continuous batching): each sequence has its own KV-cache
slot, window, seeded sampler, text decoder and stop strings, so one sequence or many decoded
together give each the same tokens; `slm serve` and `generate(num_samples=N)` batch, `stream` is a
batch of one.
"""

from __future__ import annotations

import contextlib
import heapq
from typing import Any, Generator, Iterable, Iterator, Optional, Union

import torch
from torch.nn import functional as F

from .model import GPT
from .sampling import SamplingParams
from .chat import SPECIAL_TOKENS
from .data.sampler import windows
from .tokenizer import Tokenizer
from .tokenizer.chat import chat_prompt

REPLACEMENT = "\ufffd"  # what decoders put for the bytes of an incomplete UTF-8 character
MAX_CHAR_TOKENS = 4  # a UTF-8 character has at most 4 bytes, so at most 4 byte-level tokens


def process_logits(logits: torch.Tensor, params: SamplingParams, seen: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Next-token logits (..., vocab) after the repetition penalty, temperature, top-k and top-p (-inf = excluded).

    `seen` is a bool mask like logits of the tokens in the context; the penalty divides their positive
    logits and multiplies their negative ones (CTRL). At temperature 0 only the penalty applies
    (the others never change the argmax the caller takes). Every step works along the last dim alone,
    so the rows of a (B, vocab) batch get the values each row gets by itself.
    """
    if params.repetition_penalty != 1.0 and seen is not None:
        penalty = params.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
    if params.temperature == 0:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if 0 < params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already hold top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= params.top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
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
        p = params  # sequences with the same options are processed as one (B, vocab) tensor
        self.options = (p.temperature, p.top_k, p.top_p, p.repetition_penalty)

    def choose(self, logits: torch.Tensor) -> int:
        """The next token given its logits (vocab,); it then counts as seen."""
        return choose_tokens([self], logits[None])[0]


def choose_tokens(samplers: list[TokenSampler], logits: torch.Tensor) -> list[int]:
    """The next token of each row of logits (B, vocab), row i chosen by samplers[i] (each token then counts as seen).

    Rows whose samplers share options are processed and sampled as one tensor. A sampled row draws
    as torch.multinomial(probs, 1, generator) does: for one sample torch takes argmax(probs / q) with
    q = torch.empty_like(probs).exponential_(1, generator) (the exponential race; ATen's multinomial
    fast path), so each sequence fills its own q row from its own generator, then one division and
    one argmax serve the batch. tests/test_generate.py checks it gives multinomial's tokens and leaves
    each generator where multinomial does.
    """
    tokens = [0] * len(samplers)
    groups: dict[tuple, list[int]] = {}
    for i, sampler in enumerate(samplers):
        groups.setdefault(sampler.options, []).append(i)
    for rows in groups.values():
        params = samplers[rows[0]].params
        index = torch.tensor(rows, device=logits.device) if len(rows) < len(samplers) else None
        group = logits.float() if index is None else logits.index_select(0, index).float()  # (G, vocab)
        seen = torch.stack([samplers[i].seen for i in rows]) if samplers[rows[0]].seen is not None else None
        group = process_logits(group, params, seen)
        if params.temperature == 0:
            chosen = group.argmax(dim=-1)
        else:
            probs = F.softmax(group, dim=-1).cpu()
            race = torch.empty_like(probs)
            for row, i in enumerate(rows):
                race[row].exponential_(1, generator=samplers[i].generator)
            chosen = (probs / race).argmax(dim=-1)
        for i, token in zip(rows, chosen.tolist()):
            tokens[i] = token
            if samplers[i].seen is not None:
                samplers[i].seen[token] = True
    return tokens


class Window:
    """One sequence's context window over its ids (see the module docstring) and what its cache slot holds.

    The window is ids[start:]; with a cache, ids[start:fed] are cached, so ids[fed:] are fed next.
    """

    def __init__(self, ids: list[int], block_size: int):
        if not ids:
            raise ValueError("generation needs at least one context id (e.g. the tokenizer's eot_id)")
        self.ids = list(ids)
        self.block_size = block_size
        self.keep = max(1, block_size // 2)  # tokens kept when the window slides
        self.start = self.fed = max(0, len(ids) - block_size)

    def pending(self) -> list[int]:
        """The ids the cache has not read yet."""
        return self.ids[self.fed :]

    def fresh(self) -> bool:
        """True when the cache slot must be emptied before pending() is fed (a new or slid window)."""
        return self.fed == self.start

    def push(self, token: int) -> None:
        """Append a chosen token; the window slides to its last `keep` ids when it would pass block_size."""
        self.ids.append(token)
        if len(self.ids) - self.start > self.block_size:
            self.start = self.fed = len(self.ids) - self.keep


class Sequence:
    """One sequence of a Batch: its window, sampler, text decoder, stop matcher, and what the last step gave.

    After each Batch.step(): `token` is the id it chose, `text` the text that can be shown now ("" while
    held back), `logprob` (token, its log-probability, the top `logprobs` (id, log-probability)) when
    asked for, and `finish_reason` "length" (max_new_tokens), "stop" (a stop string or an end id) or None.
    """

    def __init__(
        self,
        ids: list[int],
        params: SamplingParams,
        model: GPT,
        tokenizer: Optional[Tokenizer] = None,
        end_ids: Iterable[int] = (),
        logprobs: Optional[int] = None,
    ):
        self.params = params
        self.window = Window(ids, model.config.block_size)
        self.sampler = TokenSampler(params, model.config.vocab_size, ids, model.device)
        self.decoder = PieceDecoder(tokenizer, ids) if tokenizer is not None else None
        self.stopper = StopMatcher(params.stop)
        self.end_ids = frozenset(end_ids)
        self.logprobs = logprobs
        self.tokens: list[int] = []  # every id chosen so far
        self.slot: Optional[int] = None
        self.token: Optional[int] = None
        self.text = ""
        self.logprob: Optional[tuple[int, float, list[tuple[int, float]]]] = None
        self.finish_reason: Optional[str] = None if params.max_new_tokens > 0 else "length"

    def take(self, logits: torch.Tensor, token: Optional[int] = None) -> None:
        """Take the next token (its sampler's choice from its logits (vocab,), unless Batch.step gives the one it
        chose for the batch), then update the text and whether the sequence ended."""
        token = self.token = self.sampler.choose(logits) if token is None else token
        if self.logprobs is not None:
            log_probs = F.log_softmax(logits.float(), dim=-1)  # the model's own distribution, before sampling options
            top = torch.topk(log_probs, min(self.logprobs, log_probs.numel()))
            self.logprob = (token, float(log_probs[token]), list(zip(top.indices.tolist(), top.values.tolist())))
        self.tokens.append(token)
        self.window.push(token)
        ended = token in self.end_ids
        text = "" if ended or self.decoder is None else self.stopper.push(self.decoder.push(token))
        if self.stopper.stopped or ended:
            self.finish_reason = "stop"
        elif len(self.tokens) == self.params.max_new_tokens:
            self.finish_reason = "length"
        if self.finish_reason and not self.stopper.stopped and self.decoder is not None:
            text += self.stopper.push(self.decoder.flush())  # the end of the text: nothing more is held back
            text += "" if self.stopper.stopped else self.stopper.flush()
        self.text = text


class Batch:
    """Continuous batching: sequences decoded together, each in its own KV-cache slot.

    add() a sequence at any time: it joins at the next step(). Each step feeds every sequence its
    pending ids (sequences with as many pending ids share one forward: every one-token decoding
    step together, new prompts of one length together) and chooses every next token in one
    choose_tokens call (each sequence draws from its own generator); sequences that end
    leave the batch and free their slot. Each sequence's tokens are the ones it gets alone (the
    batched forward's logits agree with the one-row forward's to fp32 rounding: see README).
    """

    def __init__(self, model: GPT, tokenizer: Optional[Tokenizer] = None, max_batch: int = 8, use_cache: bool = True):
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.cache = model.new_cache(max_batch) if use_cache else None
        self.free = list(range(max_batch))
        self.active: list[Sequence] = []

    def add(self, ids: list[int], params: SamplingParams, **options: Any) -> Sequence:
        """A new sequence continuing `ids` (options: Sequence's end_ids, logprobs); ValueError when full."""
        seq = Sequence(ids, params, self.model, self.tokenizer, **options)
        if seq.finish_reason is None:
            if not self.free:
                raise ValueError(f"the batch is full ({self.max_batch} sequences)")
            seq.slot = heapq.heappop(self.free)  # the lowest free slot: the active ones stay consecutive
            self.active.append(seq)
        return seq

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the batch (finished or given up); its slot is free at the next step."""
        if seq in self.active:
            self.active.remove(seq)
            heapq.heappush(self.free, seq.slot)

    @torch.no_grad()
    def forward(self) -> torch.Tensor:
        """The next-token logits (len(active), vocab) of every active sequence, feeding each its pending ids.

        Sequences with as many pending ids (one each while decoding; new prompts of one length) share a forward,
        their rows in slot order (consecutive slots are read as views, not gathered).
        """
        device = self.model.device
        parts: list[tuple[list[int], torch.Tensor]] = []  # (indices into active, their logits (len, vocab))
        groups: dict[int, list[int]] = {}  # pending length -> indices into active
        for i, seq in enumerate(self.active):
            window = seq.window
            if self.cache is None:  # recompute the whole window
                parts.append(([i], self.model(torch.tensor([window.ids[window.start :]], device=device))[0][:, -1]))
                continue
            if window.fresh():
                self.cache.reset(seq.slot)
            groups.setdefault(len(window.pending()), []).append(i)
        for rows in groups.values():
            rows.sort(key=lambda i: self.active[i].slot)
            idx = torch.tensor([self.active[i].window.pending() for i in rows], device=device)  # (B, T)
            out, _ = self.model(idx, cache=self.cache, slots=[self.active[i].slot for i in rows])
            for i in rows:
                self.active[i].window.fed = len(self.active[i].window.ids)
            parts.append((rows, out[:, -1]))
        if not parts:
            return torch.empty(0)
        if len(parts) == 1 and parts[0][0] == list(range(len(self.active))):
            return parts[0][1]  # one forward in active order (every decoding step once all have joined)
        logits = parts[0][1].new_empty(len(self.active), parts[0][1].size(-1))
        for rows, part in parts:
            logits[torch.tensor(rows, device=device)] = part
        return logits

    def step(self) -> list[Sequence]:
        """Advance every active sequence by one token; return them (those that ended have left the batch)."""
        stepped = list(self.active)
        logits = self.forward()
        tokens = choose_tokens([seq.sampler for seq in stepped], logits) if stepped else []
        for seq, row, token in zip(stepped, logits, tokens):
            seq.take(row, token)
            if seq.finish_reason:
                self.remove(seq)
        return stepped


@torch.no_grad()
def next_logits(model: GPT, ids: list[int], use_cache: bool = True) -> Generator[torch.Tensor, int, None]:
    """Yield the next token's logits (vocab,) given the window over `ids`; send() the chosen token for the next."""
    with eval_mode(model):
        batch = Batch(model, max_batch=1, use_cache=use_cache)
        seq = batch.add(ids, SamplingParams(max_new_tokens=1))
        while True:
            seq.window.push((yield batch.forward()[0]))


@torch.no_grad()
def prompt_logprobs(model: GPT, ids: list[int], top: int = 0) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """(token, log-probability, the `top` likeliest (id, log-probability)) of each of ids[1:] given the ids
    before it, read in the windows `slm eval` reads (data.sampler.windows: consecutive block_size windows, each
    from scratch)."""
    out = []
    with eval_mode(model):
        for window in windows(ids, model.config.block_size, batch_size=1):
            window = window[0].to(model.device)  # (t + 1,)
            logits, _ = model(window[None, :-1])
            log_probs = F.log_softmax(logits[0].float(), dim=-1)  # (t, vocab)
            targets = window[1:]
            chosen = log_probs.gather(1, targets[:, None])[:, 0].tolist()
            best = torch.topk(log_probs, min(top, log_probs.size(-1))) if top else None
            for k, token in enumerate(targets.tolist()):
                pairs = list(zip(best.indices[k].tolist(), best.values[k].tolist())) if best is not None else []
                out.append((token, chosen[k], pairs))
    return out


@contextlib.contextmanager
def eval_mode(model: GPT) -> Iterator[GPT]:
    """The model in eval mode (no dropout) inside, the caller's mode back after (even on an early close)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def chosen(params: Optional[SamplingParams], options: dict[str, Any]) -> SamplingParams:
    """`params` (default SamplingParams()) with the keyword `options` changed, validated."""
    if params is not None and not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a SamplingParams, not {type(params).__name__}; give max_new_tokens=N by keyword")
    return (params or SamplingParams()).replace(**options).validate()


def sample_ids(
    model: GPT, ids: list[int], params: Optional[SamplingParams] = None, use_cache: bool = True, **options: Any
) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids after `ids` (non-empty); the window slides past block_size.

    `options` change fields of `params` (default SamplingParams()); stop strings are for the text (see stream).
    """
    params = chosen(params, options)
    with eval_mode(model):  # the caller's mode comes back when the generator is closed
        batch = Batch(model, max_batch=1, use_cache=use_cache)
        seq = batch.add(ids, params)
        while seq.finish_reason is None:
            batch.step()
            yield seq.token


class PieceDecoder:
    """One sequence's text decoding: each token's text as it arrives, holding back the tokens of
    an incomplete multi-byte character.

    Each piece is decoded after the token before it (the last `context` id at first), so decoders
    that join tokens (spaces between words, WordPiece's ##) place the boundary right. The
    end-of-text token reads as a newline, as the char kind's end of text is: a sample of several
    documents shows one per line, not `<|endoftext|>` between them.
    """

    def __init__(self, tokenizer: Tokenizer, context: Optional[list[int]] = None):
        self.tokenizer = tokenizer
        self.eot_id = tokenizer.eot_id
        self.prev = [] if not context or context[-1] == self.eot_id else list(context[-1:])
        self.prev_text = tokenizer.decode(self.prev)
        self.pending: list[int] = []

    def push(self, token: int) -> str:
        """The text `token` completes ("" while a character's other bytes are still to come)."""
        if token == self.eot_id:  # a document ends: what is held, a newline, and a fresh start
            text = self.flush() + "\n"
            self.prev, self.prev_text = [], ""
            return text
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


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The ids generation continues: the prompt's, or the end-of-text id (a new document) for an empty prompt."""
    return tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]


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
    return next(iter(stream_batch(model, tokenizer, prompt, [params], use_cache, messages)))


def stream_batch(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    params: list[SamplingParams],
    use_cache: bool = True,
    messages: Optional[list[dict[str, str]]] = None,
) -> Iterator[Iterator[str]]:
    """One iterator of text pieces per params, all decoded in one Batch; pieces of sample i arrive as
    sample i's iterator is read (the others' are kept until theirs is)."""
    if messages is not None:  # a chat run's reply: after the assistant's marker, up to its END (or any marker)
        ids = chat_prompt(tokenizer, messages)
        params = [p.replace(stop=p.stop + SPECIAL_TOKENS) for p in params]
    else:
        ids = prompt_ids(tokenizer, prompt)
    batch = Batch(model, tokenizer, max_batch=len(params), use_cache=use_cache)
    seqs = [batch.add(ids, p) for p in params]
    held: list[list[str]] = [[] for _ in seqs]

    def pieces(i: int) -> Iterator[str]:
        with eval_mode(model):
            while held[i] or seqs[i].finish_reason is None:
                if not held[i]:
                    for seq in batch.step():
                        if seq.text:
                            held[seqs.index(seq)].append(seq.text)
                    continue
                yield held[i].pop(0)

    return (pieces(i) for i in range(len(seqs)))


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
    texts = ["".join(p) for p in stream_batch(model, tokenizer, prompt, [params.nth(i) for i in range(num_samples)], use_cache, messages)]
    return texts[0] if num_samples == 1 else texts
