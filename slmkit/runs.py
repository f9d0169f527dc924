"""The run folder: writing and loading a run, resuming, checkpoints.

The files' names are in slmkit/runfiles.py (torch-free); they are imported here, so `from slmkit.runs import
BEST` works as well.

Everything is written atomically and loaded without unpickling anything.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from .atomic import atomic_path, atomic_write_text, write_failure
from .config import ModelConfig, RunConfig, apply_override, load_config, save_config
from .errors import CheckpointError, ConfigError, SlmError
from .model import GPT
from .quantize import SCHEME, int8_model, int8_state
from .runfiles import (  # noqa: F401  (the names, imported by every user of this module)
    BEST, CHAT_TEMPLATE, CHECKPOINTS, CONFIG, FINGERPRINT, INT8, LAST, LOG, METRICS, PLOT, RUN_FILES, SPECIAL_TOKENS,
    STATE, SWEEP, TENSORBOARD, TOKENIZER,
)
from .tokenizer import Tokenizer, load_tokenizer

# keys a resumed run may change: its budget and cadence, never its model or data
RESUME_KEYS = (
    "train.max_steps", "train.max_minutes", "train.max_epochs", "train.eval_interval", "train.log_interval",
    "train.sample_interval", "train.keep_last_k", "train.tensorboard", "train.device", "train.threads",
)  # fmt: skip


def save_weights(model: GPT, path: Path, metadata: Optional[dict[str, str]] = None) -> None:
    """Model weights to safetensors (tied weights stored once), atomically."""
    with atomic_path(path) as tmp:  # translates safetensors' I/O errors (e.g. disk full)
        save_model(model, str(tmp), metadata=metadata)


VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")  # the tensors with one row per token


def load_weights(model: GPT, path: Path, grow_vocab: bool = False) -> None:
    """Fill `model` from a safetensors file; errors name the file when it does not match.

    `grow_vocab`: the file may have fewer token rows than the model (tokens added after its
    vocabulary, e.g. the chat markers); the new rows start at the mean of the old ones.
    """
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; train the run first or pick another --run")
    if grow_vocab and _grow_vocab_rows(model, path):
        return
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated") from None
    except RuntimeError as e:
        raise CheckpointError(
            f"{path} does not fit the model in {CONFIG} ({_first_reason(e)}); it belongs to another run"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model in {CONFIG} (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )


def _grow_vocab_rows(model: GPT, path: Path) -> bool:
    """Copy the token rows of `path` into `model`'s first rows, the rest set to their mean, and load the
    other tensors; False (nothing loaded) when the file has as many rows as the model."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated") from None
    rows = model.transformer.wte.weight.shape[0]
    if all(tensors[key].shape[0] >= rows for key in VOCAB_ROWS if key in tensors):  # tied: only one is stored
        return False
    state = model.state_dict()
    with torch.no_grad():
        for key in VOCAB_ROWS:
            if key in tensors:
                old = tensors.pop(key)
                state[key][: old.shape[0]] = old
                state[key][old.shape[0] :] = old.mean(dim=0)
    try:
        _, unexpected = model.load_state_dict({**state, **tensors}, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the model in {CONFIG} ({_first_reason(e)})") from None
    if unexpected:
        raise CheckpointError(f"{path} does not fit the model in {CONFIG} (unexpected {sorted(unexpected)[:3]})")
    return True


def load_state_weights(model: GPT, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Fill `model` from the weights saved inside a state.pt; errors name the file when they do not fit."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{path} does not fit the model in {CONFIG} ({_first_reason(e)}); it belongs to another run"
        ) from None


def _first_reason(e: Exception) -> str:
    """The first specific line of a load_state_dict error (its first line is only a heading)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith("Error(s) in loading")]
    return (specific or lines or [type(e).__name__])[0].rstrip(".")


def save_state(state: dict[str, Any], path: Path) -> None:
    """Training state (tensors and plain Python values only), atomically."""
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch reports a failed write (e.g. disk full) as RuntimeError
            raise write_failure(path, e) from None


def load_state(path: Path) -> dict[str, Any]:
    """Training state, loaded with weights_only=True so no arbitrary object is ever unpickled."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; there is nothing to resume in {path.parent}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; anything else is damaged (or a raw pickle)
        raise CheckpointError(f"{path} is unreadable or truncated (not a torch.save zip); resume from another run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds objects other than tensors and plain values; refusing to load it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} is unreadable or truncated ({type(e).__name__}); resume from another run") from None


@dataclass
class Run:
    """What a run folder holds: the model (best weights), its tokenizer and its config."""

    model: GPT  # with int8=True, a GPT whose Linear layers are dynamic int8 ones
    tokenizer: Tokenizer
    config: RunConfig
    path: Path


def check_new_run(run_dir: Path, overwrite: bool = False) -> None:
    """Refuse to start a run in a folder that is not empty (unless `overwrite`): nothing of it is touched."""
    if overwrite or not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    what = "holds a run" if (run_dir / CONFIG).is_file() else "is not empty"
    raise CheckpointError(
        f"{run_dir} {what}; continue it with `slm train --resume {run_dir}`, give a new --out, "
        "or add --overwrite to replace it"
    )


def write_run_files(run_dir: Path, cfg: RunConfig, tokenizer: Tokenizer, overwrite: bool = False) -> None:
    """config.yaml and tokenizer.json, so the folder describes itself from the first step.

    With `overwrite`, first delete the files of an earlier run there (RUN_FILES; any other file stays).
    """
    if overwrite:
        for name in RUN_FILES:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG)
    tokenizer.save(run_dir / TOKENIZER)
    atomic_write_text(run_dir / FINGERPRINT, f"{_sha256(run_dir / TOKENIZER)}  {TOKENIZER}\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recorded_fingerprint(run_dir: Path) -> Optional[str]:
    """The sha256 the run recorded for its tokenizer.json, or None for a run made before fingerprints."""
    path = run_dir / FINGERPRINT
    if not path.is_file():
        return None
    digest = (path.read_text(encoding="utf-8", errors="replace").split() or [""])[0].lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise CheckpointError(f"{path} is not a sha256 line; restore it (or delete it to skip the tokenizer check)")
    return digest


def check_tokenizer(run_dir: Path | str, path: Optional[Path] = None) -> None:
    """Refuse a run whose tokenizer.json (or the tokenizer file `path`, e.g. of the shards a resumed run
    trains on) is not the one the run was created with (FINGERPRINT). A run without one (older slmkit) passes."""
    run_dir = Path(run_dir)
    expected = _recorded_fingerprint(run_dir)
    path = path or run_dir / TOKENIZER
    if expected is None or not path.is_file():
        return
    actual = _sha256(path)
    if actual != expected:
        raise CheckpointError(
            f"{path} is not the tokenizer {run_dir} was trained with (sha256 {actual[:12]}, its {FINGERPRINT} "
            f"says {expected[:12]}); restore the run's own tokenizer or start a new run"
        )


def load_run_tokenizer(run_dir: Path | str, cfg: RunConfig) -> Tokenizer:
    """The tokenizer of a run folder, checked against the model's vocabulary and the run's FINGERPRINT."""
    run_dir = Path(run_dir)
    try:
        tokenizer = load_tokenizer(run_dir / TOKENIZER)
    except SlmError as e:
        raise CheckpointError(str(e)) from None
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise CheckpointError(
            f"{run_dir / TOKENIZER} has {tokenizer.vocab_size} tokens but the model has {cfg.model.vocab_size}; "
            "the tokenizer belongs to another run"
        )
    check_tokenizer(run_dir)
    return tokenizer


def load_run(run_dir: Path | str, weights: str = BEST, device: str = "cpu", int8: bool = False) -> Run:
    """Load a run folder: model with its best (or `weights=LAST`) weights, tokenizer, config.

    With `int8`, the model is the CPU int8 one from model-int8.safetensors (`slm quantize`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; train one with `slm train --out {run_dir}`")
    cfg = load_config(run_dir / CONFIG)
    tokenizer = load_run_tokenizer(run_dir, cfg)
    if int8:
        if device != "cpu":
            raise CheckpointError(f"the int8 model of {run_dir} runs on the CPU only; drop --int8 or use the CPU")
        return Run(model=load_int8(cfg.model, run_dir / INT8), tokenizer=tokenizer, config=cfg, path=run_dir)
    model = GPT(cfg.model)
    load_weights(model, run_dir / weights)
    model.eval()
    return Run(model=model.to(device), tokenizer=tokenizer, config=cfg, path=run_dir)


def resume_config(run_dir: Path | str, overrides: Optional[dict[str, Any]] = None) -> RunConfig:
    """The config of a run folder to resume, with budget/cadence overrides (RESUME_KEYS) applied."""
    run_dir = Path(run_dir)
    if not (run_dir / STATE).is_file():
        raise CheckpointError(f"{run_dir} has no {STATE} to resume from; start it with `slm train --out {run_dir}`")
    cfg = load_config(run_dir / CONFIG)
    check_tokenizer(run_dir)
    for key, value in (overrides or {}).items():
        if key not in RESUME_KEYS:
            raise ConfigError(f"--{key} cannot change when resuming; only {', '.join(RESUME_KEYS)} can")
        apply_override(cfg, key, value)
    return cfg.validate()


def save_checkpoint(run_dir: Path, model: GPT, state: dict[str, Any], keep_last_k: int = 0) -> None:
    """last.safetensors + state.pt: everything needed to continue exactly; and the last k copies.

    `state` holds plain values and tensors, with its "step"; state.pt adds its own copy of the
    weights: a kill between the two writes must not pair the optimizer of one step with the
    weights of the next.
    """
    step = state["step"]
    state = {**state, "model": model.state_dict()}
    save_weights(model, run_dir / LAST, metadata={"step": str(step)})
    save_state(state, run_dir / STATE)
    if keep_last_k:
        folder = run_dir / CHECKPOINTS
        save_weights(model, folder / f"step-{step:07d}.safetensors", metadata={"step": str(step)})
        save_state(state, folder / f"step-{step:07d}.state.pt")
        for old in sorted(folder.glob("step-*.safetensors"))[:-keep_last_k]:
            old.unlink()
            old.with_name(old.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)


def save_int8(model: GPT, path: Path) -> None:
    """Quantize `model` and write its int8 safetensors file atomically."""
    tensors = int8_state(model)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "quantization": SCHEME, "torch": torch.__version__})


def load_int8(config: ModelConfig, path: Path) -> torch.nn.Module:
    """The dynamic int8 model of `config` from a file written by save_int8."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; write it with `slm quantize --run {path.parent}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            scheme = (f.metadata() or {}).get("quantization")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); re-run `slm quantize`") from None
    if scheme != SCHEME:
        raise CheckpointError(f"{path} is not an int8 model of this slmkit (scheme {scheme!r}); re-run `slm quantize`")
    try:
        return int8_model(config, tensors)
    except ValueError as e:
        raise CheckpointError(f"{path} does not fit the model in {CONFIG} ({e}); re-run `slm quantize`") from None


@dataclass
class QuantizeResult:
    """Where the int8 file went and how big it is next to the fp32 one."""

    path: Path
    bytes_int8: int
    bytes_fp32: int


def quantize_run(run_dir: Path | str) -> QuantizeResult:
    """Write RUN/model-int8.safetensors from the run's best weights; `--int8` loads it."""
    run = load_run(run_dir)
    path = run.path / INT8
    save_int8(run.model, path)
    return QuantizeResult(path, path.stat().st_size, (run.path / BEST).stat().st_size)
