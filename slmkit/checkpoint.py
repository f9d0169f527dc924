"""Self-describing run folders, written atomically, loaded without unpickling anything.

    runs/<name>/
      config.yaml         the resolved recipe
      tokenizer.json      the tokenizer
      model.safetensors   weights of the best evaluation
      last.safetensors    weights at the last checkpoint
      state.pt            optimizer, step, RNG states, sampler position (torch.load weights_only)
      model-int8.safetensors  int8 model written by `slm quantize` (loaded with int8=True)
      metrics.csv  train.log
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from .atomic import atomic_path, write_failure
from .config import RunConfig, load_config, save_config
from .errors import CheckpointError, SlmError
from .model import GPT
from .quantize import INT8, load_int8
from .tokenizer import Tokenizer, load_tokenizer

BEST = "model.safetensors"
LAST = "last.safetensors"
STATE = "state.pt"


def save_weights(model: GPT, path: Path, metadata: Optional[dict[str, str]] = None) -> None:
    """Model weights to safetensors (tied weights stored once), atomically."""
    with atomic_path(path) as tmp:
        try:
            save_model(model, str(tmp), metadata=metadata)
        except SafetensorError as e:  # its I/O errors (e.g. disk full) arrive as SafetensorError
            raise write_failure(path, e) from None


def load_weights(model: GPT, path: Path) -> None:
    """Fill `model` from a safetensors file; errors name the file when it does not match."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; train the run first or pick another --run")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated") from None
    except RuntimeError as e:
        raise CheckpointError(
            f"{path} does not fit the model in config.yaml ({_first_reason(e)}); it belongs to another run"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model in config.yaml (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )


def load_state_weights(model: GPT, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Fill `model` from the weights saved inside a state.pt; errors name the file when they do not fit."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{path} does not fit the model in config.yaml ({_first_reason(e)}); it belongs to another run"
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


def write_run_files(run_dir: Path, cfg: RunConfig, tokenizer: Tokenizer) -> None:
    """config.yaml and tokenizer.json, so the folder describes itself from the first step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    tokenizer.save(run_dir / "tokenizer.json")


def load_run(run_dir: Path | str, weights: str = BEST, device: str = "cpu", int8: bool = False) -> Run:
    """Load a run folder: model with its best (or `weights=LAST`) weights, tokenizer, config.

    With `int8`, the model is the CPU int8 one from model-int8.safetensors (`slm quantize`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; train one with `slm train --out {run_dir}`")
    cfg = load_config(run_dir / "config.yaml")
    try:
        tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    except SlmError as e:
        raise CheckpointError(str(e)) from None
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise CheckpointError(
            f"{run_dir}/tokenizer.json has {tokenizer.vocab_size} tokens but the model has {cfg.model.vocab_size}; "
            "the tokenizer belongs to another run"
        )
    if int8:
        if device != "cpu":
            raise CheckpointError(f"the int8 model of {run_dir} runs on the CPU only; drop --int8 or use the CPU")
        return Run(model=load_int8(cfg.model, run_dir / INT8), tokenizer=tokenizer, config=cfg, path=run_dir)
    model = GPT(cfg.model)
    load_weights(model, run_dir / weights)
    model.eval()
    return Run(model=model.to(device), tokenizer=tokenizer, config=cfg, path=run_dir)
