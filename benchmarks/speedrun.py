"""The CPU speedrun (issue 18): the real nanoGPT against our recipes, side by side in one invocation.

Each round runs, one after the other and as whole processes: nanoGPT's own train.py with its README's
CPU command (on a temporary copy of ../shared/peers/nanoGPT), `slm train` on recipes/speedrun-baseline.yaml,
speedrun-cpu.yaml and speedrun-cpu-long.yaml (stop_at_val_loss off unless --stop, so we also get the loss at
the end; `--recipes recipe.yaml@section.key=value,...` races variants, --no-nanogpt leaves nanoGPT out). The order
flips every round. For each run: wall (process start to exit), time to the first val <= --target (the
moment its evaluation line was printed, counted from process start), the val at nanoGPT's wall of the same
round, the best weights' val on the whole val split (the final report's), ms/step (median, steps without an evaluation), tokens/s,
MFU (model FLOPs/s over the fp32 matmul peak measured here, same thread count), peak RSS and CPU seconds.

nanoGPT's checkpoint is scored in a subprocess that imports nanoGPT's own model.py from the copy and
hands it to slmkit.evaluate.mean_loss, the function `slm eval` uses, on our val shard: every window of
block_size once. nanoGPT's own val figures are estimates on 20 random batches; its "to val" uses them.

    python -P benchmarks/speedrun.py --threads 1 --rounds 2      # the full race, ~25 min on 1 thread
    python -P benchmarks/speedrun.py --threads 1 --rounds 1 --quick  # a fifth of the steps for every run
Without ../shared (or --shared) the nanoGPT rows are skipped with a note. BENCHMARKS.md records the results.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slmkit.config import load_recipe  # noqa: E402
from slmkit.data.prepare import load_prepared, prepare, shard_dir_for  # noqa: E402
from slmkit.model import GPT  # noqa: E402
from slmkit.runs import METRICS  # noqa: E402

BASELINE = ROOT / "recipes" / "speedrun-baseline.yaml"
FAST = ROOT / "recipes" / "speedrun-cpu.yaml"
LONG = ROOT / "recipes" / "speedrun-cpu-long.yaml"
NANOGPT_STEPS = 2000
# nanoGPT README's CPU command (max_iters and lr_decay_iters are added: NANOGPT_STEPS, or fewer with --quick)
NANOGPT_ARGS = [
    "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
    "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
    "--dropout=0.0",
]  # fmt: skip
# Runs in the nanoGPT copy: its own model.py, scored by the function `slm eval` uses.
SCORE = """
import json, sys, torch
from model import GPT, GPTConfig
from slmkit.data.shards import Shard
from slmkit.evaluate import mean_loss
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
model = GPT(GPTConfig(**ckpt["model_args"]))
model.load_state_dict(ckpt["model"])
class Scored(torch.nn.Module):  # what mean_loss needs that nanoGPT's GPT lacks: .device, contiguous targets
    def __init__(self, m):
        super().__init__()
        self.m, self.config, self.device = m, m.config, torch.device("cpu")
    def forward(self, x, y):
        return self.m(x, y.contiguous())  # its loss views the targets
print(json.dumps({"iter": ckpt["iter_num"], "val": mean_loss(Scored(model), Shard(sys.argv[2]).tokens, 32)}))
"""
OUR_EVAL = re.compile(r"^step (\d+): train [\d.]+, val ([\d.]+)")
OUR_FINAL = re.compile(r"^.*done: .* on the val split: .* loss ([\d.]+) nats/token")  # the best weights, whole split
NANO_EVAL = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")
NANO_ITER = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms")


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


@dataclass
class Process:
    """A finished subprocess: its wall, peak RSS and every stdout line with the second it arrived."""

    wall: float
    peak_rss_mb: float
    cpu_seconds: float  # user + system: less sensitive to other processes than the wall
    lines: list[tuple[float, str]] = field(default_factory=list)


def run_process(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> Process:
    """Run `cmd` to its end; stdout lines are stamped as they arrive (the child is unbuffered)."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in child.stdout:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage: ru_maxrss in KiB on Linux
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    log.write_text("\n".join(f"{t:8.2f} {s}" for t, s in lines) + "\n", encoding="utf-8")
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}); see {log}")
    return Process(wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, lines)


def evals(process: Process, pattern: re.Pattern) -> list[tuple[float, int, float]]:
    """(seconds after process start, step, val loss) of every evaluation line."""
    found = [(t, pattern.match(s)) for t, s in process.lines]
    return [(t, int(m.group(1)), float(m.group(2))) for t, m in found if m]


def first_at(points: list[tuple[float, int, float]], target: float) -> str:
    hit = next((p for p in points if p[2] <= target), None)
    return f"{hit[0]:.1f} s (step {hit[1]})" if hit else f"never (best {min(p[2] for p in points):.4f})"


@dataclass
class Row:
    name: str
    process: Process
    points: list[tuple[float, int, float]]  # evaluations: (seconds after start, step, val)
    final_val: float  # whole val split, the weights at the end
    ms_per_step: float
    tokens_per_step: int
    flops_per_token: int
    note: str = ""


def parse_variant(spec: str) -> tuple[Path, dict[str, str]]:
    """`recipe.yaml` or `recipe.yaml@section.key=value,section.key=value` (an ablation's overrides)."""
    path, _, rest = spec.partition("@")
    return Path(path), dict(item.split("=", 1) for item in rest.split(",") if item)


def run_ours(spec: str, work: Path, env: dict[str, str], threads: int, scale: float, tag: str, stop: bool) -> Row:
    """`slm train` on a recipe (with a variant's overrides), as a whole process; its figures from stdout and
    metrics.csv. stop_at_val_loss is switched off unless `stop`."""
    recipe, overrides = parse_variant(spec)
    cfg = load_recipe(str(recipe), overrides)
    steps = max(1, round(cfg.train.max_steps * scale))
    interval = max(1, round(cfg.train.eval_interval * scale))
    out = work / f"run-{recipe.stem}-{len(os.listdir(work))}-{tag}"
    cmd = [sys.executable, "-m", "slmkit", "train", "--recipe", str(recipe), "--out", str(out), "--no-progress",
           *(f"--{k}={v}" for k, v in overrides.items()), f"--train.threads={threads}",
           f"--train.max_steps={steps}", f"--train.eval_interval={interval}"]  # fmt: skip
    if not stop:
        cmd.append("--train.stop_at_val_loss=0")
    process = run_process(cmd, work, env, work / f"{out.name}.log")
    with open(out / METRICS, newline="", encoding="utf-8") as f:
        metrics = list(csv.DictReader(f))
    tokens_per_step = cfg.train.batch_size * (cfg.train.seq_len or cfg.model.block_size)
    speeds = [float(r["tokens_per_second"]) for r in metrics[1:] if not r["val_loss"]]  # no first window (warm-up)
    cfg.model.vocab_size = 65
    points = evals(process, OUR_EVAL)
    name = recipe.stem + "".join(f" {k}={v}" for k, v in overrides.items())
    final = next(float(m.group(1)) for m in (OUR_FINAL.match(s) for _, s in process.lines) if m)
    return Row(name, process, points, final, 1000 * tokens_per_step / statistics.median(speeds),
               tokens_per_step, GPT(cfg.model).flops_per_token())  # fmt: skip


def run_nanogpt(copy: Path, env: dict[str, str], val_shard: Path, steps: int, tag: str) -> Row:
    """nanoGPT's train.py as its README runs it on CPU, then its checkpoint scored on our val shard."""
    out = f"out-{tag}"
    cmd = [sys.executable, *NANOGPT_ARGS, f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--out_dir={out}"]
    if steps < NANOGPT_STEPS:
        cmd.append(f"--eval_interval={max(1, steps // 8)}")
    process = run_process(cmd, copy, env, copy / f"{out}.log")
    score = subprocess.run([sys.executable, "-c", SCORE, str(copy / out / "ckpt.pt"), str(val_shard)], cwd=copy,
                           env=env, capture_output=True, text=True, check=True)  # fmt: skip
    scored = json.loads(score.stdout.strip().splitlines()[-1])
    points = evals(process, NANO_EVAL)
    evaluated = {p[1] for p in points}
    iters = [(t, m) for t, m in ((t, NANO_ITER.match(s)) for t, s in process.lines) if m]
    ms = [float(m.group(2)) for _, m in iters if int(m.group(1)) >= 5 and int(m.group(1)) not in evaluated]
    baseline = load_recipe(str(BASELINE))  # nanoGPT's shape: the same FLOPs per token
    baseline.model.vocab_size = 65
    return Row("nanoGPT", process, points, scored["val"], statistics.median(ms), 12 * 64,
               GPT(baseline.model).flops_per_token(), note=f"checkpoint of iter {scored['iter']}")  # fmt: skip


def setup_nanogpt(shared: Path, work: Path, text: Path, env: dict[str, str], train_shard: Path, val_shard: Path) -> Path:
    """The nanoGPT copy with its data prepared; checks its splits are our shards' (ours end with one marker)."""
    import numpy as np

    from slmkit.data.shards import Shard

    copy = work / "nanogpt"
    shutil.copytree(shared / "peers" / "nanoGPT", copy)
    data = copy / "data" / "shakespeare_char"
    shutil.copy(text, data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, env=env, check=True, capture_output=True)
    for name, shard in (("train", train_shard), ("val", val_shard)):
        theirs, ours = np.fromfile(data / f"{name}.bin", dtype=np.uint16), np.asarray(Shard(shard).tokens)
        if not (len(ours) == len(theirs) + 1 and (ours[:-1] == theirs).all()):
            raise RuntimeError(f"nanoGPT's {name}.bin is not our {name} shard minus its end marker")
    print(f"nanoGPT's train.bin/val.bin = our shards without their final end-of-text token ({len(theirs):,} val tokens)")
    return copy


def print_table(rounds: list[list[Row]], peak: float, target: float) -> None:
    print(f"\n| round | run | wall | to val <= {target} | val at nanoGPT's wall | val at the end (whole split) "
          "| ms/step | tokens/s | MFU | peak RSS | CPU s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, rows in enumerate(rounds, 1):
        nano = next((r for r in rows if r.name == "nanoGPT"), None)
        for r in rows:
            tps = r.tokens_per_step / r.ms_per_step * 1000
            at_wall = "—"
            if nano is not None and r is not nano:
                before = [p for p in r.points if p[0] <= nano.process.wall]
                at_wall = f"{before[-1][2]:.4f} (step {before[-1][1]})" if before else "no evaluation yet"
            to_target = first_at(r.points, target) + (" (its 20-batch estimate)" if r is nano else "")
            end = f"{r.final_val:.4f}" + (f" ({r.note})" if r.note else "")
            print(f"| {i} | {r.name} | {r.process.wall:.1f} s | {to_target} | {at_wall} | {end} | {r.ms_per_step:.1f} "
                  f"| {tps:,.0f} | {r.flops_per_token * tps / peak / 1e9:.1%} | {r.process.peak_rss_mb:.0f} MB | {r.process.cpu_seconds:.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared folder (data/, peers/)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (OMP_NUM_THREADS too)")
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the order of the runs flipped each round")
    parser.add_argument("--quick", action="store_true", help="a fifth of every run's steps and eval interval")
    parser.add_argument("--recipes", nargs="+", default=[str(BASELINE), str(FAST), str(LONG)],
                        help="our recipes to race; recipe.yaml@section.key=value,... for a variant")
    parser.add_argument("--stop", action="store_true", help="keep the recipes' stop_at_val_loss (a race to it)")
    parser.add_argument("--no-nanogpt", action="store_true", help="only our recipes (ablations between them)")
    args = parser.parse_args()

    shared = Path(args.shared).resolve()  # before the chdir below
    text = shared / "data" / "tinyshakespeare.txt"
    work = Path(tempfile.mkdtemp(prefix="slm-speedrun-"))
    if text.is_file():  # data.source tinyshakespeare, offline; else the usual cache (downloaded once)
        (work / "cache").mkdir()
        shutil.copy(text, work / "cache" / "tinyshakespeare.txt")
        os.environ["SLMKIT_CACHE"] = str(work / "cache")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    # each recipe's path made absolute before the chdir below, its @overrides kept as given
    recipes = [str(Path(path).resolve()) + at + rest for path, at, rest in (s.partition("@") for s in args.recipes)]
    os.chdir(work)  # shards/ go here; the runs' processes start here too
    cfg = load_recipe(str(BASELINE))
    prepare(cfg, log=lambda *a: None)
    shard_dir = Path(shard_dir_for(cfg)).resolve()
    load_prepared(shard_dir)
    copy = None
    if args.no_nanogpt:
        print("note: --no-nanogpt: the nanoGPT rows are skipped")
    elif (shared / "peers" / "nanoGPT").is_dir() and text.is_file():
        copy = setup_nanogpt(shared, work, text, env, shard_dir / "train.bin", shard_dir / "val.bin")
    else:
        print(f"note: {shared}/peers/nanoGPT or {text} is absent: the nanoGPT rows are skipped")
    peak = matmul_peak(args.threads)
    scale = 0.2 if args.quick else 1.0
    print(f"fp32 matmul peak (1024x1024 torch.mm, {args.threads} threads): {peak:.1f} GFLOP/s; load {os.getloadavg()}")

    rounds = []
    for i in range(args.rounds):
        order = ["nanoGPT"] * (copy is not None) + recipes
        rows = []
        for name in order if i % 2 == 0 else order[::-1]:
            print(f"round {i + 1}: {Path(name).name}, load {os.getloadavg()[0]:.1f}", flush=True)
            if name == "nanoGPT":
                rows.append(run_nanogpt(copy, env, shard_dir / "val.bin", round(NANOGPT_STEPS * scale), f"r{i}"))
            else:
                rows.append(run_ours(name, work, env, args.threads, scale, f"r{i}", args.stop))
            print(f"  done, load {os.getloadavg()[0]:.1f}", flush=True)
        rounds.append(sorted(rows, key=lambda r: r.name != "nanoGPT"))
    print_table(rounds, peak, args.target)
    print("\nevaluations (seconds after process start, step, val):")
    for i, rows in enumerate(rounds, 1):
        for r in rows:
            print(f"{i} {r.name}: first line {r.process.lines[0][0]:.1f} s; " + ", ".join(f"{t:.1f} s {s} {v:.4f}" for t, s, v in r.points))
    print(f"load average at the end: {os.getloadavg()}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
