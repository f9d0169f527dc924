"""slm sweep: a 2 x 2 grid x 2 seeds of tiny runs; the table equals the runs' own metrics; a sweep killed
during its third run and started again trains nothing twice and ends with the same table."""

from __future__ import annotations

import csv
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY_TEXT, tiny_settings
from slmkit.config import load_recipe
from slmkit.errors import CheckpointError, ConfigError, TrainingError
from slmkit.evaluate import evaluate_run
from slmkit.model import GPT
from slmkit.runs import CONFIG, LOG, METRICS, STATE, SWEEP
from slmkit.runtable import format_table, run_table
from slmkit.sweep import Range, parse_grid, sweep, sweep_runs

GRID = ["train.lr=1e-3,3e-3", "model.n_layer=1,2"]
NAMES = [
    f"lr={lr},n_layer={n},seed={seed}" for lr in ("1e-3", "3e-3") for n in (1, 2) for seed in (1337, 1338)
]  # the order the sweep trains them
# columns that do not depend on the clock: an interrupted sweep must match an uninterrupted one in all of them
EXACT = ("name", "overrides", "parameters", "steps", "tokens", "best_val_loss", "bits_per_byte", "stopped")


def settings(root: Path) -> dict:
    corpus = root / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    # 30 steps with a checkpoint every 10: a run killed after its first one has steps left to resume
    return {**tiny_settings(corpus, root / "shards"), "train.max_steps": 30, "sample.max_new_tokens": 5}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The uninterrupted sweep: 2 x 2 grid x 2 seeds of tiny runs, trained in this process."""
    root = tmp_path_factory.mktemp("sweep")
    lines: list[str] = []
    outcomes = sweep("kjv-char-gpt2", GRID, seeds=2, overrides=settings(root), out=root / "out", echo=lines.append)
    return root, outcomes, lines


def test_a_run_folder_per_point_and_seed_named_after_its_values(swept):
    root, outcomes, lines = swept
    out = root / "out"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(NAMES + [SWEEP])
    assert [o.name for o in outcomes] == NAMES and {o.how for o in outcomes} == {"trained"}
    assert len(lines) == 1 + len(NAMES) and lines[3].startswith(f"[3/8] {NAMES[2]}: trained, 30 steps")
    cfg = yaml.safe_load((out / NAMES[5] / CONFIG).read_text())  # lr=3e-3,n_layer=1,seed=1338
    assert (cfg["train"]["lr"], cfg["model"]["n_layer"], cfg["train"]["seed"]) == (3e-3, 1, 1338)
    assert cfg["train"]["max_steps"] == 30  # the fixed overrides too


def _metrics(run: Path) -> list[dict]:
    with open(run / METRICS, newline="") as f:
        return list(csv.DictReader(f))


def test_the_table_holds_each_runs_own_numbers(swept):
    root, _, _ = swept
    table = run_table([root / "out"], per_run=True)
    assert [row["name"] for row in table.rows] == NAMES
    for row in table.rows:
        run = root / "out" / row["name"]
        rows = _metrics(run)
        cfg = load_recipe(str(run / CONFIG))
        assert row["best_val_loss"] == min(float(r["val_loss"]) for r in rows if r["val_loss"])
        assert row["steps"] == 30 and row["tokens"] == int(rows[-1]["tokens"]) == 30 * 8 * 32
        assert row["wall_time"] == float(rows[-1]["elapsed"])
        assert row["tokens_per_second"] == statistics.median(float(r["tokens_per_second"]) for r in rows)
        assert row["parameters"] == GPT(cfg.model).num_parameters()
        # the final report's bits/byte, as `slm eval` computes it for the best weights (4 decimals in train.log)
        assert row["bits_per_byte"] == pytest.approx(evaluate_run(run).metrics["bits_per_byte"], abs=1e-4)
        assert row["stopped"] == "budget"
        assert row["overrides"] == f"model.n_layer={cfg.model.n_layer} train.lr={cfg.train.lr:.4g} train.seed={cfg.train.seed}"


def test_the_table_per_point_is_the_mean_and_std_over_its_seeds(swept):
    root, _, _ = swept
    runs = {row["name"]: row for row in run_table([root / "out"], per_run=True).rows}
    points = run_table([root / "out"]).rows
    assert [p["name"] for p in points] == ["lr=1e-3,n_layer=1", "lr=1e-3,n_layer=2", "lr=3e-3,n_layer=1", "lr=3e-3,n_layer=2"]
    for point in points:
        seeds = [runs[f"{point['name']},seed={s}"] for s in (1337, 1338)]
        assert point["seeds"] == 2 and point["steps"] == 30
        for column in ("best_val_loss", "bits_per_byte", "wall_time"):
            values = [s[column] for s in seeds]
            assert point[column] == (statistics.mean(values), statistics.stdev(values))
    text = format_table(run_table([root / "out"], sort="best_val_loss"))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["run", "overrides", "seeds", "params"] and len(lines) == 5
    best = min(points, key=lambda p: p["best_val_loss"][0])
    assert lines[1].startswith(best["name"]) and f"{best['best_val_loss'][0]:.4f} ± " in lines[1]
    assert format_table(run_table([root / "out"]), "markdown").splitlines()[1] == "|" + "|".join(["---"] * 11) + "|"


def _digests(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


def test_a_killed_sweep_resumes_trains_nothing_twice_and_ends_with_the_same_table(swept, tmp_path):
    root, _, _ = swept
    out = tmp_path / "out"
    overrides = settings(tmp_path)
    argv = [sys.executable, "-m", "slmkit", "sweep", "--recipe", "kjv-char-gpt2", "--seeds", "2", "--out", str(out)]
    argv += [f"--grid={g}" for g in GRID] + [f"--{k}={v}" for k, v in overrides.items()]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    third = out / NAMES[2]
    deadline = time.monotonic() + 240
    while not (third / STATE).exists():  # the third run has written its first checkpoint (step 10 of 30)
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert "done:" not in (third / LOG).read_text() and not (out / NAMES[3]).exists()
    before = {name: _digests(out / name) for name in NAMES[:2]}

    lines: list[str] = []
    outcomes = sweep("kjv-char-gpt2", GRID, seeds=2, overrides=overrides, out=out, echo=lines.append)
    assert [o.how for o in outcomes] == ["done earlier"] * 2 + ["resumed"] + ["trained"] * 5
    assert {name: _digests(out / name) for name in NAMES[:2]} == before  # the finished runs were not touched
    log = (third / LOG).read_text()
    assert log.count("training ") == 1 and log.count("resuming ") == 1 and log.count("done:") == 1
    assert lines[3].startswith(f"[3/8] {NAMES[2]}: resumed, 30 steps")

    again = [row for row in run_table([out], per_run=True).rows]
    expected = [row for row in run_table([root / "out"], per_run=True).rows]
    assert [{c: row[c] for c in EXACT} for row in again] == [{c: row[c] for c in EXACT} for row in expected]
    assert all(math.isfinite(row["best_val_loss"]) for row in again)
    # and once more: everything is done, nothing trains
    assert [o.how for o in sweep("kjv-char-gpt2", GRID, seeds=2, overrides=overrides, out=out, echo=lines.append)] == [
        "done earlier"
    ] * 8


def test_parallel_runs_give_the_same_numbers(swept, tmp_path):
    """Two worker processes, one thread each (this machine's cores split between them), as sequential runs do."""
    root, _, _ = swept
    lines: list[str] = []
    grid = ["train.lr=1e-3,3e-3", "model.n_layer=2"]
    outcomes = sweep("kjv-char-gpt2", grid, overrides={**settings(tmp_path), "train.threads": 2}, out=tmp_path / "out",
                     parallel=2, echo=lines.append)  # fmt: skip
    assert sorted(o.name for o in outcomes) == ["lr=1e-3,n_layer=2,seed=1337", "lr=3e-3,n_layer=2,seed=1337"]
    assert lines[0].endswith("2 at a time, 1 threads each")
    parallel = {row["name"]: row for row in run_table([tmp_path / "out"], per_run=True).rows}
    for name, row in parallel.items():
        assert yaml.safe_load((tmp_path / "out" / name / CONFIG).read_text())["train"]["threads"] == 1
        alone = run_table([root / "out" / name]).rows[0]
        assert (row["best_val_loss"], row["bits_per_byte"], row["steps"]) == (
            alone["best_val_loss"], alone["bits_per_byte"], alone["steps"]
        )  # fmt: skip


def test_grid_values_are_checked_before_anything_trains(tmp_path):
    base = load_recipe("kjv-char-gpt2")
    with pytest.raises(ConfigError, match="model.n_layer=0 must be a positive integer"):
        sweep_runs(base, dict([parse_grid("model.n_layer=2,0")]))
    with pytest.raises(ConfigError, match="should look like KEY=V1,V2"):
        parse_grid("train.lr")
    with pytest.raises(ConfigError, match="add --samples K"):
        sweep_runs(base, dict([parse_grid("train.lr=1e-4:1e-2")]))
    with pytest.raises(ConfigError, match="not both"):
        sweep_runs(base, dict([parse_grid("train.seed=1,2")]), seeds=2)
    assert parse_grid("data.source=hf:wikitext") == ("data.source", ["hf:wikitext"])  # a colon, but not a range
    assert not (tmp_path / "out").exists()


def test_random_search_draws_the_same_points_each_time():
    base = load_recipe("kjv-char-gpt2")
    grid = dict(parse_grid(g) for g in ["train.lr=log:1e-4:1e-2", "model.n_layer=1:4", "train.schedule=cosine,constant"])
    assert grid["train.lr"] == Range(1e-4, 1e-2, log=True)
    runs = sweep_runs(base, grid, seeds=2, samples=5)
    assert [r.overrides for r in runs] == [r.overrides for r in sweep_runs(base, grid, seeds=2, samples=5)]
    assert len(runs) == 10 and len({r.name for r in runs}) == 10
    for run in runs:
        assert 1e-4 <= run.overrides["train.lr"] <= 1e-2 and run.overrides["model.n_layer"] in (1, 2, 3, 4)
        assert run.overrides["train.schedule"] in ("cosine", "constant")
    few = dict(parse_grid(g) for g in ["train.lr=1e-3,3e-3", "model.n_layer=1,2"])
    assert len({r.name for r in sweep_runs(base, few, samples=4)}) == 4  # every point of the grid, in random order
    with pytest.raises(ConfigError, match="the grid holds only 4 distinct points"):
        sweep_runs(base, few, samples=5)


def test_a_sweep_file_gives_the_grid(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("recipe: kjv-char-gpt2\nseeds: 2\ngrid:\n  train.lr: [1.0e-3, 3.0e-3]\n  model.dropout: {low: 0, high: 0.2}\n")
    with pytest.raises(ConfigError, match="add --samples K"):
        sweep(file=path, out=tmp_path / "out")
    path.write_text("recipe: kjv-char-gpt2\ngrid:\n  train.lr: [1.0e-3]\n  train.warmup_steps: [-1]\n")
    with pytest.raises(ConfigError, match="train.warmup_steps=-1 must be >= 0"):
        sweep(file=path, out=tmp_path / "out")
    path.write_text("recipe: kjv-char-gpt2\ngird: {}\n")
    with pytest.raises(ConfigError, match="should be a mapping of recipe, seeds, samples, overrides, grid"):
        sweep(file=path, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_holding_something_else_is_refused_untouched(swept, tmp_path):
    root, _, _ = swept
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="is not empty and holds no sweep; give a new --out, or add --overwrite"):
        sweep("kjv-char-gpt2", GRID, overrides=settings(root), out=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    manifest = (root / "out" / SWEEP).read_bytes()
    with pytest.raises(CheckpointError, match="holds another sweep"):
        sweep("kjv-char-gpt2", ["train.lr=1e-2"], overrides=settings(root), out=root / "out")
    assert (root / "out" / SWEEP).read_bytes() == manifest


def test_a_diverged_run_does_not_stop_the_others(tmp_path):
    lines: list[str] = []
    overrides = {**settings(tmp_path), "train.max_steps": 10, "train.max_nonfinite_steps": 1, "train.grad_clip": 0}
    with pytest.raises(TrainingError, match=r"1 of 2 runs stopped \(lr=1e9,seed=1337\): see their train.log"):
        sweep("kjv-char-gpt2", ["train.lr=1e9,1e-3"], overrides=overrides, out=tmp_path / "out", echo=lines.append)
    assert lines[1].startswith("[1/2] lr=1e9,seed=1337: stopped: 1 steps in a row had a NaN/inf loss")
    assert lines[2].startswith("[2/2] lr=1e-3,seed=1337: trained, 10 steps")
