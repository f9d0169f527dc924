"""`slm sweep`: train a recipe over a grid (or random samples) of overrides, with several seeds each.

    DIR/
      sweep.yaml                          SWEEP: the recipe, the fixed overrides, every run's overrides
      lr=0.001,n_layer=2,seed=1337/       one run folder per point and seed, named after its values
      .locks/                             a lock per run while a process trains it

Runs go one after another in this process, or in `parallel` worker processes that share the CPU
threads. Run again, the same sweep picks up where it stopped: finished runs (their train.log ends
with the final report) are skipped, a killed one is resumed from its state.pt, one killed before
its first checkpoint starts over; a run another process is training is waited for, never trained
twice at once.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from .atomic import atomic_write_text
from .config import RunConfig, apply_override, load_recipe
from .errors import CheckpointError, ConfigError, SlmError, TrainingError
from .progress import Bar
from .runs import STATE, SWEEP, resume_config
from .runtable import SEED, finished, format_value, read_run, short_key

LOCKS = ".locks"


@dataclass
class Range:
    """A numeric range that random search samples from (uniformly, or log-uniformly)."""

    low: float
    high: float
    log: bool = False


@dataclass
class SweepRun:
    """One run of a sweep: its folder name and the overrides it adds to the recipe."""

    name: str
    overrides: dict[str, Any]


def parse_grid(text: str) -> tuple[str, list[Any] | Range]:
    """`--grid KEY=V1,V2,...` -> (KEY, values); `KEY=LO:HI` or `KEY=log:LO:HI` -> (KEY, a Range)."""
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise ConfigError(f"--grid {text!r} should look like KEY=V1,V2,... (e.g. --grid train.lr=1e-3,3e-3)")
    key = key.removeprefix("--")
    parts = values.split(":")
    log = parts[0] == "log"
    bounds = parts[1:] if log else parts
    numbers = [_number(b) for b in bounds]
    if len(bounds) == 2 and None not in numbers:
        return key, _range(key, numbers[0], numbers[1], log)
    return key, [yaml.safe_load(v) if v else "" for v in values.split(",")]


def _number(text: str) -> Optional[float]:
    """`text` as an int or a float (1e-3 too, which YAML reads as a string), else None."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def _range(key: str, low: float, high: float, log: bool) -> Range:
    if not low < high or (log and low <= 0):
        raise ConfigError(f"--grid {key}: the range {low}:{high} needs low < high{' and low > 0 (log)' if log else ''}")
    return Range(low, high, log)


def load_sweep_file(path: Path | str) -> dict[str, Any]:
    """A sweep file: {recipe, seeds, samples, overrides: {KEY: V}, grid: {KEY: [V, ...] | {low, high, log}}}."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigError(f"sweep file {path} is not valid YAML; fix the file") from None
    known = ("recipe", "seeds", "samples", "overrides", "grid")
    if not isinstance(raw, dict) or set(raw) - set(known):
        raise ConfigError(f"sweep file {path} should be a mapping of {', '.join(known)}")
    grid = {}
    for key, values in (raw.get("grid") or {}).items():
        if isinstance(values, dict):
            if set(values) - {"low", "high", "log"} or not {"low", "high"} <= set(values):
                raise ConfigError(f"sweep file {path}: grid {key} should be a list of values or {{low, high, log}}")
            grid[key] = _range(key, values["low"], values["high"], bool(values.get("log", False)))
        else:
            grid[key] = values if isinstance(values, list) else [values]
    return {**raw, "grid": grid, "overrides": dict(raw.get("overrides") or {})}


def sweep_runs(
    base: RunConfig, grid: dict[str, list[Any] | Range], seeds: int = 1, samples: int = 0
) -> list[SweepRun]:
    """Every run of the sweep, each checked against the recipe: the grid's points (or `samples` random
    ones, drawn with train.seed so the same command draws the same points), each with `seeds` seeds."""
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds} must be >= 1 (runs per point)")
    if samples < 0:
        raise ConfigError(f"--samples={samples} must be >= 0 (0 = the whole grid)")
    if SEED in grid and seeds > 1:
        raise ConfigError(f"give the seeds either as --seeds {seeds} or as --grid {SEED}=..., not both")
    ranges = [key for key, values in grid.items() if isinstance(values, Range)]
    if ranges and not samples:
        raise ConfigError(f"--grid {ranges[0]} is a range: add --samples K to draw K random points from it")
    keys = list(grid)
    if samples:
        points = _samples(base, grid, samples)
    else:
        points = [dict(zip(keys, values)) for values in itertools.product(*grid.values())]
    runs, names = [], set()
    for point in points:
        for i in range(seeds):
            overrides = {**point, **({} if SEED in grid else {SEED: base.train.seed + i})}
            _check(base, overrides)
            name = ",".join(f"{short_key(k, keys)}={_name_value(v)}" for k, v in point.items() if k != SEED)
            name = ",".join(filter(None, [name, f"seed={overrides[SEED]}"]))
            if name in names:
                raise ConfigError(f"two runs of the sweep would both be named {name!r}; give distinct values")
            names.add(name)
            runs.append(SweepRun(name, overrides))
    return runs


def _samples(base: RunConfig, grid: dict[str, list[Any] | Range], samples: int) -> list[dict[str, Any]]:
    """`samples` distinct random points of the grid, drawn with the recipe's train.seed."""
    rng = random.Random(base.train.seed)
    points: list[dict[str, Any]] = []
    for _ in range(100 * samples):
        point = {key: _draw(rng, base, key, values) for key, values in grid.items()}
        if point not in points:
            points.append(point)
        if len(points) == samples:
            return points
    raise ConfigError(f"--samples={samples}: the grid holds only {len(points)} distinct points; ask for fewer")


def _draw(rng: random.Random, base: RunConfig, key: str, values: list[Any] | Range) -> Any:
    """A random value for `key`: one of its values, or a number in its range (an integer for int keys)."""
    if not isinstance(values, Range):
        return rng.choice(values)
    section, _, name = key.partition(".")
    integer = isinstance(getattr(getattr(base, section, None), name, None), int)
    if values.log:
        x = math.exp(rng.uniform(math.log(values.low), math.log(values.high)))
    else:
        x = rng.uniform(values.low, values.high)
    return round(x) if integer else float(f"{x:.4g}")  # 4 digits: the value the run's name shows


def _check(base: RunConfig, overrides: dict[str, Any]) -> None:
    """Apply `overrides` to a copy of the recipe and validate it: a bad value stops before anything trains."""
    cfg = copy.deepcopy(base)
    for key, value in overrides.items():
        apply_override(cfg, key, value)
    cfg.validate()


def _name_value(value: Any) -> str:
    """A value as a folder name shows it: characters other than letters, digits and . + - become _."""
    return "".join(c if c.isalnum() or c in ".+-" else "_" for c in format_value(value))


def run_config(recipe: Optional[str], fixed: dict[str, Any], run: SweepRun, threads: int = 0) -> RunConfig:
    """The recipe with the sweep's fixed overrides, then the run's own (and its CPU threads, if set)."""
    return load_recipe(recipe, {**fixed, **run.overrides, **({"train.threads": threads} if threads else {})})


@dataclass
class RunOutcome:
    """What happened to one run of the sweep."""

    name: str
    how: str  # trained | resumed | done earlier
    steps: int
    best_val_loss: float
    seconds: float


def train_run(recipe: Optional[str], fixed: dict[str, Any], run: SweepRun, out: Path, threads: int,
              overwrite: bool) -> RunOutcome | str:  # fmt: skip
    """Train one run of the sweep in this process (its output goes to its train.log only), holding its lock.

    A run that stops with a TrainingError (it diverged) returns the message naming it: the others go on.
    """
    run_dir = out / run.name
    start = time.perf_counter()
    try:
        with _lock(out / LOCKS / f"{run.name}.lock"), contextlib.redirect_stdout(io.StringIO()):
            how = _train_or_skip(recipe, fixed, run, run_dir, threads, overwrite)
    except TrainingError as e:
        return f"{run.name}: stopped: {e}"
    except SlmError as e:
        raise type(e)(f"run {run.name}: {e}") from None
    row = read_run(run_dir)
    return RunOutcome(run.name, how, row.steps, row.best_val_loss, time.perf_counter() - start)


def _train_or_skip(recipe: Optional[str], fixed: dict[str, Any], run: SweepRun, run_dir: Path, threads: int,
                   overwrite: bool) -> str:  # fmt: skip
    """Skip a finished run, resume one with a checkpoint, (re)start any other; says which it did."""
    from .train import train

    if finished(run_dir) and not overwrite:
        return "done earlier"
    if (run_dir / STATE).is_file() and not overwrite:
        train(resume_config(run_dir, {"train.threads": threads} if threads else {}), resume=run_dir, progress_bar=False)
        return "resumed"
    # new, replaced, or killed before its first checkpoint: (re)start it
    train(run_config(recipe, fixed, run, threads), out=run_dir, progress_bar=False, overwrite=overwrite or run_dir.exists())
    return "trained"


@contextlib.contextmanager
def _lock(path: Path):
    """Hold an exclusive lock on `path` (waiting for another process that holds it); released at exit or death."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _manifest(recipe: Optional[str], fixed: dict[str, Any], runs: list[SweepRun]) -> str:
    return yaml.safe_dump(
        {"recipe": recipe, "overrides": fixed, "runs": {r.name: r.overrides for r in runs}}, sort_keys=False
    )


def _claim(out: Path, manifest: str, overwrite: bool) -> None:
    """Make `out` this sweep's folder: new, or holding this same sweep (to continue it), or replaced."""
    path = out / SWEEP
    if path.is_file() and not overwrite:
        if yaml.safe_load(path.read_text(encoding="utf-8")) != yaml.safe_load(manifest):
            raise CheckpointError(
                f"{out} holds another sweep (its {SWEEP} differs); give a new --out, or add --overwrite to replace it"
            )
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out} is not empty and holds no sweep; give a new --out, or add --overwrite to use it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, manifest)


def sweep(
    recipe: Optional[str] = None,
    grid: Sequence[str] = (),
    seeds: Optional[int] = None,
    samples: Optional[int] = None,
    overrides: Optional[dict[str, Any]] = None,
    out: Optional[Path | str] = None,
    parallel: int = 1,
    overwrite: bool = False,
    file: Optional[Path | str] = None,
    echo: Optional[Callable[[str], None]] = None,
) -> list[RunOutcome]:
    """Train `recipe` over `grid` (`--grid` texts; a sweep `file` gives more) with `seeds` seeds per point
    into run folders under `out` (default runs/<recipe>-sweep), `parallel` at a time; one line per run
    (printed, above a bar over the runs on a terminal; or given to `echo`)."""
    spec = load_sweep_file(file) if file else {"grid": {}, "overrides": {}}
    recipe = recipe or spec.get("recipe")
    fixed = {**spec["overrides"], **(overrides or {})}
    axes = {**spec["grid"], **dict(parse_grid(g) for g in grid)}
    base = load_recipe(recipe, fixed)
    seeds = seeds if seeds is not None else spec.get("seeds", 1)
    runs = sweep_runs(base, axes, seeds, samples if samples is not None else spec.get("samples", 0))
    if parallel < 1:
        raise ConfigError(f"--parallel={parallel} must be >= 1")
    out = Path(out) if out is not None else Path("runs") / f"{base.name}-sweep"
    _claim(out, _manifest(recipe, fixed, runs), overwrite)
    threads = max(1, (base.train.threads or os.cpu_count() or 1) // parallel) if parallel > 1 else 0
    _prepare(recipe, fixed, runs)
    args = [(recipe, fixed, run, out, threads, overwrite) for run in runs]
    outcomes, failed = [], []
    with Bar(len(runs), "sweep", unit="run", enabled=echo is None) as bar:
        say = echo or bar.write
        say(f"sweep of {len(runs)} runs into {out}" + (f", {parallel} at a time, {threads} threads each" if threads else ""))
        for i, outcome in enumerate(_results(args, parallel), 1):
            if isinstance(outcome, str):
                failed.append(outcome)
                say(f"[{i}/{len(runs)}] {outcome}")
            else:
                outcomes.append(outcome)
                say(f"[{i}/{len(runs)}] {outcome.name}: {outcome.how}, {outcome.steps} steps, "
                    f"best val loss {outcome.best_val_loss:.4f}, {outcome.seconds:.0f}s")  # fmt: skip
            bar.update()
    if failed:
        raise TrainingError(
            f"{len(failed)} of {len(runs)} runs stopped ({', '.join(f.split(':')[0] for f in failed)}): see their "
            f"train.log; the others are in {out}"
        )
    return outcomes


def _prepare(recipe: Optional[str], fixed: dict[str, Any], runs: list[SweepRun]) -> None:
    """Prepare each distinct data set once, before the runs (parallel ones would race to write it)."""
    from .data.prepare import prepare, shard_dir_for

    done = set()
    for run in runs:
        cfg = run_config(recipe, fixed, run)
        if shard_dir_for(cfg) not in done:
            prepare(cfg, log=lambda line: None)  # quiet: the sweep's lines are its record (a bar on a terminal)
            done.add(shard_dir_for(cfg))


def _results(args: list[tuple], parallel: int):
    """The runs' outcomes as they finish: in this process, or from `parallel` spawned worker processes."""
    if parallel == 1:
        yield from (train_run(*a) for a in args)
        return
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch threads state shared
    with concurrent.futures.ProcessPoolExecutor(parallel, mp_context=context) as pool:
        futures = [pool.submit(train_run, *a) for a in args]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:  # the runs not started yet; the running ones end with the pool
                future.cancel()
            raise
