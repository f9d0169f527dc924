"""Training memory: RSS over 1,000 steps of a tiny model, for a corpus and one 10x larger.

Shards are read through numpy memmaps, so the process's own (anonymous) memory must stay flat over
the steps and not grow with the corpus; the file-backed part of RSS is the page cache of the shard
pages touched so far (shared, reclaimable), reported apart.

    python -P benchmarks/memory.py            # --steps 1000 --scale 10
Prints a table; RELIABILITY.md records the results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TINY = {
    "model.n_layer": 2,
    "model.n_head": 2,
    "model.n_embd": 32,
    "model.block_size": 64,
    "train.batch_size": 16,
    "train.max_minutes": 0,
    "train.warmup_steps": 10,
    "train.eval_interval": 250,
    "train.eval_batches": 2,
    "train.log_interval": 50,
    "train.threads": 1,
    "sample.max_new_tokens": 10,
}
EVERY = 100


def rss_mb() -> dict[str, float]:
    """RssAnon (the process's own memory) and RssFile (mapped file pages) from /proc/self/status, in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MB
    return fields


def child(corpus: str, shard_dir: str, run: str, steps: int) -> None:
    """Train in this process, sampling RSS every EVERY steps (from the sampler, which runs once a step)."""
    from slmkit.config import load_recipe
    from slmkit.data.sampler import WindowSampler
    from slmkit.train import train

    samples = []
    original = WindowSampler.next
    calls = {"n": -TINY["train.eval_batches"]}  # the fixed val batches are drawn first

    def next_and_measure(self):
        calls["n"] += 1
        if calls["n"] > 0 and calls["n"] % EVERY == 0:
            samples.append({"step": calls["n"], **rss_mb()})
        return original(self)

    WindowSampler.next = next_and_measure
    overrides = {**TINY, "data.source": corpus, "data.shard_dir": shard_dir, "train.max_steps": steps}
    train(load_recipe("kjv-char-gpt2", overrides), out=run, progress_bar=False)
    print(json.dumps(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--scale", type=int, default=10, help="the larger corpus is this many copies of the KJV")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        corpus, shard_dir, run, steps = args.child
        child(corpus, shard_dir, run, int(steps))
        return
    from slmkit.data.sources.kjv import read_kjv

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        kjv = "\n".join(read_kjv()) + "\n"
        for copies in (1, args.scale):
            corpus = Path(tmp) / f"kjv-x{copies}.txt"
            corpus.write_text(kjv * copies, encoding="utf-8")
            shards = Path(tmp) / f"shards-x{copies}"
            # prepare in its own process, so the training process's RSS is training's alone
            subprocess.run(
                [sys.executable, "-m", "slmkit", "prepare", f"--data.source={corpus}", f"--data.shard_dir={shards}"],
                check=True, env=env, stdout=subprocess.DEVNULL,
            )
            out = subprocess.run(
                [sys.executable, "-P", __file__, "--child", str(corpus), str(shards), str(Path(tmp) / f"run-x{copies}"), str(args.steps)],
                check=True, env=env, capture_output=True, text=True,
            ).stdout
            results[copies] = (corpus.stat().st_size / 1e6, json.loads(out.strip().splitlines()[-1]))
            corpus.unlink()
    print("| corpus | MB | step | RSS MB | anon MB | file-backed MB |")
    print("|---|---|---|---|---|---|")
    for copies, (size, samples) in results.items():
        for s in samples:
            print(f"| KJV x{copies} | {size:.0f} | {s['step']} | {s['VmRSS']:.0f} | {s['RssAnon']:.0f} | {s['RssFile']:.0f} |")
    print()
    print("| corpus | anon MB at step 100 | anon MB at the end | growth |")
    print("|---|---|---|---|")
    for copies, (size, samples) in results.items():
        first, last = samples[0]["RssAnon"], samples[-1]["RssAnon"]
        print(f"| KJV x{copies} ({size:.0f} MB) | {first:.1f} | {last:.1f} | {last - first:+.1f} |")


if __name__ == "__main__":
    main()
