"""Load test of `slm serve`: the batched scheduler against one sequence at a time, in one invocation.

    python -P benchmarks/serve_load.py --run runs/kjv-bpe [--max-batch 64] [--requests 50] [--max-tokens 64]
                                       [--flood 500] [--flood-queue 100] [--threads 1]
    python -P benchmarks/serve_load.py --run runs/kjv-char --rss 10000 [--concurrency 4] [--max-tokens 8]

For each of `--serve.max_batch=MAX_BATCH` and `--serve.max_batch=1` it starts `slm serve` on the run
in a subprocess (so its RSS is the server's alone; on a machine with two or more cores the server runs on
one core and this client on another, as a real server's clients are on other machines; --no-pin: both
anywhere) and measures, from asyncio aiohttp clients: one
request alone (after a warm-up, the median of 5); REQUESTS concurrent MAX_TOKENS-token requests (half streamed,
half plain; every one its own seed): wall, p50, p95, time to first text, aggregate completion
tokens/s (serve.max_queue=REQUESTS); then, on a new server with serve.max_queue=FLOOD_QUEUE, FLOOD concurrent requests: status counts (503s
are the refusals asked for, anything else is an error), the server's RSS before and after, and
the latency of /health polled during the flood. Compare rows of one invocation only.

--rss N instead: one server (serve.max_batch=MAX_BATCH), N short requests from CONCURRENCY clients at a time
(plain, streamed, and every 10th a refused one: a 422), the server's VmRSS and RssAnon (/proc) read every
N/10 requests: whether a long-lived server's memory stays flat. Not timing-sensitive: run it under nice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Optional

import aiohttp
import psutil

PROMPT = "And God said"
ALONE_REPEATS = 5  # "one alone" is the median of this many (the machine is shared: single timings jump)


def start_server(
    run: str, max_batch: int, max_queue: int, threads: int, cpus: Optional[set[int]] = None
) -> tuple[subprocess.Popen, str]:
    """`slm serve` on a free loopback port in a subprocess (on `cpus` only, when given); (process, base url)."""
    cmd = [sys.executable, "-m", "slmkit", "serve", "--run", run, "--port", "0", f"--serve.max_batch={max_batch}",
           f"--serve.max_queue={max_queue}", f"--serve.threads={threads}", "--serve.max_tokens_limit=4096"]
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None  # in the child, before it starts any thread
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
                            preexec_fn=pin)
    line = proc.stdout.readline()
    if " on http://" not in line:
        raise RuntimeError(f"slm serve did not start: {line}{proc.stderr.read()}")
    return proc, line.split(" on ")[1].split("/  ")[0].rstrip("/")


async def one(client: aiohttp.ClientSession, seed: int, max_tokens: int, streamed: bool) -> tuple[float, float, int]:
    """(seconds to the last byte, seconds to the first text, completion tokens); raises on any HTTP error."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed, "stream": streamed}
    start = time.perf_counter()
    async with client.post("/v1/completions", json=body) as reply:
        reply.raise_for_status()
        if not streamed:
            completion_tokens = (await reply.json())["usage"]["completion_tokens"]
            end = time.perf_counter()
            return end - start, end - start, completion_tokens
        first, tokens = None, 0
        async for raw in reply.content:  # the event stream, line by line
            line = raw.decode().rstrip("\r\n")
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter() - start
            tokens = chunk.get("usage", {}).get("completion_tokens", tokens)
    return time.perf_counter() - start, first or 0.0, tokens


def session(url: str, connections: int = 100, timeout: float = 3600) -> aiohttp.ClientSession:
    """An aiohttp client for `url` with up to `connections` open at once (aiohttp, not httpx: on one core
    50 concurrent /health took 0.04-0.05 s through aiohttp against 0.15-0.16 s through httpx, time that
    would be counted against the server)."""
    return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=timeout))


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def concurrent(url: str, requests: int, max_tokens: int) -> dict[str, float]:
    """One request alone, then `requests` at once."""
    async with session(url, requests + 10) as client:
        await one(client, 0, max_tokens, False)  # warm-up
        alone = statistics.median([(await one(client, 0, max_tokens, False))[0] for _ in range(ALONE_REPEATS)])
        start = time.perf_counter()
        results = await asyncio.gather(*[one(client, s, max_tokens, s % 2 == 0) for s in range(requests)])
        wall = time.perf_counter() - start
    latencies, firsts = [r[0] for r in results], [r[1] for r in results if r[1]]
    return dict(alone=alone, wall=wall, p50=pct(latencies, 50), p95=pct(latencies, 95), first=pct(firsts, 50),
                tokens_per_s=sum(r[2] for r in results) / wall)


async def flood(url: str, pid: int, requests: int, max_tokens: int) -> dict[str, float]:
    """`requests` at once; status counts, RSS before/after, /health latency while they run."""
    server = psutil.Process(pid)
    async with session(url) as client:
        await one(client, 0, max_tokens, True)  # warm-up: RSS before counts a server that has served
    rss_before = server.memory_info().rss
    statuses: dict[str, int] = {}
    health: list[float] = []
    async with session(url, requests + 10) as client:

        async def ask(seed: int) -> None:
            try:
                await one(client, seed, max_tokens, seed % 2 == 0)
                key = "200"
            except aiohttp.ClientResponseError as e:
                key = str(e.status)
            except Exception as e:  # noqa: BLE001 - every other failure is counted, by kind
                key = type(e).__name__
            statuses[key] = statuses.get(key, 0) + 1

        async def poll_health(done: asyncio.Event) -> None:
            async def get_health(own: aiohttp.ClientSession) -> None:
                async with own.get("/health") as reply:
                    reply.raise_for_status()
                    await reply.read()

            async with session(url, timeout=60) as own:
                while not done.is_set():
                    start = time.perf_counter()
                    try:
                        await get_health(own)
                    except aiohttp.ServerDisconnectedError:
                        # the server closed the idle keep-alive connection as the next GET went out (its
                        # timer fires late while the loop accepts 500 connections); a client retries it
                        statuses["health reconnects"] = statuses.get("health reconnects", 0) + 1
                        await get_health(own)
                    health.append(time.perf_counter() - start)
                    await asyncio.sleep(0.05)

        done = asyncio.Event()
        poller = asyncio.create_task(poll_health(done))
        start = time.perf_counter()
        await asyncio.gather(*[ask(s) for s in range(requests)])
        wall = time.perf_counter() - start
        done.set()
        await poller
    await asyncio.sleep(2)  # let the server drop what the requests held
    rss_after = server.memory_info().rss
    errors = sum(n for key, n in statuses.items() if key not in ("200", "503", "health reconnects"))
    return dict(wall=wall, ok=statuses.get("200", 0), busy=statuses.get("503", 0), errors=errors,
                statuses=statuses, rss_before=rss_before / 2**20, rss_after=rss_after / 2**20,
                health_p50=pct(health, 50), health_max=max(health))


def rss_of(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) of process `pid` in MiB, from /proc."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status", encoding="utf-8"))
    return tuple(int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "RssAnon"))


async def long_run(url: str, pid: int, requests: int, concurrency: int, max_tokens: int) -> list[tuple]:
    """`requests` short requests, `concurrency` at a time; rows (requests done, VmRSS, RssAnon, seconds, failures)."""
    rows, failures, done = [], 0, 0
    start = time.perf_counter()
    async with session(url, timeout=600) as client:
        await one(client, 0, max_tokens, True)  # warm-up
        rows.append((0, *rss_of(pid), 0.0, 0))

        async def ask(i: int) -> bool:
            if i % 10 == 9:  # refused: the error path must not leak either
                async with client.post("/v1/completions", json={"prompt": PROMPT, "temperature": -1}) as reply:
                    return reply.status == 422
            await one(client, i, max_tokens, i % 2 == 0)
            return True

        every = max(1, requests // 10)
        while done < requests:
            batch = range(done, min(done + concurrency, requests))
            results = await asyncio.gather(*[ask(i) for i in batch], return_exceptions=True)
            failures += sum(r is not True for r in results)
            done += len(batch)
            if done % every < concurrency or done == requests:
                rows.append((done, *rss_of(pid), time.perf_counter() - start, failures))
                print(f"{done:,} requests: VmRSS {rows[-1][1]:.1f} MiB, RssAnon {rows[-1][2]:.1f} MiB, "
                      f"{rows[-1][3]:.0f} s, {failures} failed", flush=True)
    return rows


def rss_mode(args: argparse.Namespace) -> None:
    """The --rss table: the server's memory over a long run of short requests."""
    proc, url = start_server(args.run, args.max_batch, args.max_batch * 4, args.threads)
    try:
        rows = asyncio.run(long_run(url, proc.pid, args.rss, args.concurrency, args.max_tokens))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"\n| requests | VmRSS MiB | RssAnon MiB | elapsed s | failed |\n|---|---|---|---|---|")
    for done, rss, anon, seconds, failures in rows:
        print(f"| {done:,} | {rss:.1f} | {anon:.1f} | {seconds:.0f} | {failures} |")
    first = next(r for r in rows if r[0] >= args.rss // 2)  # from the middle on: after the allocator has settled
    print(f"\nRssAnon from {first[0]:,} to {rows[-1][0]:,} requests: {first[2]:.1f} -> {rows[-1][2]:.1f} MiB "
          f"({rows[-1][2] - first[2]:+.1f}); load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder to serve")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--flood", type=int, default=500)
    parser.add_argument("--flood-queue", type=int, default=100, help="serve.max_queue for the flood")
    parser.add_argument("--threads", type=int, default=1, help="serve.threads")
    parser.add_argument("--rss", type=int, default=0, metavar="N", help="instead: RSS over N short requests")
    parser.add_argument("--concurrency", type=int, default=4, help="with --rss: requests at a time")
    parser.add_argument("--no-pin", action="store_true", help="server and client on any core (default: one core each)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.rss:
        return rss_mode(args)
    cores = sorted(os.sched_getaffinity(0))
    server_cpus = None
    if not args.no_pin and len(cores) >= 2:  # the server on the first core, this client on the second
        server_cpus = {cores[0]}
        os.sched_setaffinity(0, {cores[1]})
        where = f"server on CPU {cores[0]}, client on CPU {cores[1]}"
    else:
        where = f"server and client on CPUs {','.join(map(str, cores))}"
    print(where, flush=True)
    rows = {}
    for max_batch in (args.max_batch, 1):
        for phase, max_queue in (("concurrent", args.requests), ("flood", args.flood_queue)):  # a server each
            proc, url = start_server(args.run, max_batch, max_queue, args.threads, server_cpus)
            try:
                if phase == "concurrent":
                    rows[max_batch] = asyncio.run(concurrent(url, args.requests, args.max_tokens))
                else:
                    result = asyncio.run(flood(url, proc.pid, args.flood, args.max_tokens))
                    rows[max_batch].update({f"flood_{k}": v for k, v in result.items()})
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        print(f"max_batch={max_batch}: {rows[max_batch]} (load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\n{where}; load average {os.getloadavg()[0]:.1f}\n")
    print(f"| serve.max_batch | one alone s | {args.requests} concurrent: wall s | p50 s | p95 s | first text p50 s "
          f"| tokens/s | wall / alone | flood {args.flood} (max_queue {args.flood_queue}): 200 / 503 / other "
          "| RSS before → after MiB | /health p50 / max s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for max_batch, r in rows.items():
        print(
            f"| {max_batch} | {r['alone']:.3f} | {r['wall']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['first']:.2f} "
            f"| {r['tokens_per_s']:,.0f} | {r['wall'] / r['alone']:.1f}× | {r['flood_ok']} / {r['flood_busy']} / "
            f"{r['flood_errors']} | {r['flood_rss_before']:.0f} → {r['flood_rss_after']:.0f} "
            f"| {r['flood_health_p50']:.3f} / {r['flood_health_max']:.2f} |"
        )
    batched, single = rows[args.max_batch], rows[1]
    print(f"\nbatched: {args.requests} concurrent = {batched['wall'] / batched['alone']:.1f}× one alone; aggregate tokens/s "
          f"{batched['tokens_per_s'] / single['tokens_per_s']:.1f}× max_batch=1")


if __name__ == "__main__":
    main()
