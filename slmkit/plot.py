"""Loss curves of one or more runs from their metrics.csv: loss vs steps, loss vs tokens, and the LR.

A sweep folder (`slm sweep`'s --out, holding its sweep.yaml and the run folders) draws one curve per point, the mean
over its seeds with a band from the lowest to the highest, and, for each numeric key the sweep
varies, the best val loss against that key.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .atomic import atomic_path
from .errors import DataError
from .runfiles import METRICS, SWEEP
from .runtable import Point, find_runs, format_value, group_points, read_metrics, read_run


def _points(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@dataclass
class _Curve:
    """One colour of the plot: a run, or a sweep point and the metrics of each of its seeds."""

    label: str
    seeds: list[dict[str, list[float]]]


def _curves(run_dirs: Sequence[Path | str]) -> tuple[list[_Curve], list[Point]]:
    """A curve per run folder, and per point of each sweep folder (with the points, for the key panels)."""
    curves, points = [], []
    for run_dir in map(Path, run_dirs):
        if not (run_dir / SWEEP).is_file():  # a run folder
            curves.append(_Curve(run_dir.resolve().name, [read_metrics(run_dir)]))
            continue
        swept = group_points([read_run(p) for p in find_runs([run_dir]) if (p / METRICS).exists()])
        curves += [_Curve(p.name or run_dir.name, [read_metrics(r.path) for r in p.runs]) for p in swept]
        points += swept
    return curves, points


def _band(seeds: list[dict[str, list[float]]], x: str, y: str) -> tuple[list[float], ...]:
    """x, the mean of y over the seeds, its lowest and highest, at each x every seed logged."""
    by_x: dict[float, list[float]] = {}
    for m in seeds:
        for xi, yi in zip(*_points(m.get(x, []), m.get(y, []))):
            by_x.setdefault(xi, []).append(yi)
    xs = sorted(xi for xi, ys in by_x.items() if len(ys) == len(seeds))
    return (xs, [sum(by_x[xi]) / len(seeds) for xi in xs], [min(by_x[xi]) for xi in xs], [max(by_x[xi]) for xi in xs])


def _numeric_keys(points: list[Point]) -> list[str]:
    """The keys the sweep varies whose values are all numbers (and take at least two values)."""
    keys = list(points[0].differs) if points else []
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return [k for k in keys if all(number(p.differs[k]) for p in points) and len({p.differs[k] for p in points}) > 1]


def plot_runs(run_dirs: Sequence[Path | str], out: Path | str) -> Path:
    """Draw train (solid) and val (dashed, markers) loss vs steps and tokens and the LR, one colour per run
    (per point of a sweep folder, with its seeds' band), and the best val loss against each swept numeric key."""
    if not run_dirs:
        raise DataError("give at least one run folder to plot")
    curves, points = _curves(run_dirs)  # read all first: a bad folder fails before drawing
    keys = _numeric_keys(points)

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 + len(keys), figsize=(16 + 5.3 * len(keys), 4.8), squeeze=False)
    ax_step, ax_tokens, ax_lr = axes[0][:3]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, curve in enumerate(curves):
        colour = colours[i % len(colours)]
        for ax, x in ((ax_step, "step"), (ax_tokens, "tokens")):
            for y, style, name in (("train_loss", "-", "train"), ("val_loss", "o--", "val")):
                xs, mean, low, high = _band(curve.seeds, x, y)
                ax.plot(xs, mean, style, color=colour, markersize=3, label=f"{curve.label} {name}")
                if len(curve.seeds) > 1:
                    ax.fill_between(xs, low, high, color=colour, alpha=0.2, linewidth=0)
        ax_lr.plot(*_band(curve.seeds, "step", "lr")[:2], color=colour, label=curve.label)
    ax_step.set(xlabel="step", ylabel="loss (nats/token)", title="loss vs steps")
    ax_tokens.set(xlabel="tokens", ylabel="loss (nats/token)", title="loss vs tokens")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for ax, key in zip(axes[0][3:], keys):
        _plot_against(ax, points, key, colours)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out


def _plot_against(ax: Any, points: list[Point], key: str, colours: list[str]) -> None:
    """Best val loss (mean ± std over seeds) against `key`, a line per combination of the other swept values."""
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for p in points:
        losses = [r.best_val_loss for r in p.runs if math.isfinite(r.best_val_loss)]
        if not losses:
            continue
        others = ",".join(f"{k.rpartition('.')[2]}={format_value(v)}" for k, v in p.differs.items() if k != key)
        std = statistics.stdev(losses) if len(losses) > 1 else 0.0
        lines.setdefault(others, []).append((p.differs[key], statistics.mean(losses), std))
    for i, (others, values) in enumerate(lines.items()):
        xs, ys, errors = zip(*sorted(values))
        ax.errorbar(xs, ys, yerr=errors, fmt="o-", capsize=3, color=colours[i % len(colours)], label=others or key)
    xs = [p.differs[key] for p in points]
    if min(xs) > 0 and max(xs) >= 10 * min(xs):
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel="best val loss (nats/token)", title=f"best val loss vs {key}")
