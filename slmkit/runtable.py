"""`slm runs`: a table of run folders, one row per run or per sweep point (mean ± std over its seeds).

Everything is read from the run folders themselves, through slmkit/runfiles.py's names: config.yaml
(the hyper-parameters), metrics.csv (steps, tokens, val losses, speed, time), train.log (the final
report's bits/byte, why the run stopped, whether it finished) and model.safetensors's header (the
parameter count). So it works on any run folder, old or new, finished or not.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .config import LABELS, RunConfig, load_config
from .errors import ConfigError, DataError
from .runfiles import BEST, CONFIG, LOG, METRICS
from .tokenizer import get_kind

# how a run is carried out, not what it learns: not compared between runs
RUNTIME = (
    "train.threads", "train.device", "train.log_interval", "train.sample_interval", "train.keep_last_k",
    "train.tensorboard", "data.num_workers", "data.shard_dir",
)  # fmt: skip
SEED = "train.seed"  # runs that differ only in it are one sweep point

_STAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "  # every train.log message starts with its time
_START = re.compile(_STAMP + r"(training|resuming) ", re.M)
_DONE = re.compile(_STAMP + r"done: .*$", re.M)
_STOP = re.compile(_STAMP + r"stopping at step \d+: (.+)$", re.M)
_BITS_PER_BYTE = re.compile(r"([0-9.]+) bits/byte")
_UNKNOWN = re.compile(r"([0-9.]+)% of the bytes became the unknown token")


def read_metrics(run_dir: Path | str) -> dict[str, list[float]]:
    """Columns of RUN/metrics.csv by name, as floats (NaN where a row leaves a cell empty)."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; give run folders written by `slm train`") from None
    except (UnicodeDecodeError, csv.Error):
        raise DataError(f"{path} is not a metrics CSV file (not UTF-8 text or not CSV); train the run again") from None
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


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """A config as {"train.lr": 0.001, ...}: the keys `--section.key=value` overrides name."""
    flat: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def tensorboard_hparams(writer: Any, cfg: RunConfig, metrics: dict[str, float]) -> None:
    """Give TensorBoard's hparams view the run's hyper-parameters and its final `metrics` (writer: a
    SummaryWriter, or None when train.tensorboard is off). The metrics are scalars tagged hparams/NAME."""
    if writer is None:
        return
    hparams = {k: v for k, v in flatten(cfg).items() if compared(k)}
    hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
    values = {f"hparams/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    writer.add_hparams(hparams, values, run_name=".")  # ".": the run's own folder, beside its scalars
    writer.flush()


def _last_session(run_dir: Path) -> str:
    """train.log from the last time training started in it (a resumed run appends a session)."""
    try:
        log = (run_dir / LOG).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    starts = list(_START.finditer(log))
    return log[starts[-1].start() :] if starts else log


def finished(run_dir: Path | str) -> bool:
    """True when the last training session in the folder reached its final report."""
    return _DONE.search(_last_session(Path(run_dir))) is not None


def parameter_count(run_dir: Path) -> Optional[int]:
    """Parameters of the run's model from model.safetensors's header (tied weights are stored once)."""
    path = run_dir / BEST
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    except (SafetensorError, OSError):
        return None


@dataclass
class RunRow:
    """What `slm runs` shows of one run folder (NaN or None where the folder does not say)."""

    path: Path
    config: dict[str, Any]  # flatten(config.yaml)
    parameters: Optional[int]
    steps: int
    tokens: int
    best_val_loss: float  # the lowest val loss of metrics.csv (the training's own evaluations)
    tokens_per_second: float  # the median of metrics.csv's tokens_per_second
    wall_time: float  # seconds of training, evaluations included (metrics.csv's last elapsed)
    bits_per_byte: float  # the final report's, on the whole val split with the best weights
    stopped: str  # budget | early_stop | reached | unfinished
    lossy: bool = False  # the tokenizer maps some text to an unknown token: bits/byte not comparable
    unknown_share: Optional[float] = None  # the share of val bytes that became the unknown token, when logged


def read_run(run_dir: Path | str) -> RunRow:
    """One row from a run folder's config.yaml, metrics.csv, train.log and model.safetensors."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / CONFIG)
    session = _last_session(run_dir)
    done = _DONE.search(session)
    bits = unknown = None
    stopped = "unfinished"
    if done:
        match = _BITS_PER_BYTE.search(done.group(0))
        bits = float(match.group(1)) if match else None
        match = _UNKNOWN.search(done.group(0))
        unknown = float(match.group(1)) / 100 if match else None
        stop = _STOP.search(session)
        stopped = stop.group(1).strip().replace(" ", "_") if stop else "budget"
    return RunRow(
        run_dir, flatten(cfg), parameter_count(run_dir), *_from_metrics(run_dir), math.nan if bits is None else bits,
        stopped, lossy=get_kind(cfg.tokenizer.kind).lossy or unknown is not None, unknown_share=unknown,
    )  # fmt: skip


def _from_metrics(run_dir: Path) -> tuple[int, int, float, float, float]:
    """Steps, tokens, best val loss, median tokens/s and elapsed seconds of metrics.csv (0 / NaN: not logged)."""
    if not (run_dir / METRICS).is_file():
        return 0, 0, math.nan, math.nan, math.nan
    m = read_metrics(run_dir)
    logged = {name: [v for v in values if math.isfinite(v)] for name, values in m.items()}
    last = {name: values[-1] for name, values in logged.items() if values}
    val, speeds = logged.get("val_loss", []), logged.get("tokens_per_second", [])
    return (
        int(last.get("step", 0)), int(last.get("tokens", 0)), min(val) if val else math.nan,
        statistics.median(speeds) if speeds else math.nan, last.get("elapsed", math.nan),
    )  # fmt: skip


def find_runs(paths: Sequence[Path | str]) -> list[Path]:
    """The run folders (holding config.yaml) among `paths` and below them, in order, each once."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / CONFIG).is_file():
            runs = [path]
        elif path.is_dir():
            runs = sorted(p.parent for p in path.rglob(CONFIG))
        else:
            raise DataError(f"{path} does not exist; give run folders or folders of runs (e.g. a sweep's --out)")
        if not runs:
            raise DataError(f"{path} holds no run folder (no {CONFIG} in it or below); train one with `slm train`")
        found += [run for run in runs if run not in found]
    return found


@dataclass
class Point:
    """Runs that differ only in train.seed: a sweep point and its seeds."""

    runs: list[RunRow]
    name: str = ""
    differs: dict[str, Any] = field(default_factory=dict)  # its values of the keys that differ between points


def compared(key: str) -> bool:
    """Whether a config key is a hyper-parameter: not a label (name, reproduces), not how the run was carried
    out, not sampling."""
    return key not in LABELS and key not in RUNTIME and key.partition(".")[0] not in ("sample", "serve")


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The hyper-parameters whose values are not the same in every one of `configs`, in order."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if compared(k) and len({repr(c.get(k)) for c in configs}) > 1]


def group_points(rows: Sequence[RunRow]) -> list[Point]:
    """Rows grouped into points (the same config but train.seed), in order of first appearance."""
    points: dict[str, Point] = {}
    for row in rows:
        key = repr(sorted((k, repr(v)) for k, v in row.config.items() if compared(k) and k != SEED))
        points.setdefault(key, Point([])).runs.append(row)
    keys = differing_keys([p.runs[0].config for p in points.values()])
    for point in points.values():
        point.differs = {k: point.runs[0].config.get(k) for k in keys}
        values = ",".join(f"{short_key(k, keys)}={format_value(v)}" for k, v in point.differs.items())
        point.name = without_seed(point.runs[0].path.resolve().name) or values
    return list(points.values())


def without_seed(name: str) -> str:
    """A sweep run's name without its seed part: lr=0.001,seed=1337 -> lr=0.001 ("" if it has none)."""
    stripped = re.sub(r"(^|,)seed=-?\d+(?=,|$)", "", name).strip(",")
    return stripped if stripped != name else ""


def short_key(key: str, keys: Sequence[str]) -> str:
    """`key` without its section (lr for train.lr) unless another of `keys` ends the same."""
    tail = key.rpartition(".")[2]
    return tail if sum(k.rpartition(".")[2] == tail for k in keys) == 1 else key


def format_value(value: Any) -> str:
    """A config value as it appears in run names and the overrides column."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------------------------- the table

COLUMNS = {  # column id -> heading; ids are what --sort takes (besides any config key)
    "name": "run", "overrides": "overrides", "seeds": "seeds", "parameters": "params", "steps": "steps",
    "tokens": "tokens", "best_val_loss": "best val loss", "bits_per_byte": "bits/byte",
    "tokens_per_second": "tokens/s", "wall_time": "wall s", "stopped": "stop",
}  # fmt: skip
MEASURED = ("best_val_loss", "bits_per_byte", "tokens_per_second", "wall_time")  # mean ± std over seeds
COUNTED = ("parameters", "steps", "tokens")


@dataclass
class Table:
    """The rows of `slm runs`: one per run, or one per point; each row maps a column id to its value.

    A measured column of a point row holds (mean, std) over its seeds; `lossy` lists the rows whose
    bits/byte is not comparable (a lossy tokenizer), with the share of unknown bytes when known.
    """

    rows: list[dict[str, Any]]
    columns: list[str]
    lossy: dict[str, Optional[float]] = field(default_factory=dict)


def run_table(paths: Sequence[Path | str], sort: Optional[str] = None, per_run: bool = False) -> Table:
    """The table of the run folders in `paths` (and below): per point over seeds, or `per_run`."""
    runs = [read_run(p) for p in find_runs(paths)]
    points = group_points(runs)
    root = _common_root([r.path for r in runs])
    keys = differing_keys([r.config for r in runs]) if per_run else [k for k in points[0].differs if k != SEED]
    rows, lossy = [], {}
    for point in points:
        groups = [[r] for r in point.runs] if per_run or len(point.runs) == 1 else [point.runs]
        for group in groups:
            name = str(group[0].path.resolve().relative_to(root))
            if len(group) > 1 and point.name:  # a point: its folder name without the seed part, or its values
                name = str(Path(name).parent / point.name)
            rows.append(_row(group, name, keys))
            if any(r.lossy for r in group):
                shares = [r.unknown_share for r in group if r.unknown_share is not None]
                lossy[name] = statistics.mean(shares) if shares else None
    columns = [c for c in COLUMNS if c != "seeds" or any(row["seeds"] > 1 for row in rows)]
    if sort:
        _sort(rows, sort)
    return Table(rows, columns, lossy)


def _common_root(paths: list[Path]) -> Path:
    """The deepest folder holding every run folder's parent."""
    parents = [p.resolve().parent for p in paths]
    root = parents[0]
    while not all(p == root or root in p.parents for p in parents):
        root = root.parent
    return root


def _row(group: list[RunRow], name: str, keys: list[str]) -> dict[str, Any]:
    first = group[0]
    row: dict[str, Any] = {
        "name": name,
        "overrides": " ".join(f"{k}={format_value(first.config.get(k))}" for k in keys),
        "seeds": len(group),
        "stopped": "/".join(dict.fromkeys(r.stopped for r in group)),
        "config": first.config,
    }
    for column in COUNTED:
        values = [getattr(r, column) for r in group]
        row[column] = values[0] if len(set(values)) == 1 else statistics.mean(v or 0 for v in values)
    for column in MEASURED:
        values = [getattr(r, column) for r in group]
        row[column] = values[0] if len(group) == 1 else (_mean(values), _std(values))
    return row


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if all(math.isfinite(v) for v in values) else math.nan


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if all(math.isfinite(v) for v in values) else math.nan


def _sort(rows: list[dict[str, Any]], key: str) -> None:
    if key not in COLUMNS and key not in rows[0]["config"]:
        raise ConfigError(f"--sort {key!r} is not a column nor a config key; columns: {', '.join(COLUMNS)}")

    def value(row: dict[str, Any]) -> tuple:
        v = row[key] if key in COLUMNS else row["config"].get(key)
        v = v[0] if isinstance(v, tuple) else v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (0, math.isnan(v), v, "")
        return (1, False, 0, str(v))

    rows.sort(key=value)


def _cell(value: Any, column: str, text: bool) -> str:
    """A value as the table, markdown or csv shows it."""
    if isinstance(value, tuple):  # (mean, std) over seeds
        return f"{_cell(value[0], column, text)} ± {_cell(value[1], column, text)}" if text else _cell(value[0], column, text)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-" if text else ""
    if not text:
        return str(value)
    if column in COUNTED:
        return f"{value:,.0f}"
    if column == "tokens_per_second":
        return f"{value:,.0f}"
    if column == "wall_time":
        return f"{value:,.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(table: Table, fmt: str = "table") -> str:
    """The table as aligned text, csv (one column per value; std columns beside the means) or markdown."""
    if fmt == "csv":
        return _csv(table)
    cells = []
    for row in table.rows:
        line = [_cell(row[c], c, True) for c in table.columns]
        if row["name"] in table.lossy:
            line[table.columns.index("bits_per_byte")] += " *"
        cells.append(line)
    headings = [COLUMNS[c] for c in table.columns]
    if fmt == "markdown":
        lines = [f"| {' | '.join(headings)} |", f"|{'|'.join('---' for _ in headings)}|"]
        lines += [f"| {' | '.join(c.replace('|', '/') for c in line)} |" for line in cells]
    elif fmt == "table":
        widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headings)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headings, widths)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    else:
        raise ConfigError(f"--format {fmt!r} is not known; valid: table, csv, markdown")
    for name, share in table.lossy.items():
        unknown = f": {share:.2%} of the val bytes became the unknown token" if share is not None else ""
        lines.append(f"* {name}: lossy tokenizer, bits/byte not comparable across tokenizers{unknown}")
    return "\n".join(lines)


def _csv(table: Table) -> str:
    out = io.StringIO()
    columns = [c for c in table.columns]
    header = []
    for c in columns:
        header.append(c)
        if c in MEASURED and "seeds" in columns:
            header.append(f"{c}_std")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header + ["bits_per_byte_comparable"])
    for row in table.rows:
        line = []
        for c in columns:
            value = row[c]
            line.append(_cell(value, c, False))
            if c in MEASURED and "seeds" in columns:
                line.append(_cell(value[1], c, False) if isinstance(value, tuple) else "")
        writer.writerow(line + [str(row["name"] not in table.lossy).lower()])
    return out.getvalue().rstrip("\n")
