"""Load test of `slm serve`: N concurrent completion requests on 127.0.0.1; errors and p50/p95 latency.

    python -P benchmarks/serve_load.py --run runs/kjv-char [--requests 50] [--max-tokens 64] [--url URL]

Without --url it serves the run itself (uvicorn in a thread on a free loopback port). Half the
requests stream (server-sent events), half do not; every one has its own seed. Generation is
one at a time, so latency grows with the queue: p95 is close to N times one request's time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import threading
import time

import httpx
import uvicorn

from slmkit.config import ServeConfig
from slmkit.runs import load_run
from slmkit.serve import create_app


def start_server(run_dir: str) -> tuple[uvicorn.Server, str]:
    """Serve the run with uvicorn in a daemon thread on a free 127.0.0.1 port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(load_run(run_dir), ServeConfig()), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


async def one(client: httpx.AsyncClient, seed: int, max_tokens: int, streamed: bool) -> tuple[float, float, int]:
    """(seconds to the last byte, seconds to the first text, characters); raises on any error."""
    body = {"prompt": "And God said", "max_tokens": max_tokens, "temperature": 0.8, "seed": seed, "stream": streamed}
    start = time.perf_counter()
    first = None
    if not streamed:
        reply = await client.post("/v1/completions", json=body)
        reply.raise_for_status()
        text = reply.json()["choices"][0]["text"]
        end = time.perf_counter()
        return end - start, end - start, len(text)
    text = ""
    async with client.stream("POST", "/v1/completions", json=body) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter() - start
            text += chunk["choices"][0]["text"]
    return time.perf_counter() - start, first or 0.0, len(text)


async def load(url: str, requests: int, max_tokens: int, timeout: float) -> None:
    limits = httpx.Limits(max_connections=requests)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        alone, _, _ = await one(client, 0, max_tokens, False)  # warm-up and one request on its own
        alone, _, _ = await one(client, 0, max_tokens, False)
        start = time.perf_counter()
        jobs = [one(client, seed, max_tokens, seed % 2 == 0) for seed in range(requests)]
        results = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), timeout)
        wall = time.perf_counter() - start
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    for e in errors[:3]:
        print(f"error: {type(e).__name__}: {e}")
    latencies = sorted(r[0] for r in ok)
    firsts = sorted(r[1] for r in ok)
    chars = sum(r[2] for r in ok)

    def pct(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]

    print("| requests | max_tokens | errors | one alone s | p50 s | p95 s | first text p50 s | wall s | chars/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {requests} | {max_tokens} | {len(errors)} | {alone:.3f} | {pct(latencies, 50):.2f} | {pct(latencies, 95):.2f} "
        f"| {pct(firsts, 50):.2f} | {wall:.2f} | {chars / wall:,.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run folder to serve (unless --url is given)")
    parser.add_argument("--url", help="an `slm serve` already running, e.g. http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole load")
    args = parser.parse_args()
    if not (args.url or args.run):
        parser.error("give --run DIR or --url URL")
    server = None
    url = args.url
    if url is None:
        server, url = start_server(args.run)
    try:
        asyncio.run(load(url, args.requests, args.max_tokens, args.timeout))
    finally:
        if server is not None:
            server.should_exit = True


if __name__ == "__main__":
    main()
