"""`slm serve`: an OpenAI-compatible completions API (streamed as server-sent events) and a page to try a run.

    POST /v1/completions   prompt (text, token ids, or a list of them), max_tokens, temperature, top_k, top_p,
                           repetition_penalty, stop, seed, n, logprobs, echo, stream
    POST /v1/chat/completions   (a chat run's) messages, the same sampling fields, stream_options.include_usage:
                           the messages rendered through the run's chat template, the reply up to its END marker
    GET  /v1/models        the one model this process serves
    GET  /health           liveness (answers while generation goes on)
    GET  /tokenizer_info, POST /tokenize, /detokenize   the run's tokenizer (lm-evaluation-harness's remote tokenizer)
    GET  /                 a single self-contained HTML page (no external assets)

Every request's sequences go through one `Scheduler`: a single thread runs a generate.Batch
(continuous batching, up to serve.max_batch sequences decoded together) and hands each step's
text to the requests on the event loop. Sequences wait in a bounded queue (serve.max_queue; beyond
it: HTTP 503 with Retry-After) for a slot; a request whose client disconnects, or that passes
serve.request_timeout, leaves the batch at the next step. Each sequence's text is the one
generate.stream gives for it alone. serve.api_key (or SLM_API_KEY) requires `Authorization: Bearer KEY`
on every path but /health and the page; serve.cors_origins lets the listed origins' pages call the API.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import importlib.resources
import ipaddress
import json
import os
import reprlib
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional, Union

import torch

from .chat import SPECIAL_TOKENS, check_messages, render
from .config import ConfigError, ServeConfig, apply_override
from .errors import ServeError, SlmError
from .generate import Batch, Sequence, prompt_logprobs
from .runs import CONFIG, Run, load_run
from .sampling import SamplingError, SamplingParams
from .tokenizer.chat import ChatTokenizer

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field, ValidationError
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import ClientDisconnect
except ImportError:
    raise ServeError("`slm serve` needs FastAPI and uvicorn: pip install 'slmkit[serve]'") from None

MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_LOGPROBS = 5  # as OpenAI's completions API
MAX_CHOICES = 16  # n * prompts per request
RETRY_AFTER = 1  # seconds a refused (503) client is told to wait
POLL = 0.5  # seconds between checks that a waiting (not streamed) request's client is still there
OPEN_PATHS = ("/health", "/")  # answered without the API key: liveness, and the page (it holds no data; it asks for the key)
API_KEY_ENV = "SLM_API_KEY"


class ClientGone(Exception):
    """The client of a request that is not streamed has disconnected."""


class SamplingFields(BaseModel):
    """The fields both endpoints take: OpenAI's sampling fields, plus top_k and repetition_penalty."""

    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    # OpenAI's defaults; the ranges are SamplingParams.validate's (see params())
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # not OpenAI's: > 1 discourages repeats
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    n: int = Field(1, ge=1, le=MAX_CHOICES)

    def params(self, max_tokens: int) -> SamplingParams:
        """The request's sampling options, validated; RequestError 422 naming the field otherwise."""
        params = SamplingParams(
            max_new_tokens=max_tokens, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
            repetition_penalty=self.repetition_penalty, stop=() if self.stop is None else self.stop, seed=self.seed,
        )
        try:
            return params.validate()
        except SamplingError as e:
            field = "max_tokens" if e.field == "max_new_tokens" else e.field  # OpenAI's name for it
            raise RequestError(422, f"{field}={e.value!r} {e.rule}", field) from None


class CompletionRequest(SamplingFields):
    """The body of POST /v1/completions."""

    prompt: Union[str, list[int], list[str], list[list[int]]] = ""
    max_tokens: int = 16
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with the usage and no choices, as OpenAI sends it


class ChatRequest(SamplingFields):
    """The body of POST /v1/chat/completions (messages are checked by chat.check_messages)."""

    messages: list[Any]
    max_tokens: Optional[int] = None  # None: up to serve.max_tokens_limit (the reply ends at its END marker)
    max_completion_tokens: Optional[int] = None  # OpenAI's newer name for max_tokens; wins when both are given
    logprobs: Optional[bool] = None  # refused when true: not served for chat (use /v1/completions)
    stream_options: Optional[StreamOptions] = None


class RequestError(Exception):
    """A request the server refuses: HTTP status, one-line message, the offending field, OpenAI's error type."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, kind: str = "", headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers
        self.kind = kind or ("not_found_error" if status == 404 else "invalid_request_error")


def _error(status: int, message: str, param: Optional[str] = None, kind: str = "invalid_request_error", headers=None):
    """An error body shaped as OpenAI's, so its clients show the message."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class Job:
    """One validated request: its prompts (text and ids each) and how to continue them."""

    prompts: list[tuple[str, list[int]]]  # an empty prompt continues [eot_id] (it has 0 prompt tokens)
    params: SamplingParams
    n: int = 1
    logprobs: Optional[int] = None
    echo: bool = False

    def choices(self) -> list[tuple[int, list[int], SamplingParams]]:
        """(index, ids, params) of every sequence: prompt i's sample j is choice i * n + j with seed + j (OpenAI's order)."""
        return [(i * self.n + j, ids, self.params.nth(j)) for i, (_, ids) in enumerate(self.prompts) for j in range(self.n)]


@dataclass
class Update:
    """What one step gave one choice: its text, its token's log-probabilities (when asked), whether it ended."""

    index: int
    text: str
    logprob: Optional[tuple[int, float, list[tuple[int, float]]]]
    finish_reason: Optional[str]
    tokens: int  # completion tokens so far


@dataclass
class Ticket:
    """One sequence's place in the scheduler; its updates go to its request's asyncio queue."""

    index: int
    ids: list[int]
    params: SamplingParams
    logprobs: Optional[int]
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    deadline: float
    streamed: bool = True  # False: its updates are held until it ends (nobody reads them before)
    cancelled: bool = False
    seq: Optional[Sequence] = field(default=None, repr=False)
    held: list[Update] = field(default_factory=list, repr=False)

    def put(self, item: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            self.cancelled = True


class Scheduler:
    """The one batching loop: a thread that admits waiting sequences into a Batch and steps it."""

    def __init__(self, run: Run, cfg: ServeConfig):
        self.batch = Batch(run.model, run.tokenizer, cfg.max_batch)
        self.cfg = cfg
        self.waiting: collections.deque[Ticket] = collections.deque()
        self.tickets: dict[int, Ticket] = {}  # id(sequence) -> its ticket, for the sequences in the batch
        self.cond = threading.Condition()
        self.thread: Optional[threading.Thread] = None
        self.closed = False

    def submit(self, tickets: list[Ticket]) -> None:
        """Queue a request's sequences (all or none); RequestError 503 when the queue is full."""
        with self.cond:
            waiting = len(self.waiting) + len(tickets) - len(self.batch.free)
            if waiting > self.cfg.max_queue:
                raise RequestError(
                    503, f"server busy: {len(self.waiting)} sequences are waiting (serve.max_queue="
                    f"{self.cfg.max_queue}); retry after {RETRY_AFTER} s", kind="server_error",
                    headers={"Retry-After": str(RETRY_AFTER)},
                )
            self.waiting.extend(tickets)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="slm-batch", daemon=True)
                self.thread.start()
            self.cond.notify()

    def cancel(self, tickets: list[Ticket]) -> None:
        """The request is over (finished, disconnected): its sequences leave at the next step."""
        with self.cond:
            for ticket in tickets:
                ticket.cancelled = True
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    def _admit(self) -> None:
        """Under the lock: drop given-up sequences, fill free slots from the queue."""
        now = time.monotonic()
        for seq in list(self.batch.active):
            ticket = self.tickets[id(seq)]
            if ticket.cancelled or now > ticket.deadline:
                self._leave(ticket, None if ticket.cancelled else self._timeout())
        while self.waiting and self.batch.free:
            ticket = self.waiting.popleft()
            if ticket.cancelled or now > ticket.deadline:
                if not ticket.cancelled:
                    ticket.put(self._timeout())
                continue
            seq = ticket.seq = self.batch.add(ticket.ids, ticket.params, logprobs=ticket.logprobs)
            if seq.finish_reason:  # max_tokens=0: done before it starts
                ticket.put(Update(ticket.index, "", None, seq.finish_reason, 0))
            else:
                self.tickets[id(seq)] = ticket

    def _timeout(self) -> RequestError:
        limit = self.cfg.request_timeout
        return RequestError(504, f"the request took longer than serve.request_timeout={limit:g} s", kind="timeout")

    def _leave(self, ticket: Ticket, error: Optional[Exception]) -> None:
        self.batch.remove(ticket.seq)
        del self.tickets[id(ticket.seq)]
        if error is not None:
            ticket.put(error)

    def _loop(self) -> None:
        while True:
            with self.cond:
                self._admit()
                while not self.batch.active and not self.waiting and not self.closed:
                    self.cond.wait()
                    self._admit()
                if self.closed:
                    return
            try:
                stepped = self.batch.step()
            except Exception as e:  # handed to every request in the batch, which report it
                stepped = []
                with self.cond:
                    for seq in list(self.batch.active):
                        self._leave(self.tickets[id(seq)], e)
            self._deliver(stepped)

    def _deliver(self, stepped: list[Sequence]) -> None:
        """Hand each stepped sequence's Update to its request: one wake-up of the event loop per step, not per sequence,
        and none for a request that is not streamed until its sequence ends (its updates are held until then)."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for seq in stepped:
            ticket = self.tickets[id(seq)]
            ticket.held.append(Update(ticket.index, seq.text, seq.logprob, seq.finish_reason, len(seq.tokens)))
            if seq.finish_reason:
                del self.tickets[id(seq)]
            elif not ticket.streamed:
                continue
            by_loop.setdefault(ticket.loop, []).extend((ticket.queue, update) for update in ticket.held)
            ticket.held = []
        for loop, updates in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, updates)
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                pass


def _put_all(updates: list[tuple[asyncio.Queue, Update]]) -> None:
    for queue, update in updates:
        queue.put_nowait(update)


class Server:
    """The served run, its limits, and the scheduler every request's sequences go through."""

    def __init__(self, run: Run, cfg: ServeConfig):
        self.run = run
        self.cfg = cfg
        self.model_id = run.path.resolve().name
        self.created = int((run.path / CONFIG).stat().st_mtime) if (run.path / CONFIG).exists() else 0
        self.scheduler = Scheduler(run, cfg)
        self.chat = isinstance(run.tokenizer, ChatTokenizer)  # the run has a chat template: /v1/chat/completions

    def params(self, req: SamplingFields, max_tokens: int, prompts: int, field: str = "max_tokens") -> SamplingParams:
        """The sampling options of a request for `prompts` prompts, checked against the model and the limits."""
        if req.model is not None and req.model != self.model_id:
            raise RequestError(404, f"model {req.model!r} is not served here; this server serves {self.model_id!r}", "model")
        if prompts * req.n > MAX_CHOICES:
            raise RequestError(422, f"n * prompts = {prompts * req.n}: at most {MAX_CHOICES} choices a request", "n")
        params = req.params(max_tokens)
        if params.max_new_tokens > self.cfg.max_tokens_limit:
            raise RequestError(
                422,
                f"{field}={max_tokens} is above this server's limit of {self.cfg.max_tokens_limit} "
                "(serve.max_tokens_limit)",
                field,
            )
        if len(params.stop) > MAX_STOP_STRINGS:
            raise RequestError(422, f"stop: give up to {MAX_STOP_STRINGS} strings", "stop")
        return params

    def job(self, req: CompletionRequest) -> Job:
        """Check a completions request; raise RequestError naming the field."""
        texts = _prompt_list(req.prompt)
        params = self.params(req, req.max_tokens, len(texts))
        return Job([self._prompt(p) for p in texts], params, req.n, req.logprobs, req.echo)

    def chat_job(self, req: ChatRequest) -> Job:
        """Check a chat request: its messages rendered through the run's chat template (what generate(messages=)
        continues), the reply ending at the first marker, as generate's does; RequestError naming the field."""
        if req.logprobs:
            raise RequestError(422, "logprobs: not served for chat; ask /v1/completions with logprobs", "logprobs")
        field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = self.params(req, self.cfg.max_tokens_limit if asked is None else asked, 1, field)
        try:
            messages = check_messages(req.messages, "messages")
            text = render(messages, add_generation_prompt=True)
            if len(text) > self.cfg.max_prompt_chars:
                raise RequestError(422, f"messages: the conversation has {len(text)} characters with its markers; this "
                                   f"server accepts at most {self.cfg.max_prompt_chars} (serve.max_prompt_chars)", "messages")
            ids = self.run.tokenizer.encode_chat(messages, add_generation_prompt=True)[0]
        except SlmError as e:
            raise RequestError(422, str(e) if str(e).startswith("messages") else f"messages: {e}", "messages") from None
        return Job([(text, ids)], params.replace(stop=params.stop + SPECIAL_TOKENS), req.n)

    def _prompt(self, prompt: Union[str, list[int]]) -> tuple[str, list[int]]:
        """One prompt's text and ids (RequestError 422 for text the tokenizer cannot encode, ids outside the vocabulary)."""
        tokenizer = self.run.tokenizer
        if isinstance(prompt, list):
            bad = [i for i in prompt if not 0 <= i < tokenizer.vocab_size]
            if bad or len(prompt) > self.cfg.max_prompt_chars:
                raise RequestError(422, f"prompt: token ids must be in [0, {tokenizer.vocab_size}) and at most "
                                   f"{self.cfg.max_prompt_chars} (serve.max_prompt_chars)", "prompt")
            return tokenizer.decode(prompt), prompt or [tokenizer.eot_id]
        if len(prompt) > self.cfg.max_prompt_chars:
            raise RequestError(
                422,
                f"prompt has {len(prompt)} characters; this server accepts at most {self.cfg.max_prompt_chars} "
                "(serve.max_prompt_chars)",
                "prompt",
            )
        try:
            return prompt, tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
        except SlmError as e:
            raise RequestError(422, f"prompt: {e}", "prompt") from None

    def start(self, job: Job, streamed: bool) -> tuple[list[Ticket], asyncio.Queue]:
        """Queue the job's sequences (RequestError 503 when the queue is full); their updates come on the queue
        (for a request that is not streamed, each sequence's all at once when it ends)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        deadline = time.monotonic() + (self.cfg.request_timeout or float("inf"))
        tickets = [Ticket(i, ids, p, job.logprobs, queue, loop, deadline, streamed) for i, ids, p in job.choices()]
        self.scheduler.submit(tickets)
        return tickets, queue

    async def updates(self, tickets: list[Ticket], queue: asyncio.Queue, request: Optional[Request] = None):
        """Every choice's updates as the scheduler makes them, until each has finished (or `request`'s client
        has gone: checked every POLL seconds by a watcher task, so each update costs one queue.get)."""
        watcher = asyncio.create_task(_watch(request, queue)) if request is not None else None
        try:
            left = len(tickets)
            while left:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                left -= item.finish_reason is not None
                yield item
        finally:
            if watcher is not None:
                watcher.cancel()
            self.scheduler.cancel(tickets)  # client gone or request over: out of the batch at the next step

    async def echoed(self, job: Job) -> list[dict[str, list]]:
        """Each prompt's logprobs entries (None for its first token), computed off the event loop."""
        if not (job.echo and job.logprobs is not None):
            return [_entries() for _ in job.prompts]
        top = job.logprobs
        return await asyncio.to_thread(
            lambda: [self.entries(ids, prompt_logprobs(self.run.model, ids, top), first=True) for _, ids in job.prompts]
        )

    def entries(self, ids: list[int], logprobs: list, first: bool = False) -> dict[str, list]:
        """OpenAI's logprobs object for tokens `ids` given (token, logprob, top) per token (first=True: the first has none)."""
        decode = self.run.tokenizer.decode
        out = _entries()
        for k, token in enumerate(ids):
            out["tokens"].append(decode([token]))
            entry = None if first and k == 0 else logprobs[k - first]
            out["token_logprobs"].append(None if entry is None else entry[1])
            out["top_logprobs"].append(None if entry is None else {decode([t]): lp for t, lp in entry[2]})
        return out


async def _watch(request: Request, queue: asyncio.Queue) -> None:
    """Put ClientGone on the queue once the client of a request that is not streamed has disconnected."""
    while not await request.is_disconnected():
        await asyncio.sleep(POLL)
    queue.put_nowait(ClientGone())


def _entries() -> dict[str, list]:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def _prompt_list(prompt: Union[str, list]) -> list[Union[str, list[int]]]:
    """The request's prompts: one text, one list of token ids, or a list of either."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [prompt]
    if not prompt:
        return [""]
    return list(prompt)


async def read_body(request: Request, cfg: ServeConfig) -> bytes:
    """The request body, refused with 413 once it passes the size a request may have (before it is all in
    memory), and with 408 when it has not all arrived within serve.body_timeout seconds."""
    limit = 6 * cfg.max_prompt_chars + 65536  # a prompt's characters as JSON escapes, and the other fields
    parts, size = [], 0
    try:
        async with asyncio.timeout(cfg.body_timeout or None):
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise RequestError(413, f"request body is over {limit} bytes; prompts are limited by "
                                       "serve.max_prompt_chars", headers={"Connection": "close"})
                parts.append(part)
    except TimeoutError:
        raise RequestError(408, f"the request body did not arrive within serve.body_timeout={cfg.body_timeout:g} s",
                           headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise RequestError(400, "the client disconnected before its request body arrived") from None
    return b"".join(parts)


def _short(value: Any) -> str:
    """`value` as a short one-line repr, for an offending value in an error message."""
    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlevel = 60, 60, 3
    return short.repr(value)


def parse_request(body: bytes, kind: Optional[type[BaseModel]] = None) -> Any:
    """The JSON body as a `kind` (CompletionRequest by default), whatever the Content-Type; RequestError
    400 (not a JSON object) or 422 naming the first bad field otherwise."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, invalid UTF-8, an integer of > 4300 digits; nesting
        reason = "nested too deeply" if isinstance(e, RecursionError) else _short(str(e))
        raise RequestError(400, f"request body is not valid JSON ({reason})") from None
    if not isinstance(raw, dict):
        raise RequestError(400, f"request body must be a JSON object, not {type(raw).__name__}")
    try:
        return (kind or CompletionRequest).model_validate(raw)
    except (ValidationError, RecursionError) as e:
        if isinstance(e, RecursionError):
            raise RequestError(422, "a field of the request body is nested too deeply") from None
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        param = str(first["loc"][0]) if first["loc"] else None
        raise RequestError(422, f"{where}: {first['msg']} (got {_short(first.get('input'))})", param) from None


def page() -> str:
    """The single HTML page served at `/`."""
    return (importlib.resources.files("slmkit") / "static" / "index.html").read_text(encoding="utf-8")


class Choice:
    """One choice's text and logprobs as its updates arrive."""

    def __init__(self, server: Server, job: Job, index: int, echoed: dict[str, list]):
        prompt = job.prompts[index // job.n][0]
        self.server, self.job, self.index = server, job, index
        self.text = prompt if job.echo else ""
        self.logprobs = {key: list(values) for key, values in echoed.items()} if job.echo else _entries()
        self.finish_reason: Optional[str] = None
        self.tokens = 0

    def add(self, update: Update) -> None:
        self.text += update.text
        if update.logprob is not None:
            token = update.logprob[0]
            more = self.server.entries([token], [update.logprob])
            for key, values in more.items():
                self.logprobs[key] += values
        self.finish_reason, self.tokens = update.finish_reason, update.tokens

    def body(self, text: Optional[str] = None, logprobs: Optional[dict] = None, final: bool = True) -> dict[str, Any]:
        """The choice as OpenAI writes it (the whole of it, or one streamed piece)."""
        logprobs = self.logprobs if logprobs is None else logprobs
        if self.job.logprobs is None:
            logprobs = None
        else:
            offsets, at = [], 0
            for token in logprobs["tokens"]:
                offsets.append(at)
                at += len(token)
            logprobs = {**logprobs, "text_offset": offsets}
        return {"text": self.text if text is None else text, "index": self.index, "logprobs": logprobs,
                "finish_reason": self.finish_reason if final else None}


def usage(job: Job, choices: list[Choice]) -> dict[str, int]:
    """OpenAI's usage object: the prompts' tokens (an empty prompt has none) and the tokens sampled."""
    prompt = sum(len(ids) if text else 0 for text, ids in job.prompts)
    completion = sum(c.tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def gather(server: Server, tickets: list[Ticket], queue: asyncio.Queue, request: Request, choices: list[Choice]) -> bool:
    """Add every update to its choice until all have finished; False when the client has gone meanwhile."""
    try:
        async for update in server.updates(tickets, queue, request):
            choices[update.index].add(update)
    except ClientGone:
        return False
    return True


class EventStream(StreamingResponse):
    """Server-sent events that call `close` when the response is over, however it ends: finished, failed, or its
    client gone (even before the first event, when the events' generator has not started and its own
    `finally` would never run)."""

    def __init__(self, events: AsyncIterator[str], close: Callable[[], None]):
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.close = close

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.close()


def sse(pieces: AsyncIterator[dict[str, Any]], tickets: list[Ticket], server: Server) -> EventStream:
    """A response of server-sent events, one per piece, then [DONE] (an error after the headers have gone out is
    reported in-band, as OpenAI does); the tickets' sequences leave the batch when it ends."""

    async def events() -> AsyncIterator[str]:
        try:
            async for piece in pieces:
                yield f"data: {json.dumps(piece)}\n\n"
        except Exception as e:
            message = e.message if isinstance(e, RequestError) else str(e)
            yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
            return
        yield "data: [DONE]\n\n"

    return EventStream(events(), lambda: server.scheduler.cancel(tickets))


async def complete(server: Server, request: Request) -> Any:
    """POST /v1/completions: the whole answer, or a StreamingResponse of server-sent events."""
    req = parse_request(await read_body(request, server.cfg))
    job = server.job(req)
    echoed = await server.echoed(job)
    choices = [Choice(server, job, i, echoed[i // job.n]) for i in range(len(job.prompts) * job.n)]
    tickets, queue = server.start(job, req.stream)  # 503 here, before any byte of the answer
    base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": server.model_id}
    if not req.stream:
        if not await gather(server, tickets, queue, request, choices):
            return Response(status_code=499)  # nobody will read the answer
        return {**base, "choices": [c.body() for c in choices], "usage": usage(job, choices)}

    async def pieces() -> AsyncIterator[dict[str, Any]]:
        def chunk(choice: Choice, text: str, logprobs: dict, final: bool, **extra: Any) -> dict[str, Any]:
            return {**base, "choices": [choice.body(text, logprobs, final)], **extra}

        if job.echo:
            for choice in choices:
                yield chunk(choice, choice.text, choice.logprobs, False)
        async for update in server.updates(tickets, queue):
            choice = choices[update.index]
            before = len(choice.logprobs["tokens"])
            choice.add(update)
            new = {key: values[before:] for key, values in choice.logprobs.items()} if job.logprobs is not None else {}
            if update.text or new.get("tokens"):
                yield chunk(choice, update.text, new, False)
            if update.finish_reason:
                done = all(c.finish_reason for c in choices)
                yield chunk(choice, "", _entries(), True, **({"usage": usage(job, choices)} if done else {}))

    return sse(pieces(), tickets, server)


async def chat_complete(server: Server, request: Request) -> Any:
    """POST /v1/chat/completions: the assistant's reply (one per choice) as a chat.completion, or streamed as
    chat.completion.chunk events (the role first, then the text as it comes, then the finish reason)."""
    if not server.chat:
        raise RequestError(404, f"{server.model_id!r} was not trained for chat; {BASE_MODELS}", "model", "not_found_error")
    req = parse_request(await read_body(request, server.cfg), ChatRequest)
    job = server.chat_job(req)
    choices = [Choice(server, job, i, _entries()) for i in range(job.n)]
    tickets, queue = server.start(job, req.stream)
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_id}
    if not req.stream:
        if not await gather(server, tickets, queue, request, choices):
            return Response(status_code=499)
        replies = [{"index": c.index, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                    "finish_reason": c.finish_reason} for c in choices]
        return {**base, "object": "chat.completion", "choices": replies, "usage": usage(job, choices)}

    def chunk(index: int, delta: dict[str, str], finish: Optional[str] = None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "object": "chat.completion.chunk", "choices": [choice]}

    async def pieces() -> AsyncIterator[dict[str, Any]]:
        for choice in choices:
            yield chunk(choice.index, {"role": "assistant", "content": ""})
        async for update in server.updates(tickets, queue):
            choices[update.index].add(update)
            if update.text:
                yield chunk(update.index, {"content": update.text})
            if update.finish_reason:
                yield chunk(update.index, {}, update.finish_reason)
        if req.stream_options is not None and req.stream_options.include_usage:
            yield {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage(job, choices)}

    return sse(pieces(), tickets, server)


class TokenizeRequest(BaseModel):
    prompt: str = ""


class DetokenizeRequest(BaseModel):
    tokens: list[int] = []


class RequireKey:
    """ASGI middleware: a request without `Authorization: Bearer KEY` gets 401 in OpenAI's shape (but OPEN_PATHS).
    Plain ASGI, not an HTTP middleware class: streamed answers and disconnects pass through untouched."""

    def __init__(self, app: Any, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):  # the same time whatever the key's first wrong byte
                why = "a wrong API key" if given else "no API key"
                message = f"{why}: this server needs `Authorization: Bearer KEY` (the key of serve.api_key or ${API_KEY_ENV})"
                response = _error(401, message, kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(run: Run, cfg: Optional[ServeConfig] = None) -> FastAPI:
    """The FastAPI application serving `run` with the limits in `cfg` (its api_key and cors_origins included)."""
    cfg = cfg or ServeConfig()
    cfg.validate()
    server = Server(run, cfg)
    app = FastAPI(title="slmkit", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    add_errors(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": server.model_id}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": server.model_id, "object": "model", "created": server.created, "owned_by": "slmkit",
                 "chat": server.chat}  # not OpenAI's: the page's chat mode
        return {"object": "list", "data": [entry]}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        tok = run.tokenizer
        eos = tok.decode([tok.eot_id])
        return {"eos_token": eos, "bos_token": None, "pad_token": None, "vocab_size": tok.vocab_size, "kind": tok.kind}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        prompt = parse_request(await read_body(request, cfg) or b"{}", TokenizeRequest).prompt
        tokens = server._prompt(prompt)[1] if prompt else []
        return {"tokens": tokens, "count": len(tokens), "max_model_len": run.model.config.block_size}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        tokens = parse_request(await read_body(request, cfg) or b"{}", DetokenizeRequest).tokens
        return {"prompt": server._prompt(tokens)[0]}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await complete(server, request)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await chat_complete(server, request)

    if cfg.api_key:
        app.add_middleware(RequireKey, key=cfg.api_key)
    origins = [origin.strip() for origin in cfg.cors_origins.split(",") if origin.strip()]
    if origins:  # outside the key check: a browser's preflight (OPTIONS) carries no key
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    return app


BASE_MODELS = "this server serves base (completion) models: POST /v1/completions with a prompt"


def add_errors(app: FastAPI) -> None:
    """Every refusal in OpenAI's error shape: RequestErrors, unknown paths, wrong methods, anything unforeseen."""
    server = app.state.server
    serves = "POST /v1/chat/completions with messages, or /v1/completions" if server.chat else BASE_MODELS

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param, exc.kind, exc.headers)

    @app.exception_handler(404)
    async def unknown_path(request: Request, exc: Exception) -> JSONResponse:
        return _error(404, f"no such endpoint: {request.method} {_short(request.url.path)}; {serves}", kind="not_found_error")

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc: Exception) -> JSONResponse:
        return _error(405, f"{_short(request.method)} is not allowed on {request.url.path}; {serves}")

    @app.exception_handler(Exception)
    async def unforeseen(request: Request, exc: Exception) -> JSONResponse:  # a bug: still one line in OpenAI's shape
        return _error(500, f"internal error: {type(exc).__name__}: {_short(str(exc))}", kind="server_error")


def serve(
    run_dir: Path | str,
    host: Optional[str] = None,
    port: Optional[int] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> None:
    """Load the run in `run_dir` and serve it until Ctrl+C (host/port default to the run's serve section)."""
    run = load_run(run_dir)
    cfg = run.config.serve
    for key, value in (overrides or {}).items():
        if not key.startswith("serve."):
            raise ConfigError(f"slm serve takes serve.* overrides only, not --{key}")
        apply_override(run.config, key, value)
    if host is not None:
        cfg.host = host
    if port is not None:
        cfg.port = port
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # for this process: the batch loop's forwards
    cfg.api_key = cfg.api_key or os.environ.get(API_KEY_ENV, "")
    app = create_app(run, cfg)
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    try:
        sock = socket.create_server((cfg.host, cfg.port), family=family)
    except OSError as e:
        raise ServeError(
            f"cannot listen on {cfg.host} port {cfg.port} ({e.strerror or e}); pick another --port (or --host)"
        ) from None
    if not cfg.api_key and not is_loopback(cfg.host):
        print(f"slm: warning: listening on {cfg.host} without an API key: anyone who can reach it can use this API "
              f"(set ${API_KEY_ENV} or --serve.api_key)", file=sys.stderr, flush=True)
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    port = sock.getsockname()[1]  # the real one when --port 0 asked for any free port
    print(f"serving {run.path} as {app.state.server.model_id!r} on http://{shown}:{port}/  (Ctrl+C to stop)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
