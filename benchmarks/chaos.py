"""Kill tests: SIGKILL `slm train`, `prepare`, `export` (hf, gguf), `quantize`, `finetune` and `sweep` at random moments; nothing is lost.

For each trial of `slm train`: start a tiny run that checkpoints every few steps (so many
kills land during checkpoint writes), kill it after a random delay, then check that
  - every checkpoint file on disk loads (weights, state, config, tokenizer),
  - the work lost is at most one checkpoint interval (last logged step - checkpoint step),
  - `slm train --resume` continues from the checkpoint and finishes.
For each trial of `slm prepare` (on a --prepare-mb corpus, so that kills land while shards are
written): kill it, check that a shard folder is either incomplete (no manifest, so never used) or
wholly valid, then that a new prepare completes and removes the killed run's staging folder.
For `slm export` / `slm quantize` (a 13M-parameter model, so kills land mid-write) and `slm finetune`:
kill it at a random moment of its usual duration; every file present must load (a complete-looking
export, with config.json, loads in transformers), and rerunning it (finetune: resuming, or starting
again with --overwrite before its first checkpoint) succeeds and leaves no temp file. `slm export
--format gguf`: a GGUF file present reads whole with gguf-py. `slm sweep` (3 tiny runs): every file
present loads, and the same command again finishes all three (finished runs skipped, a killed one resumed).

    python -P benchmarks/chaos.py --trials 20 --prepare-trials 10
    python -P benchmarks/chaos.py --trials 0 --prepare-trials 4 --export-trials 6 --quantize-trials 6 --finetune-trials 6
    python -P benchmarks/chaos.py --trials 0 --prepare-trials 0 --gguf-trials 6 --sweep-trials 6
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
from typing import Optional

import numpy as np
from safetensors import safe_open

from slmkit.data.shards import Shard, read_manifest
from slmkit.runs import BEST, INT8, LAST, METRICS, STATE, load_run, load_state

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


def big_corpus(work_root: Path, corpus: Path, megabytes: int) -> Path:
    """The KJV repeated to at least `megabytes` MB (written once), so kills land while shards are written."""
    big = work_root / f"kjv-{megabytes}mb.txt"
    if not big.exists():
        text = corpus.read_text(encoding="utf-8")
        copies = -(-megabytes * 1_000_000 // len(text.encode("utf-8")))
        started = time.perf_counter()
        with open(big, "w", encoding="utf-8") as f:
            for _ in range(copies):
                f.write(text)
        print(f"wrote {big.stat().st_size / 1e6:.0f} MB ({copies} x KJV) in {time.perf_counter() - started:.1f}s", flush=True)
    return big


def shard_temp_files(shard_dir: Path) -> list[Path]:
    """The temp files of shards being written: inside prepare's hidden staging folder beside `shard_dir`."""
    return list(shard_dir.parent.glob(f".{shard_dir.name}.*.tmp/.*.tmp"))


PREPARE_SECONDS: dict[str, float] = {}  # a whole prepare's duration ("all") and its shard writing's ("writing")


def prepare_trial(work: Path, corpus: Path, rng: random.Random, megabytes: int) -> tuple[bool, str]:
    shard_dir = work / "pshards"
    big = big_corpus(work.parent, corpus, megabytes)
    args = ["prepare", "--force", "--recipe", "kjv-char-gpt2", f"--data.source={big}", f"--data.shard_dir={shard_dir}"]
    if not PREPARE_SECONDS:  # one whole prepare first: how long it takes, and when its shards start being written
        proc, started = slm(args, cwd=work), time.perf_counter()
        while proc.poll() is None and not shard_temp_files(shard_dir):
            time.sleep(0.01)
        writing_from = time.perf_counter() - started
        proc.wait()
        PREPARE_SECONDS.update(all=time.perf_counter() - started, writing=time.perf_counter() - started - writing_from)
        print(f"a whole prepare of {big.stat().st_size / 1e6:.0f} MB: {PREPARE_SECONDS['all']:.0f}s, its shards written "
              f"in the last {PREPARE_SECONDS['writing']:.0f}s", flush=True)
        shutil.rmtree(shard_dir)
    proc = slm(args, cwd=work)
    started = time.perf_counter()
    if rng.random() < 0.3:  # anywhere: mostly while the corpus is read, the tokenizer fitted
        time.sleep(rng.uniform(1.0, PREPARE_SECONDS["all"]))
    else:  # while the shards are written: from their temp files' appearance to about the end of the run
        while proc.poll() is None and not shard_temp_files(shard_dir) and time.perf_counter() - started < 900:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.9 * PREPARE_SECONDS["writing"]))
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_mid_write = bool(shard_temp_files(shard_dir))
    manifest = read_manifest(shard_dir)
    state = "incomplete (no manifest)" if shard_dir.exists() else "absent (nothing renamed into place)"
    if manifest is not None:
        try:
            for split, info in manifest["splits"].items():
                shard = Shard(shard_dir / f"{split}.bin")
                if len(shard) != info["tokens"]:
                    return False, f"{split}.bin has {len(shard)} tokens, manifest says {info['tokens']}"
                np.asarray(shard.tokens[-10:])
        except Exception as e:
            return False, f"a complete-looking shard folder does not load: {e}"
        state = "complete and valid" + (" (finished before the kill)" if finished_first else "")
    if killed_mid_write:
        state += ", killed while a shard was written (staging temp file left)"
    rerun = time.perf_counter()
    again = subprocess.run([sys.executable, "-m", "slmkit", *args[:1], *args[2:]], cwd=work, capture_output=True, text=True)
    if again.returncode != 0 or read_manifest(shard_dir) is None:
        return False, f"prepare after the kill failed: {again.stderr.strip().splitlines()[-1:]}"
    if list(shard_dir.parent.glob(f".{shard_dir.name}.*.tmp")):
        return False, "the next prepare left the killed run's staging folder"
    took = time.perf_counter() - rerun
    return True, f"after kill at {time.perf_counter() - started - took:.0f}s: {state}; next prepare completed in {took:.0f}s"


# ---------------------------------------------------------------- export, quantize, finetune

MEDIUM = [  # big enough (13M parameters, 50 MB of weights) that kills land while files are written
    "--model.n_layer=4", "--model.n_head=8", "--model.n_embd=512", "--model.block_size=32",
    "--train.batch_size=4", "--train.max_steps=2", "--train.max_minutes=0", "--train.warmup_steps=1",
    "--train.eval_interval=2", "--train.eval_batches=1", "--sample.max_new_tokens=5",
]  # fmt: skip


MEDIUM_RUN: list[Path] = []  # --medium-run: a trained run to reuse (training one takes long on a busy machine)


def medium_run(root: Path, corpus: Path) -> Path:
    """A trained run of the MEDIUM model (made once)."""
    if MEDIUM_RUN:
        return MEDIUM_RUN[0]
    run = root / "medium-run"
    if not (run / BEST).is_file():
        small = root / "kjv-200kb.txt"  # a small val split: the final full-val report of a big model is slow
        small.write_text(corpus.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "slmkit", "train", "--no-progress", "--out", str(run), f"--data.source={small}",
             f"--data.shard_dir={root / 'medium-shards'}", *MEDIUM],
            cwd=root, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    return run


def kill_during(args: list[str], work: Path, rng: random.Random, seconds: float, late: float = 0.0) -> float:
    """Start `slm args`, SIGKILL it after a random time in [0.5, seconds] (with `late`, in the last
    `late` share of it: the writing of a short export comes after seconds of start-up); returns when."""
    proc = slm(args, cwd=work)
    delay = rng.uniform(max(0.5, seconds * (1 - late)) if late else 0.5, seconds)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return delay


def timed(args: list[str], work: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "slmkit", *args], cwd=work, capture_output=True, text=True)
    return result, time.perf_counter() - started


def loads_all(folder: Path) -> Optional[str]:
    """None if every file in `folder` loads (safetensors, JSON, YAML, state.pt), else what did not."""
    import json

    import yaml

    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.endswith(".tmp") or any(p.name.endswith(".tmp") for p in path.parents):
            continue
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as f:
                    for key in f.keys():
                        f.get_tensor(key)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".yaml":
                yaml.safe_load(path.read_text(encoding="utf-8"))
            elif path.name == STATE:
                load_state(path)
        except Exception as e:  # any failure to load is what this benchmark looks for
            return f"{path.name} does not load: {str(e).splitlines()[0][:120]}"
    return None


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in list(folder.glob(".*.tmp")) + list(folder.parent.glob(f".{folder.name}.*.tmp")))


DURATION: dict[str, float] = {}
LATE = 0.4  # exports and quantize: kill in the last 40% of the usual duration, where the files are written


def export_trial(work: Path, corpus: Path, rng: random.Random) -> tuple[bool, str]:
    run = medium_run(work.parent, corpus)
    out = work / "hf"
    args = ["export", "--run", str(run), "--out", str(out)]
    if "export" not in DURATION:
        DURATION["export"] = timed(args, work)[1]
        shutil.rmtree(out)
    delay = kill_during(args, work, rng, DURATION["export"], late=LATE)
    left = hidden_leftovers(out) if out.exists() else []
    complete = (out / "config.json").is_file()
    if complete:
        problem = loads_all(out)
        if problem:
            return False, f"a complete-looking export (config.json present) is not whole: {problem}"
        try:
            import transformers

            transformers.AutoModelForCausalLM.from_pretrained(out)
        except ImportError:
            pass
        except Exception as e:
            return False, f"transformers cannot load the complete-looking export: {str(e).splitlines()[0][:120]}"
    result, _ = timed(args, work)
    if result.returncode != 0 or not (out / "config.json").is_file():
        return False, f"export after the kill failed: {result.stderr.strip().splitlines()[-1:]}"
    if hidden_leftovers(out):
        return False, f"the next export left {hidden_leftovers(out)}"
    state = "complete and loads" if complete else "incomplete (no config.json)" if out.exists() else "absent"
    return True, f"killed at {delay:.1f}s of {DURATION['export']:.1f}s: {state}{', staging left' if left else ''}; next export completed"


def gguf_trial(work: Path, corpus: Path, rng: random.Random) -> tuple[bool, str]:
    """Kill `slm export --format gguf`: a GGUF file present must read whole (gguf-py), the rerun completes."""
    from gguf import GGUFReader

    run = medium_run(work.parent, corpus)
    out = work / "model.gguf"
    args = ["export", "--run", str(run), "--format", "gguf", "--out", str(out)]
    if "gguf" not in DURATION:
        DURATION["gguf"] = timed(args, work)[1]
        out.unlink()
    delay = kill_during(args, work, rng, DURATION["gguf"], late=LATE)
    left = sorted(p.name for p in work.glob(".*.tmp"))
    present = out.is_file()
    if present:
        try:
            reader = GGUFReader(out)
            for tensor in reader.tensors:
                tensor.data.sum()  # every tensor's bytes are there
        except Exception as e:
            return False, f"{out.name} is present but does not read: {str(e).splitlines()[0][:120]}"
    result, _ = timed(args, work)
    if result.returncode != 0 or not out.is_file():
        return False, f"export after the kill failed: {result.stderr.strip().splitlines()[-1:]}"
    if sorted(p.name for p in work.glob(".*.tmp")):
        return False, f"the next export left {sorted(p.name for p in work.glob('.*.tmp'))}"
    state = "complete and reads" if present else "absent"
    return True, f"killed at {delay:.1f}s of {DURATION['gguf']:.1f}s: {state}{', temp file left' if left else ''}; next export completed"


SWEEP_GRID = "train.lr=1e-3,2e-3,3e-3"


def sweep_trial(work: Path, corpus: Path, rng: random.Random) -> tuple[bool, str]:
    """Kill `slm sweep` (3 runs): every file present loads, the same command again finishes every run."""
    out = work / "sweep"
    args = ["sweep", "--recipe", "kjv-char-gpt2", "--grid", SWEEP_GRID, "--out", str(out), f"--data.source={corpus}",
            f"--data.shard_dir={work.parent / 'sweep-shards'}", *TINY, "--train.max_steps=30",
            f"--train.eval_interval={CHECKPOINT_EVERY}"]  # fmt: skip
    if "sweep" not in DURATION:
        result, DURATION["sweep"] = timed(args, work)
        assert result.returncode == 0, result.stderr
        shutil.rmtree(out)
    delay = kill_during(args, work, rng, DURATION["sweep"])
    finished = sorted(p.parent.name for p in out.glob(f"*/{BEST}")) if out.exists() else []
    problem = loads_all(out) if out.exists() else None
    if problem:
        return False, f"after the kill: {problem}"
    result, _ = timed(args, work)
    if result.returncode != 0:
        return False, f"the sweep after the kill failed: {result.stderr.strip().splitlines()[-1:]}"
    runs = sorted(p.parent.name for p in out.glob(f"*/{BEST}"))
    if len(runs) != len(SWEEP_GRID.split(",")) or loads_all(out):
        return False, f"the rerun left {len(runs)} finished runs: {loads_all(out) or runs}"
    return True, f"killed at {delay:.1f}s of {DURATION['sweep']:.1f}s with {len(finished)} runs finished; the rerun finished all 3"


def quantize_trial(work: Path, corpus: Path, rng: random.Random) -> tuple[bool, str]:
    run = work / "run"
    shutil.copytree(medium_run(work.parent, corpus), run)
    args = ["quantize", "--run", str(run)]
    if "quantize" not in DURATION:
        DURATION["quantize"] = timed(args, work)[1]
        (run / INT8).unlink()
    delay = kill_during(args, work, rng, DURATION["quantize"], late=LATE)
    left = hidden_leftovers(run)
    present = (run / INT8).is_file()
    if present:
        try:
            load_run(run, int8=True)
        except Exception as e:
            return False, f"{INT8} is present but does not load: {e}"
    result, _ = timed(args, work)
    if result.returncode != 0:
        return False, f"quantize after the kill failed: {result.stderr.strip().splitlines()[-1:]}"
    load_run(run, int8=True)
    state = "int8 file complete and loads" if present else "no int8 file"
    return True, f"killed at {delay:.1f}s of {DURATION['quantize']:.1f}s: {state}{', temp file left' if left else ''}; next quantize completed"


def finetune_trial(work: Path, corpus: Path, rng: random.Random) -> tuple[bool, str]:
    source = work.parent / "train-source"  # a small trained run to fine-tune (made once)
    if not (source / BEST).is_file():
        result = subprocess.run(
            [sys.executable, "-m", "slmkit", "train", "--no-progress", "--out", str(source), f"--data.source={corpus}",
             f"--data.shard_dir={work.parent / 'ft-shards'}", *TINY, "--train.max_steps=10", "--train.eval_interval=5"],
            cwd=work.parent, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    out = work / "ft"
    args = ["finetune", "--no-progress", "--from", str(source), "--out", str(out), f"--data.source={corpus}",
            f"--data.shard_dir={work / 'shards'}", "--train.max_steps=60", f"--train.eval_interval={CHECKPOINT_EVERY}",
            "--train.threads=1"]  # fmt: skip
    if "finetune" not in DURATION:
        result, DURATION["finetune"] = timed(args, work)
        assert result.returncode == 0, result.stderr
        shutil.rmtree(out)
        shutil.rmtree(work / "shards")
    delay = kill_during(args, work, rng, DURATION["finetune"])
    left = hidden_leftovers(out) if out.exists() else []
    problem = loads_all(out) if out.exists() else None
    if problem:
        return False, f"after the kill: {problem}"
    if (out / BEST).is_file():
        try:
            load_run(out)
        except Exception as e:
            return False, f"the fine-tuned run's best model does not load: {e}"
    if (out / STATE).is_file():
        step = int(load_state(out / STATE)["step"])
        again = ["train", "--no-progress", "--resume", str(out), f"--train.max_steps={step + 3}"]
        what = f"resumed from step {step}"
    else:  # killed before its first checkpoint: start it again over what it left
        again, what = [*args, "--overwrite"], "no checkpoint yet, run again with --overwrite"
    result, _ = timed(again, work)
    if result.returncode != 0:
        return False, f"{what} failed: {result.stderr.strip().splitlines()[-1:]}"
    if hidden_leftovers(out):
        return False, f"{what} left {hidden_leftovers(out)}"
    return True, f"killed at {delay:.1f}s of {DURATION['finetune']:.1f}s{', mid-write' if left else ''}; {what}: completed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--prepare-trials", type=int, default=10)
    parser.add_argument("--prepare-mb", type=int, default=200, help="size of the corpus prepare is killed on")
    parser.add_argument("--export-trials", type=int, default=0)
    parser.add_argument("--quantize-trials", type=int, default=0)
    parser.add_argument("--finetune-trials", type=int, default=0)
    parser.add_argument("--gguf-trials", type=int, default=0)
    parser.add_argument("--sweep-trials", type=int, default=0)
    parser.add_argument("--medium-run", type=Path, default=None, help="reuse this trained run for export/quantize")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    MEDIUM_RUN.extend([args.medium_run] if args.medium_run else [])
    rng = random.Random(args.seed)
    from slmkit.data.sources.kjv import read_kjv

    trials = [
        ("train", train_trial, args.trials),
        ("prepare", lambda w, c, r: prepare_trial(w, c, r, args.prepare_mb), args.prepare_trials),
        ("export", export_trial, args.export_trials),
        ("quantize", quantize_trial, args.quantize_trials),
        ("finetune", finetune_trial, args.finetune_trials),
        ("export gguf", gguf_trial, args.gguf_trials),
        ("sweep", sweep_trial, args.sweep_trials),
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "kjv.txt"
        corpus.write_text("\n".join(read_kjv()) + "\n", encoding="utf-8")  # 4 MB: prepare takes seconds
        for kind, trial, n in trials:
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
    for kind, _, n in trials:
        rows = [r for r in results if r[0] == kind]
        if rows:
            print(f"| slm {kind} | {len(rows)} | {sum(not r[2] for r in rows)} |")
    if any(not r[2] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
