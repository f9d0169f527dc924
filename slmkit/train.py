"""The training loop: AdamW, warmup + cosine, clipping, a time or step budget, evals, checkpoints."""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from .atomic import remove_temp_files
from .checkpoint import (
    BEST,
    LAST,
    STATE,
    load_state,
    load_state_weights,
    load_weights,
    save_state,
    save_weights,
    write_run_files,
)
from .config import RunConfig, TrainConfig, apply_override, load_config
from .data.shards import BatchSampler, load_prepared, prepare, shard_dir_for
from .errors import CheckpointError, ConfigError
from .evaluate import mean_loss, report
from .generate import generate
from .model import GPT

METRICS_FIELDS = ["step", "tokens", "lr", "train_loss", "val_loss", "tokens_per_second", "elapsed"]


def resolve_device(name: str) -> torch.device:
    """auto -> cuda if available, else mps, else cpu; a forced device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use --train.device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device=mps but MPS is not available here; use --train.device=cpu")
    return torch.device(name)


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms, biases or embeddings)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused kernels exist for CUDA and CPU; they update every tensor in one call
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cuda", "cpu"))


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to min_lr as progress goes 0 -> 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# keys a resumed run may change: its budget and cadence, never its model or data
RESUME_KEYS = ("train.max_steps", "train.max_minutes", "train.eval_interval", "train.log_interval", "train.device")


def resume_config(run_dir: Path | str, overrides: Optional[dict[str, Any]] = None) -> RunConfig:
    """The config of a run folder to resume, with budget/cadence overrides applied."""
    run_dir = Path(run_dir)
    if not (run_dir / STATE).is_file():
        raise CheckpointError(f"{run_dir} has no {STATE} to resume from; start it with `slm train --out {run_dir}`")
    cfg = load_config(run_dir / "config.yaml")
    for key, value in (overrides or {}).items():
        if key not in RESUME_KEYS:
            raise ConfigError(f"--{key} cannot change when resuming; only {', '.join(RESUME_KEYS)} can")
        apply_override(cfg, key, value)
    return cfg.validate()


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    tokens: int
    best_val_loss: float
    final_val: dict[str, float]  # loss/perplexity/bits on the full val split, best weights
    sample: str
    elapsed: float


class _Logger:
    """train.log and metrics.csv in the run folder, appended to (so a resumed run continues them)."""

    def __init__(self, run_dir: Path, bar: Optional[tqdm]):
        self.bar = bar
        self.log = open(run_dir / "train.log", "a", encoding="utf-8")
        new = not (run_dir / "metrics.csv").exists()
        self.metrics_file = open(run_dir / "metrics.csv", "a", newline="", encoding="utf-8")
        self.metrics = csv.DictWriter(self.metrics_file, fieldnames=METRICS_FIELDS)
        if new:
            self.metrics.writeheader()

    def info(self, message: str) -> None:
        self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self.log.flush()
        (self.bar.write if self.bar is not None else print)(message)

    def row(self, **values: Any) -> None:
        self.metrics.writerow({k: values.get(k, "") for k in METRICS_FIELDS})
        self.metrics_file.flush()

    def close(self) -> None:
        self.log.close()
        self.metrics_file.close()


def _checkpoint(run_dir: Path, model: GPT, optimizer, sampler: BatchSampler, progress: dict[str, Any]) -> None:
    """last.safetensors + state.pt: everything needed to continue exactly.

    state.pt holds its own copy of the weights: a kill between the two writes must not pair
    the optimizer of one step with the weights of the next.
    """
    save_weights(model, run_dir / LAST, metadata={"step": str(progress["step"])})
    save_state(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "sampler": sampler.state(),
            **progress,
        },
        run_dir / STATE,
    )


def train(
    cfg: Optional[RunConfig] = None,
    out: Optional[Path | str] = None,
    resume: Optional[Path | str] = None,
    progress_bar: bool = True,
) -> TrainResult:
    """Train a GPT as `cfg` says into run folder `out` (default runs/<name>).

    With `resume`, continue that run folder from its last checkpoint (cfg defaults to its config.yaml).
    """
    if resume is not None:
        run_dir = Path(resume)
        cfg = cfg or resume_config(run_dir)
    else:
        cfg = cfg or RunConfig()
        run_dir = Path(out) if out is not None else Path("runs") / cfg.name
    tc = cfg.train
    device = resolve_device(tc.device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)

    shard_dir = shard_dir_for(cfg)
    prepare(cfg)
    tokenizer, shards, manifest = load_prepared(shard_dir)
    cfg.model.vocab_size = tokenizer.vocab_size
    model = GPT(cfg.model).to(device)
    optimizer = make_optimizer(model, tc, device)
    sampler = BatchSampler(shards["train"], cfg.model.block_size, tc.batch_size, seed=tc.seed)
    # fixed val windows, so evaluations compare
    val_sampler = BatchSampler(shards["val"], cfg.model.block_size, tc.batch_size, seed=tc.seed + 1)
    val_batches = [val_sampler.next() for _ in range(tc.eval_batches)]

    progress: dict[str, Any] = {"step": 0, "tokens": 0, "elapsed": 0.0, "best_val_loss": float("inf")}
    if resume is not None:
        state = load_state(run_dir / STATE)
        remove_temp_files(run_dir)  # half-written checkpoint files of the run that was killed
        if "model" in state:  # the weights of the same step as the optimizer state
            load_state_weights(model, state["model"], run_dir / STATE)
        else:
            load_weights(model, run_dir / LAST)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        sampler.set_state(state["sampler"])
        progress = {k: state[k] for k in progress}
    else:
        write_run_files(run_dir, cfg, tokenizer)

    budget_s = tc.max_minutes * 60.0
    bar = None
    if progress_bar:
        bar = tqdm(
            total=tc.max_steps or None,
            initial=progress["step"],
            unit="step",
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
        )
    log = _Logger(run_dir, bar)
    n_params = model.num_parameters()
    log.info(
        f"{'resuming' if resume else 'training'} {cfg.name}: {n_params / 1e6:.2f}M parameters on {device}, "
        f"train {len(shards['train']):,} tokens, val {len(shards['val']):,} tokens -> {run_dir}"
    )

    @torch.no_grad()
    def eval_fixed() -> float:
        model.eval()
        losses = [model(x.to(device), y.to(device))[1].item() for x, y in val_batches]
        model.train()
        return float(np.mean(losses))

    def done() -> bool:
        if tc.max_steps and progress["step"] >= tc.max_steps:
            return True
        return bool(budget_s) and progress["elapsed"] >= budget_s

    def fraction() -> float:
        """Progress through the budget, 0 -> 1 (steps if they are set, else time)."""
        if tc.max_steps:
            return progress["step"] / tc.max_steps
        return progress["elapsed"] / budget_s

    model.train()
    tokens_per_step = tc.batch_size * cfg.model.block_size
    start = time.perf_counter() - progress["elapsed"]
    window_start, window_tokens = time.perf_counter(), 0
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    lr = tc.lr
    while not done():
        step = progress["step"]
        lr = lr_at(tc, step, fraction() if step >= tc.warmup_steps else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = sampler.next()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        _, loss = model(x, y)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        loss_count += 1
        progress["step"] = step + 1
        progress["tokens"] += tokens_per_step
        window_tokens += tokens_per_step
        progress["elapsed"] = time.perf_counter() - start

        last = done()
        if progress["step"] % tc.log_interval == 0 or last:
            train_loss = (loss_sum / loss_count).item()
            now = time.perf_counter()
            tokens_per_second = window_tokens / max(now - window_start, 1e-9)
            window_start, window_tokens = now, 0
            loss_sum.zero_()
            loss_count = 0
            if not math.isfinite(train_loss):
                log.close()
                raise ConfigError(
                    f"training diverged at step {progress['step']} (loss {train_loss}); lower --train.lr"
                )
            if bar is not None:
                if not tc.max_steps and progress["elapsed"] > 0:  # estimate the steps the time budget allows
                    bar.total = max(progress["step"], int(progress["step"] * budget_s / progress["elapsed"]))
                bar.set_postfix_str(f"loss {train_loss:.3f}, {tokens_per_second:,.0f} tok/s, lr {lr:.2e}")
                bar.update(progress["step"] - bar.n)
            val_loss = None
            if progress["step"] % tc.eval_interval == 0 or last:
                val_loss = eval_fixed()
                log.info(f"step {progress['step']}: train {train_loss:.4f}, val {val_loss:.4f}")
                if val_loss < progress["best_val_loss"]:
                    progress["best_val_loss"] = val_loss
                    save_weights(model, run_dir / BEST, metadata={"step": str(progress["step"])})
                _checkpoint(run_dir, model, optimizer, sampler, progress)
            log.row(
                step=progress["step"],
                tokens=progress["tokens"],
                lr=f"{lr:.6g}",
                train_loss=f"{train_loss:.6f}",
                val_loss="" if val_loss is None else f"{val_loss:.6f}",
                tokens_per_second=f"{tokens_per_second:.1f}",
                elapsed=f"{progress['elapsed']:.2f}",
            )
            # time spent on evaluation and checkpoints counts against the budget
            progress["elapsed"] = time.perf_counter() - start
    if bar is not None:
        bar.close()
        log.bar = None

    # final report: best weights on the whole val split
    load_weights(model, run_dir / BEST)
    val_tokens = shards["val"].tokens
    loss = mean_loss(model, val_tokens, batch_size=tc.batch_size)
    final = report(loss, len(val_tokens) - 1, len(tokenizer.decode(val_tokens[1:].tolist()).encode("utf-8")))
    log.info(
        f"done: {progress['step']} steps, {progress['tokens']:,} tokens in {progress['elapsed']:.0f}s; "
        f"full val split: loss {final['loss']:.4f} nats/token, {final['bits_per_byte']:.4f} bits/byte, "
        f"perplexity {final['perplexity']:.2f}"
    )
    sc = cfg.sample
    text = generate(model, tokenizer, sc.prompt, sc.max_new_tokens, sc.temperature, sc.top_k, seed=sc.seed)
    log.info(f"sample from the best model:\n{sc.prompt}{text}")
    log.close()
    return TrainResult(
        run_dir=run_dir,
        steps=progress["step"],
        tokens=progress["tokens"],
        best_val_loss=progress["best_val_loss"],
        final_val=final,
        sample=text,
        elapsed=progress["elapsed"],
    )
