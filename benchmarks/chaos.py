"""Kill tests: SIGKILL `slm train` and `slm prepare` at random moments, then check nothing is lost.

For each trial of `slm train`: start a tiny run that checkpoints every few steps (so many
kills land during checkpoint writes), kill it after a random delay, then check that
  - every checkpoint file on disk loads (weights, state, config, tokenizer),
  - the work lost is at most one checkpoint interval (last logged step - checkpoint step),
  - `slm train --resume` continues from the checkpoint and finishes.
For each trial of `slm prepare`: kill it, check that a shard folder is either incomplete
(no manifest, so never used) or wholly valid, then that a new prepare completes.

    python -P benchmarks/chaos.py --trials 20 --prepare-trials 10
Prints a table; RELIABILITY.md records the results.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors import safe_open

from slmkit.data.shards import Shard, read_manifest
from slmkit.runs import LAST, METRICS, STATE, load_run, load_state

TINY = [
    "--model.n_layer=2",
    "--model.n_head=2",
    "--model.n_embd=32",
    "--model.block_size=32",
    "--train.batch_size=8",
    "--train.max_minutes=0",
    "--train.warmup_steps=5",
    "--train.eval_batches=1",
    "--train.log_interval=1",
    "--sample.max_new_tokens=10",
    "--train.threads=1",  # the machine may be shared: one thread keeps steps quick and regular
]
CHECKPOINT_EVERY = 5


def slm(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "slmkit", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def last_logged_step(run: Path) -> int:
    path = run / METRICS
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step")]
    return int(rows[-1]["step"]) if rows else 0


def train_trial(work: Path, corpus: Path, rng: random.Random) -> tuple[bool, str]:
    run = work / "run"
    shard_dir = work / "shards"
    base = ["train", "--no-progress", "--out", str(run), f"--data.source={corpus}", f"--data.shard_dir={shard_dir}", *TINY]
    proc = slm(base + ["--train.max_steps=2000", f"--train.eval_interval={CHECKPOINT_EVERY}"], cwd=work)
    # start-up time varies with the machine's load, so time the kill from what is on disk: a quarter of
    # the kills come within 2 s of metrics.csv appearing (around the first checkpoint), the rest within
    # 3 s of the first checkpoint (training, checkpointing every CHECKPOINT_EVERY steps)
    marker = run / (METRICS if rng.random() < 0.25 else STATE)
    started = time.perf_counter()
    while proc.poll() is None and not marker.is_file() and time.perf_counter() - started < 300:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 2.0 if marker.name == METRICS else 3.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = last_logged_step(run)
    mid_write = " (killed mid-write: temp file left)" if any(run.glob(".*.tmp")) else ""
    if not (run / STATE).exists():
        return True, f"killed before the first checkpoint (logged step {logged})"
    try:
        state = load_state(run / STATE)
        load_run(run)  # config, tokenizer, best weights
        load_run(run, weights=LAST)
    except Exception as e:  # any failure to load is what this benchmark looks for
        return False, f"a checkpoint did not load: {e}"
    step = int(state["step"])
    # a kill between writing last.safetensors and state.pt leaves last.safetensors one checkpoint ahead:
    # resume must take the weights saved inside state.pt, of the same step as the optimizer state
    weights_step = int(safe_open(str(run / LAST), "pt").metadata()["step"])
    if weights_step != step:
        if "model" not in state:
            return False, f"last.safetensors is from step {weights_step} but state.pt from step {step}"
        mid_write += f" (last.safetensors at step {weights_step}, state.pt at {step}: resumed from state.pt)"
    lost = logged - step
    if lost > CHECKPOINT_EVERY:
        return False, f"lost {lost} steps (> {CHECKPOINT_EVERY}): logged {logged}, checkpoint {step}"
    resumed = subprocess.run(
        [sys.executable, "-m", "slmkit", "train", "--no-progress", "--resume", str(run), f"--train.max_steps={step + 3}"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    if resumed.returncode != 0:
        return False, f"resume failed: {resumed.stderr.strip().splitlines()[-1:]}"
    if any(run.glob(".*.tmp")):
        return False, "resume left the killed run's temp files in the run folder"
    after = int(load_state(run / STATE)["step"])
    if after != step + 3:
        return False, f"resume ended at step {after}, expected {step + 3}"
    return True, f"checkpoint at step {step}, logged {logged}, resumed to {after}{mid_write}"


def prepare_trial(work: Path, corpus: Path, rng: random.Random) -> tuple[bool, str]:
    shard_dir = work / "pshards"
    big = work.parent / "big.txt"  # 8x the KJV, so that kills land while shards are written
    if not big.exists():
        big.write_text(corpus.read_text(encoding="utf-8") * 8, encoding="utf-8")
    args = ["prepare", "--force", f"--data.source={big}", f"--data.shard_dir={shard_dir}"]
    proc = slm(args, cwd=work)
    if rng.random() < 0.5:
        time.sleep(rng.uniform(2.0, 10.0))  # mostly while the corpus is read and tokenized
    else:  # while a shard is being written: kill within 0.3 s of its temp file appearing
        started = time.perf_counter()
        while proc.poll() is None and not any(shard_dir.glob(".*.tmp")) and time.perf_counter() - started < 300:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = read_manifest(shard_dir)
    state = "incomplete (no manifest)"
    if manifest is not None:
        try:
            for split, info in manifest["splits"].items():
                shard = Shard(shard_dir / f"{split}.bin")
                if len(shard) != info["tokens"]:
                    return False, f"{split}.bin has {len(shard)} tokens, manifest says {info['tokens']}"
                np.asarray(shard.tokens[-10:])
        except Exception as e:
            return False, f"a complete-looking shard folder does not load: {e}"
        state = "complete and valid"
    if any(shard_dir.glob(".*.tmp")):
        state += ", temp file left (killed mid-write)"
    again = subprocess.run([sys.executable, "-m", "slmkit", *args[:1], *args[2:]], cwd=work, capture_output=True, text=True)
    if again.returncode != 0 or read_manifest(shard_dir) is None:
        return False, f"prepare after the kill failed: {again.stderr.strip().splitlines()[-1:]}"
    return True, f"after kill: {state}; next prepare completed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--prepare-trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    from slmkit.data.sources import read_kjv

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "kjv.txt"
        corpus.write_text("\n".join(read_kjv()) + "\n", encoding="utf-8")  # 4 MB: prepare takes seconds
        for kind, trial, n in [("train", train_trial, args.trials), ("prepare", prepare_trial, args.prepare_trials)]:
            for i in range(n):
                work = Path(tmp) / f"{kind}-{i}"
                work.mkdir()
                ok, detail = trial(work, corpus, rng)
                results.append((kind, i, ok, detail))
                print(f"{kind:8s} {i:3d} {'ok  ' if ok else 'FAIL'} {detail}", flush=True)
                shutil.rmtree(work, ignore_errors=True)
    print()
    print("| command | trials | failures |")
    print("|---|---|---|")
    for kind in ("train", "prepare"):
        rows = [r for r in results if r[0] == kind]
        print(f"| slm {kind} | {len(rows)} | {sum(not r[2] for r in rows)} |")
    if any(not r[2] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
