"""The CPU speedrun (issue 7): the nanoGPT baseline and our fastest recipe, side by side in one run.

For each recipe: wall time, steps and tokens to the first val loss <= --target on the full val split,
the val loss at the end of its budget, tokens/s (median over log windows without an
evaluation) and MFU (model FLOPs/s over the fp32 matmul peak measured here, same thread count).
Also the "engine overhead" row: ms/step median of slmkit's train loop vs a bare nanoGPT-style loop,
same model and batch, alternating rounds.

    python -P benchmarks/speedrun.py --text ../shared/data/tinyshakespeare.txt --threads 2
    python -P benchmarks/speedrun.py --only overhead      # peak + overhead rows only, ~1 min
With --text the file is put into a temporary SLMKIT_CACHE, so `data.source: tinyshakespeare` runs offline.
BENCHMARKS.md records the results.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slmkit.config import load_recipe  # noqa: E402
from slmkit.data.prepare import load_prepared, prepare, shard_dir_for  # noqa: E402
from slmkit.model import GPT  # noqa: E402
from slmkit.optim import make_optimizers  # noqa: E402
from slmkit.runs import METRICS  # noqa: E402
from slmkit.train import train  # noqa: E402

BASELINE = ROOT / "recipes" / "speedrun-baseline.yaml"
FAST = ROOT / "recipes" / "speedrun-cpu.yaml"


def matmul_peak(threads: int, n: int = 1024, reps: int = 30) -> float:
    """Median GFLOP/s of an fp32 n x n torch.mm on `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def bare_loop_ms(cfg, steps: int) -> list[float]:
    """ms per step of a minimal nanoGPT-style loop (random windows, fwd, bwd, clip, fused AdamW)."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    tokenizer, shards, _ = load_prepared(shard_dir_for(cfg))
    data = torch.from_numpy(np.asarray(shards["train"].tokens, dtype=np.int64))
    cfg.model.vocab_size = tokenizer.vocab_size
    model = GPT(cfg.model)
    optimizer = make_optimizers(model, tc, torch.device("cpu"))[0]
    T, B = tc.seq_len or cfg.model.block_size, tc.batch_size
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        ix = torch.randint(len(data) - T - 1, (B,))
        x = torch.stack([data[i : i + T] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + T] for i in ix])
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append((time.perf_counter() - t) * 1000)
    return times[5:]  # warm-up steps


def rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv of a run."""
    with open(run_dir / METRICS, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def train_loop_ms(cfg, steps: int, out: Path) -> list[float]:
    """ms per step of slmkit's train() (median-able log windows of 10 steps, no evaluation inside)."""
    tc = cfg.train
    tc.max_steps, tc.max_minutes, tc.log_interval = steps, 0, 10
    tc.eval_interval, tc.eval_batches, tc.eval_full, tc.stop_at_val_loss = steps, 1, False, 0.0
    cfg.sample.max_new_tokens = 1
    train(cfg, out=out, progress_bar=False)
    tokens_per_step = tc.batch_size * (tc.seq_len or cfg.model.block_size)
    return [1000 * tokens_per_step / float(r["tokens_per_second"]) for r in rows(out)[1:-1]]  # no first/last window


def race(name: str, cfg, out: Path, target: float, peak: float) -> dict:
    """Train `cfg` to its own budget and read the race numbers from metrics.csv."""
    cfg.train.stop_at_val_loss = 0.0  # run to the budget: we also want the val loss at its end
    cfg.sample.max_new_tokens = 1
    result = train(cfg, out=out, progress_bar=False)
    metrics = rows(out)
    evals = [r for r in metrics if r["val_loss"]]
    first = next((r for r in evals if float(r["val_loss"]) <= target), None)
    tps = statistics.median(float(r["tokens_per_second"]) for r in metrics if not r["val_loss"])
    flops = GPT(cfg.model).flops_per_token()
    return {
        "name": name,
        "wall": float(metrics[-1]["elapsed"]),
        "steps": result.steps,
        "to_target": f"{float(first['elapsed']):.1f} s, {first['step']} steps, {int(first['tokens']):,} tokens"
        if first
        else f"not reached (best {min(float(r['val_loss']) for r in evals):.4f})",
        "final_val": float(evals[-1]["val_loss"]),  # the last evaluation, at the end of the budget
        "tokens_per_s": tps,
        "mfu": flops * tps / (peak * 1e9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", help="tinyshakespeare.txt to use instead of downloading it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--overhead-steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2, help="alternating overhead rounds")
    parser.add_argument("--only", choices=("all", "overhead", "race"), default="all")
    parser.add_argument("--fast", default=str(FAST), help="the recipe raced against the baseline")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="slm-speedrun-"))
    if args.text:
        os.environ["SLMKIT_CACHE"] = str(work / "cache")
        (work / "cache").mkdir()
        shutil.copy(args.text, work / "cache" / "tinyshakespeare.txt")
    os.chdir(work)  # shards/ and runs go here
    overrides = {"train.threads": args.threads}
    prepare(load_recipe(str(BASELINE), overrides), log=lambda *a: None)
    peak = matmul_peak(args.threads)
    print(f"fp32 matmul peak (1024x1024 torch.mm, {args.threads} threads): {peak:.1f} GFLOP/s")

    if args.only in ("all", "overhead"):
        bare, ours = [], []
        for i in range(args.rounds):
            bare += bare_loop_ms(load_recipe(str(BASELINE), overrides), args.overhead_steps)
            ours += train_loop_ms(load_recipe(str(BASELINE), overrides), args.overhead_steps, work / f"overhead{i}")
        cfg = load_recipe(str(BASELINE), overrides)
        cfg.model.vocab_size = load_prepared(shard_dir_for(cfg))[0].vocab_size
        tokens = cfg.train.batch_size * cfg.model.block_size
        flops = GPT(cfg.model).flops_per_token()
        for label, ms in (("bare nanoGPT-style loop", bare), ("slmkit train()", ours)):
            med = statistics.median(ms)
            tps = tokens / med * 1000
            print(f"engine overhead, {label}: {med:.1f} ms/step median, {tps:,.0f} tokens/s, MFU {flops * tps / peak / 1e9:.1%}")
        print(f"engine overhead: train() / bare = {statistics.median(ours) / statistics.median(bare):.3f}")

    if args.only in ("all", "race"):
        base = race("baseline", load_recipe(str(BASELINE), overrides), work / "baseline", args.target, peak)
        fast = race("fast", load_recipe(args.fast, overrides), work / "fast", args.target, peak)
        print(f"\n| recipe | wall | steps | to val <= {args.target} | val at the end | tokens/s | MFU |")
        print("|---|---|---|---|---|---|---|")
        for r in (base, fast):
            print(
                f"| {r['name']} | {r['wall']:.1f} s | {r['steps']} | {r['to_target']} | {r['final_val']:.4f} | "
                f"{r['tokens_per_s']:,.0f} | {r['mfu']:.1%} |"
            )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
