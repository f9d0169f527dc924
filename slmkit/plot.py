"""Loss curves of one or more runs from their metrics.csv: loss vs steps, loss vs tokens, and the LR."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

from .atomic import atomic_path
from .errors import DataError
from .runs import METRICS


def read_metrics(run_dir: Path | str) -> dict[str, list[float]]:
    """Columns of RUN/metrics.csv by name, as floats (NaN where a row leaves a cell empty)."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; give run folders written by `slm train`") from None
    if not rows or "step" not in rows[0]:
        raise DataError(f"{path} has no metrics rows (needs a 'step' column); train the run first")
    columns: dict[str, list[float]] = {name: [] for name in rows[0]}
    for row in rows:
        for name in columns:
            try:
                columns[name].append(float(row.get(name) or "nan"))
            except ValueError:
                columns[name].append(math.nan)
    return columns


def _points(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_runs(run_dirs: Sequence[Path | str], out: Path | str) -> Path:
    """Draw train (solid) and val (dashed, markers) loss vs steps and tokens and the LR, one colour per run."""
    if not run_dirs:
        raise DataError("give at least one run folder to plot")
    runs = [(Path(d), read_metrics(d)) for d in run_dirs]  # read all first: a bad folder fails before drawing

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (ax_step, ax_tokens, ax_lr) = plt.subplots(1, 3, figsize=(16, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run_dir, m) in enumerate(runs):
        colour = colours[i % len(colours)]
        label = run_dir.resolve().name
        steps = m["step"]
        for ax, xs in ((ax_step, steps), (ax_tokens, m.get("tokens", []))):
            ax.plot(*_points(xs, m.get("train_loss", [])), color=colour, label=f"{label} train")
            ax.plot(*_points(xs, m.get("val_loss", [])), "o--", color=colour, markersize=3, label=f"{label} val")
        ax_lr.plot(*_points(steps, m.get("lr", [])), color=colour, label=label)
    ax_step.set(xlabel="step", ylabel="loss (nats/token)", title="loss vs steps")
    ax_tokens.set(xlabel="tokens", ylabel="loss (nats/token)", title="loss vs tokens")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for ax in (ax_step, ax_tokens, ax_lr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out
