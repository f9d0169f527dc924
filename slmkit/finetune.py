"""Fine-tuning: a trained run's best weights and tokenizer, new text, a new run folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

from .config import RunConfig, apply_override, load_config
from .data.prepare import shard_dir_for
from .errors import ConfigError
from .runs import BEST, CONFIG, TOKENIZER
from .tokenizer import load_tokenizer
from .train import TrainResult, train

# what `slm finetune` changes in the source run's recipe before the user's overrides (lr: a tenth of the original)
FINETUNE_DEFAULTS = {
    "train.warmup_steps": 20,
    "train.max_steps": 300,
    "train.max_minutes": 0,
    "train.max_epochs": 0,
    "train.schedule": "cosine",
    "train.eval_interval": 50,
    "train.early_stop_patience": 3,
}


def finetune(
    from_dir: Path | str,
    overrides: Optional[dict[str, Any]] = None,
    out: Optional[Path | str] = None,
    progress_bar: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Fine-tune the best weights of run `from_dir`, with its tokenizer, on new text into a new run folder.

    The source run's recipe with FINETUNE_DEFAULTS (and lr, min_lr a tenth of the original) applied, then
    `overrides` (data.*, train.*, sample.*, model.dropout; the model's shape and the tokenizer stay).
    A folder `out` that is not empty is refused unless `overwrite` (see train).
    """
    from_dir = Path(from_dir)
    cfg = load_config(from_dir / CONFIG)
    tokenizer = load_tokenizer(from_dir / TOKENIZER)
    defaults = {**FINETUNE_DEFAULTS, "train.lr": cfg.train.lr / 10, "train.min_lr": cfg.train.min_lr / 10}
    for key, value in defaults.items():
        apply_override(cfg, key, value)
    cfg.name, cfg.data.shard_dir = f"{cfg.name}-finetune", ""
    for key, value in (overrides or {}).items():
        if key.startswith("tokenizer.") or (key.startswith("model.") and key != "model.dropout"):
            raise ConfigError(f"--{key} cannot change when fine-tuning: the model and tokenizer come from {from_dir}")
        apply_override(cfg, key, value)
    cfg.validate()
    if not cfg.data.shard_dir:  # not shards/<...>: those hold a tokenizer fitted on the new text
        digest = hashlib.sha256((from_dir / TOKENIZER).read_bytes()).hexdigest()[:8]
        cfg.data.shard_dir = str(shard_dir_for(cfg)) + f"-tok{digest}"
    return train(
        cfg, out=out or Path("runs") / cfg.name, progress_bar=progress_bar, init_weights=from_dir / BEST,
        tokenizer=tokenizer, overwrite=overwrite,
    )
