"""`slm serve`: an OpenAI-compatible completions API (streamed as server-sent events) and a page to try a run.

    POST /v1/completions   prompt, max_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed, stream
    GET  /v1/models        the one model this process serves
    GET  /health           liveness
    GET  /                 a single self-contained HTML page (no external assets)

One model, one generation at a time: each request generates in its own thread under a lock,
so concurrent requests queue and never share sampling state. A client that disconnects (the
page's stop button) ends its generation at the next token.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import socket
import threading
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Optional, Union

from .config import ConfigError, ServeConfig, apply_override
from .errors import ServeError, SlmError
from .generate import stream
from .runs import CONFIG, Run, load_run
from .sampling import SamplingError, SamplingParams

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field, ValidationError
except ImportError:
    raise ServeError("`slm serve` needs FastAPI and uvicorn: pip install 'slmkit[serve]'") from None

MAX_STOP_STRINGS = 4  # as OpenAI's API


class CompletionRequest(BaseModel):
    """The body of POST /v1/completions (OpenAI's fields, plus top_k and repetition_penalty)."""

    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    prompt: Union[str, list[str]] = ""
    # OpenAI's defaults; the ranges are SamplingParams.validate's (see params())
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # not OpenAI's: > 1 discourages repeats
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)

    def params(self) -> SamplingParams:
        """The request's sampling options, validated; RequestError 422 naming the field otherwise."""
        params = SamplingParams(
            max_new_tokens=self.max_tokens, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
            repetition_penalty=self.repetition_penalty, stop=() if self.stop is None else self.stop, seed=self.seed,
        )
        try:
            return params.validate()
        except SamplingError as e:
            field = "max_tokens" if e.field == "max_new_tokens" else e.field  # OpenAI's name for it
            raise RequestError(422, f"{field}={e.value!r} {e.rule}", field) from None


class RequestError(Exception):
    """A request the server refuses: HTTP status, one-line message, the offending field."""

    def __init__(self, status: int, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _error(status: int, message: str, param: Optional[str] = None, kind: str = "invalid_request_error") -> JSONResponse:
    """An error body shaped as OpenAI's, so its clients show the message."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


@dataclass
class Job:
    """One validated request, ready for generate.stream."""

    prompt: str
    prompt_tokens: int
    params: SamplingParams


class Server:
    """The served run, its limits, and the lock that lets one generation run at a time."""

    def __init__(self, run: Run, cfg: ServeConfig):
        self.run = run
        self.cfg = cfg
        self.model_id = run.path.resolve().name
        self.created = int((run.path / CONFIG).stat().st_mtime) if (run.path / CONFIG).exists() else 0
        self.lock = threading.Lock()

    def job(self, req: CompletionRequest) -> Job:
        """Check a request against the model and the limits; raise RequestError naming the field."""
        if req.model is not None and req.model != self.model_id:
            raise RequestError(404, f"model {req.model!r} is not served here; this server serves {self.model_id!r}", "model")
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise RequestError(422, f"prompt: give one string (a list of {len(prompt)} was sent)", "prompt")
            prompt = prompt[0]
        if len(prompt) > self.cfg.max_prompt_chars:
            raise RequestError(
                422,
                f"prompt has {len(prompt)} characters; this server accepts at most {self.cfg.max_prompt_chars} "
                "(serve.max_prompt_chars)",
                "prompt",
            )
        params = req.params()
        if params.max_new_tokens > self.cfg.max_tokens_limit:
            raise RequestError(
                422,
                f"max_tokens={req.max_tokens} is above this server's limit of {self.cfg.max_tokens_limit} "
                "(serve.max_tokens_limit)",
                "max_tokens",
            )
        if len(params.stop) > MAX_STOP_STRINGS:
            raise RequestError(422, f"stop: give up to {MAX_STOP_STRINGS} strings", "stop")
        prompt_tokens = 0
        if prompt:
            try:
                prompt_tokens = len(self.run.tokenizer.encode(prompt))
            except SlmError as e:
                raise RequestError(422, f"prompt: {e}", "prompt") from None
        return Job(prompt=prompt, prompt_tokens=prompt_tokens, params=params)

    def _generate(self, job: Job, cancelled: threading.Event) -> Iterator[str]:
        """Text pieces for `job`, one generation at a time; stops early once `cancelled` is set."""
        with self.lock:  # concurrent requests queue here
            if cancelled.is_set():
                return
            for piece in stream(self.run.model, self.run.tokenizer, job.prompt, job.params):
                if cancelled.is_set():
                    return
                yield piece

    async def pieces(self, job: Job) -> AsyncIterator[str]:
        """Generate in a thread of its own and hand each piece to the event loop as it comes."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        done = object()

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                cancelled.set()

        def work() -> None:
            try:
                for piece in self._generate(job, cancelled):
                    put(piece)
            except Exception as e:  # handed to the request, which reports it
                put(e)
            finally:
                put(done)

        # A plain thread, not the shared pool: threads waiting for the lock must not starve the one holding it.
        threading.Thread(target=work, name="slm-generate", daemon=True).start()
        try:
            while (item := await queue.get()) is not done:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancelled.set()  # client gone or request finished: stop sampling at the next token

    def usage(self, job: Job, text: str) -> dict[str, int]:
        """Token counts (the completion re-encoded, so exact for char tokenizers, close for others)."""
        prompt_tokens = job.prompt_tokens
        try:
            completion_tokens = len(self.run.tokenizer.encode(text)) if text else 0
        except SlmError:
            completion_tokens = len(text)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def finish_reason(self, job: Job, usage: dict[str, int]) -> str:
        """'length' when max_tokens ran out, 'stop' when a stop string (or the model) ended the text first."""
        stopped_early = usage["completion_tokens"] < job.params.max_new_tokens
        return "stop" if job.params.stop and stopped_early else "length"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes `limit` bytes (before it is all in memory)."""
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise RequestError(413, f"request body is over {limit} bytes; prompts are limited by serve.max_prompt_chars")
        parts.append(part)
    return b"".join(parts)


def parse_request(body: bytes) -> CompletionRequest:
    """The JSON body as a CompletionRequest (whatever the Content-Type); RequestError 400/422 otherwise."""
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise RequestError(400, f"request body must be a JSON object, not {type(raw).__name__}")
    try:
        return CompletionRequest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise RequestError(422, f"{param}: {first['msg']} (got {first.get('input')!r})", param) from None


def page() -> str:
    """The single HTML page served at `/`."""
    return (importlib.resources.files("slmkit") / "static" / "index.html").read_text(encoding="utf-8")


def create_app(run: Run, cfg: Optional[ServeConfig] = None) -> FastAPI:
    """The FastAPI application serving `run` with the limits in `cfg`."""
    cfg = cfg or ServeConfig()
    cfg.validate()
    server = Server(run, cfg)
    app = FastAPI(title="slmkit", version="0.1.0")
    app.state.server = server

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param, "not_found_error" if exc.status == 404 else "invalid_request_error")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": server.model_id}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": server.model_id, "object": "model", "created": server.created, "owned_by": "slmkit"}
        return {"object": "list", "data": [entry]}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = parse_request(await read_body(request, 6 * cfg.max_prompt_chars + 65536))
        job = server.job(req)
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": server.model_id}
        if not req.stream:
            parts = []
            async with aclosing(server.pieces(job)) as pieces:
                async for piece in pieces:
                    parts.append(piece)
                    if await request.is_disconnected():  # nobody will read the answer: stop generating
                        return Response(status_code=499)
            text = "".join(parts)
            usage = server.usage(job, text)
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": server.finish_reason(job, usage)}
            return {**base, "choices": [choice], "usage": usage}

        async def events() -> AsyncIterator[str]:
            parts = []
            try:
                async for piece in server.pieces(job):
                    parts.append(piece)
                    chunk = {**base, "choices": [{"text": piece, "index": 0, "logprobs": None, "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
            except Exception as e:  # headers are sent: report in-band, as OpenAI does
                yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
                return
            usage = server.usage(job, "".join(parts))
            last = {"text": "", "index": 0, "logprobs": None, "finish_reason": server.finish_reason(job, usage)}
            yield f"data: {json.dumps({**base, 'choices': [last], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    return app


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
    app = create_app(run, cfg)
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    try:
        sock = socket.create_server((cfg.host, cfg.port), family=family)
    except OSError as e:
        raise ServeError(
            f"cannot listen on {cfg.host} port {cfg.port} ({e.strerror or e}); pick another --port (or --host)"
        ) from None
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"slm: warning: listening on {cfg.host}: anyone who can reach it can use this API (no authentication)")
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    port = sock.getsockname()[1]  # the real one when --port 0 asked for any free port
    print(f"serving {run.path} as {app.state.server.model_id!r} on http://{shown}:{port}/  (Ctrl+C to stop)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
