"""The training loop: optimizer, schedule, precision, budget, evals, samples, checkpoints, DDP.

`train` reads top to bottom: `_build` the run (shards, model, optimizers, samplers, budget), start or
`_restore` its `TrainState`, then `_fit`: one `_train_step` after another; every eval_interval steps an
evaluation (`_after_evaluation`: best weights, plateau, early stop, target), the metrics row and a
checkpoint. `_check_replicas` and `_final_report` end it; the logger, progress bar and process group
close in `finally`, whatever stopped the run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from .atomic import atomic_write_text, remove_temp_files
from .config import RunConfig, SampleConfig, TrainConfig
from .data.chat import chat_sampler
from .data.prepare import load_prepared, prepare, shard_dir_for
from .data.sampler import WindowSampler
from .data.shards import Shard
from .errors import CheckpointError, ConfigError, TrainingError
from .evaluate import EvalResult, chat_split, evaluate_chat, evaluate_tokens, mean_loss, split_tokens
from .generate import generate
from .model import GPT
from .optim import early_stop_update, lr_multiplier, make_optimizers, plateau_update, warmup_progress
from .plot import plot_runs
from .progress import Bar
from .runtable import tensorboard_hparams
from .runs import (
    BEST,
    LAST,
    LOG,
    METRICS,
    PLOT,
    STATE,
    TENSORBOARD,
    TOKENIZER,
    check_new_run,
    check_tokenizer,
    load_state,
    load_state_weights,
    load_weights,
    resume_config,
    save_checkpoint,
    save_weights,
    write_run_files,
)
from .tokenizer import Tokenizer

METRICS_FIELDS = [
    "step", "epoch", "tokens", "lr", "train_loss", "val_loss", "perplexity", "tokens_per_second", "elapsed", "event",
]  # fmt: skip
_now = time.perf_counter  # the training clock (tests replace it to run a time budget without waiting)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda if available, else mps, else cpu; a forced device must exist. DDP ranks get cuda:LOCAL_RANK."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use --train.device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device=mps but MPS is not available here; use --train.device=cpu")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def resolve_precision(name: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32. auto: bf16 on CUDA if supported, else fp16; fp32 on cpu/mps."""
    if name == "auto":
        if device.type != "cuda":
            return None  # bf16 on a CPU without bf16 matrix units is ~100x slower than fp32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    tokens: int
    best_val_loss: float
    final_val: Optional[EvalResult]  # the best weights on the whole val split (rank 0 only; None elsewhere)
    sample: str
    elapsed: float
    stopped: str = "budget"  # budget | early_stop | reached
    reached: Optional[dict[str, float]] = None  # step, tokens, elapsed when train.stop_at_val_loss was reached


@dataclass
class TrainState:
    """Where a run is. A checkpoint saves it as a plain dict (`asdict`) beside the weights and optimizers."""

    step: int = 0
    epoch: int = 0  # completed epochs: step // steps per epoch
    tokens: int = 0
    elapsed: float = 0.0  # seconds, evaluations and checkpoints included
    best_val_loss: float = math.inf
    best_step: int = 0  # the step whose weights are model.safetensors
    plateau_best: float = math.inf  # the plateau schedule: best val loss, evaluations since, lr factor
    plateau_bad: int = 0
    plateau_scale: float = 1.0
    early_stop_best: float = math.inf  # early stopping: best val loss and evaluations since
    early_stop_bad: int = 0
    nonfinite: int = 0  # NaN/inf steps in a row
    stopped: str = ""  # why the run stopped before its budget: early_stop | reached
    reached: Optional[dict[str, float]] = None  # step, tokens, elapsed when train.stop_at_val_loss was reached
    ranks: list[dict[str, Any]] = field(default_factory=list)  # each rank's sampler and RNG states at the checkpoint

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainState:
        """The state a checkpoint saved (fields an older state.pt lacks keep their defaults)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


@dataclass
class _Budget:
    """When the run ends: a step limit (max_steps, max_epochs), a time limit, or both (whichever comes first)."""

    steps: int  # 0 = no step limit
    seconds: float  # 0 = no time limit
    steps_per_epoch: int
    tokens_per_step: int

    @classmethod
    def of(cls, tc: TrainConfig, train_tokens: int, seq_len: int, world: int) -> _Budget:
        tokens_per_step = tc.batch_size * seq_len * tc.grad_accum_steps * world
        steps_per_epoch = max(1, train_tokens // tokens_per_step)
        limits = [n for n in (tc.max_steps, tc.max_epochs * steps_per_epoch) if n]
        return cls(min(limits) if limits else 0, tc.max_minutes * 60.0, steps_per_epoch, tokens_per_step)

    def fraction(self, step: int, elapsed: float) -> float:
        """How far through the budget, 0 -> 1: the further of steps and time, i.e. the limit that ends the run."""
        return max(step / self.steps if self.steps else 0.0, elapsed / self.seconds if self.seconds else 0.0)

    def done(self, state: TrainState, device: torch.device) -> bool:
        if state.stopped or (self.steps and state.step >= self.steps):
            return True
        return _any_rank(bool(self.seconds) and state.elapsed >= self.seconds, device)  # ranks' clocks differ

    def expected_steps(self, state: TrainState) -> Optional[int]:
        """The steps the run will make: the step limit, or what the time budget allows at the speed so far."""
        limits = [self.steps] if self.steps else []
        if self.seconds and state.elapsed > 0:
            limits.append(int(state.step * self.seconds / state.elapsed))
        return max(state.step, min(limits)) if limits else None


@dataclass
class _Run:
    """This rank's part of a run, as `_build` makes it."""

    cfg: RunConfig
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    amp_dtype: Optional[torch.dtype]  # autocast dtype; None = fp32
    tokenizer: Tokenizer
    shards: dict[str, Shard]
    model: GPT
    train_model: torch.nn.Module  # the model, wrapped in DDP and/or torch.compile
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    sampler: WindowSampler
    val_batches: Optional[list[tuple[torch.Tensor, torch.Tensor]]]  # None: every evaluation covers the whole split
    budget: _Budget

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()

    def evaluated_on(self) -> str:
        if self.val_batches is None:
            return f"the whole val split ({len(self.shards['val']):,} tokens)"
        return f"{len(self.val_batches)} fixed val batches"


class _Logger:
    """train.log, metrics.csv (appended to, so a resumed run continues them), TensorBoard and the progress bar;
    rank 0 only. `resumed_at`: the step of the checkpoint a resumed run starts from (later rows are dropped)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, bar: bool, resumed_at: Optional[int]):
        self.enabled, self.tb, self.log, self.metrics_file = enabled, None, None, None
        self.bar: Optional[Bar] = None  # made at the first progress update, when the total is known (no 0/? bar)
        self.want_bar = bar and enabled
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install tensorboard (or slmkit[tensorboard])") from None
            # purge_step: TensorBoard hides the events a killed run logged after its checkpoint
            self.tb = SummaryWriter(str(run_dir / TENSORBOARD), purge_step=None if resumed_at is None else resumed_at + 1)
        path = run_dir / METRICS
        if resumed_at is not None and path.exists():
            _drop_rows_after(path, resumed_at)
        new = not path.exists()
        self.log = open(run_dir / LOG, "a", encoding="utf-8")
        self.metrics_file = open(path, "a", newline="", encoding="utf-8")
        self.metrics = csv.DictWriter(self.metrics_file, fieldnames=METRICS_FIELDS)
        if new:
            self.metrics.writeheader()

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self.log.flush()
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)  # a pipe (`slm train | tee`) gets each line as it is logged

    def progress(self, step: int, total: Optional[int], text: str) -> None:
        """The bar at `step` of `total` (the steps the budget allows, an estimate under a time budget)."""
        if self.bar is not None:
            self.bar.move_to(step, total, text)
        elif self.want_bar and total:
            bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
            self.bar = Bar(total, "training", unit="step", initial=step, text=text, bar_format=bar_format)

    def row(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.metrics.writerow({k: values.get(k, "") for k in METRICS_FIELDS})
        self.metrics_file.flush()
        if self.tb is not None:
            for key in ("lr", "train_loss", "val_loss", "perplexity", "tokens_per_second"):
                if values.get(key) not in (None, ""):
                    self.tb.add_scalar(key, float(values[key]), values["step"])
            self.tb.flush()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        for f in (self.log, self.metrics_file, self.tb):
            if f is not None:
                f.close()


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep metrics.csv's rows up to `step`: a killed run's rows after its last checkpoint are logged again
    by the resumed run."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if int(r["step"]) <= step]
    if len(kept) < len(rows):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(path, text.getvalue())


def _init_distributed() -> tuple[int, int, int]:
    """rank, world size, local rank from torchrun's environment; joins the process group if there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any rank (so every rank takes the same branch)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _rank_mean(value: float, device: torch.device) -> float:
    """The mean of `value` over ranks."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def _rank_state(sampler: WindowSampler) -> dict[str, Any]:
    """This rank's data position and every RNG state (torch, CUDA, numpy, python)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "sampler": sampler.state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_rng": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached],
        "python_rng": random.getstate(),
    }


def _set_rank_state(state: dict[str, Any], sampler: WindowSampler) -> None:
    sampler.set_state(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    kind, key, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python_rng"])


def _sample(model: GPT, tokenizer: Tokenizer, sc: SampleConfig) -> str:
    """A sample of the recipe's `sample` section (during and after training)."""
    return generate(model, tokenizer, sc.prompt, sc.params())


# ------------------------------------------------------------------------------------------- the pieces


def _build(
    cfg: RunConfig,
    run_dir: Path,
    distributed: tuple[int, int, int],
    init_weights: Optional[Path | str],
    tokenizer: Optional[Tokenizer],
    progress_bar: bool,
) -> _Run:
    """This rank's device, shards (rank 0 prepares them), model, optimizers, samplers and budget."""
    tc = cfg.train
    rank, world, local_rank = distributed
    device = resolve_device(tc.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp_dtype = resolve_precision(tc.precision, device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    if rank == 0:
        prepare(cfg, progress=progress_bar, tokenizer=tokenizer)
    if world > 1:
        dist.barrier()  # the other ranks wait for rank 0's shards
    tokenizer, shards, _ = load_prepared(shard_dir_for(cfg))
    cfg.model.vocab_size = tokenizer.vocab_size
    model = GPT(cfg.model).to(device)
    if init_weights is not None:
        # chat fine-tuning: the chat markers' embedding (and head) rows are new
        load_weights(model, Path(init_weights), grow_vocab=cfg.data.format == "chat")
    optimizers = make_optimizers(model, tc, device)
    seq_len = tc.seq_len or cfg.model.block_size
    sampler, val_batches = _samplers(cfg, shards, tokenizer, seq_len, rank, world)
    if world > 1:
        torch.manual_seed(tc.seed + 7919 * rank)  # different dropout masks per rank
    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if tc.compile:
        train_model = torch.compile(train_model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    budget = _Budget.of(tc, len(shards["train"]), seq_len, world)
    return _Run(cfg, run_dir, rank, world, device, amp_dtype, tokenizer, shards, model, train_model, optimizers,
                scaler, sampler, val_batches, budget)  # fmt: skip


def _samplers(
    cfg: RunConfig, shards: dict[str, Shard], tokenizer: Tokenizer, seq_len: int, rank: int, world: int
) -> tuple[Any, Optional[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """The train sampler and the fixed val batches (None: evaluate on the whole val split)."""
    tc = cfg.train
    seed = tc.seed + 7919 * rank  # each rank draws its own batches: the seeds differ by rank
    if cfg.data.format == "chat":  # windows from a conversation's start, the loss on assistant tokens only
        folder = shard_dir_for(cfg)
        sampler = chat_sampler(folder, "train", tokenizer, seq_len, tc.batch_size, seed)
        val = chat_sampler(folder, "val", tokenizer, seq_len, tc.batch_size, seed + 1)
        whole = tc.eval_full or tc.eval_batches == 0 or tc.stop_at_val_loss > 0
        return sampler, val.every_conversation(0 if whole else tc.eval_batches)
    sampler = WindowSampler(shards["train"], seq_len, tc.batch_size, seed=seed)
    val_sampler = WindowSampler(shards["val"], seq_len, tc.batch_size, seed=seed + 1)
    # fixed batches only while they are fewer tokens than the split: beyond that, the whole split is cheaper and exact
    sampled = tc.eval_batches * tc.batch_size * seq_len * world < len(shards["val"]) - 1
    whole_split = tc.eval_full or tc.eval_batches == 0 or tc.stop_at_val_loss > 0 or not sampled
    return sampler, None if whole_split else [val_sampler.next() for _ in range(tc.eval_batches)]


def _restore(run: _Run) -> TrainState:
    """The run folder's last checkpoint, loaded into the model, optimizers, scaler, sampler and RNGs."""
    path = run.run_dir / STATE
    check_tokenizer(run.run_dir, shard_dir_for(run.cfg) / TOKENIZER)  # the shards may have been rebuilt since
    saved = load_state(path)
    if run.rank == 0:
        remove_temp_files(run.run_dir)  # half-written checkpoint files of the run that was killed
    if "model" in saved:  # the weights of the same step as the optimizer state
        load_state_weights(run.model, saved["model"], path)
    else:
        load_weights(run.model, run.run_dir / LAST)
    if "optimizers" not in saved:
        raise CheckpointError(f"{path} was written by an older slmkit; start a new run")
    if len(saved["ranks"]) != run.world:
        raise CheckpointError(f"{run.run_dir} was trained by {len(saved['ranks'])} processes; resume it with as many")
    for optimizer, optimizer_state in zip(run.optimizers, saved["optimizers"], strict=True):
        base_lrs = [g["base_lr"] for g in optimizer.param_groups]
        optimizer.load_state_dict(optimizer_state)
        for group, base_lr in zip(optimizer.param_groups, base_lrs):
            group["base_lr"] = base_lr  # the config's lr, should it have been edited
    if run.scaler.is_enabled() and saved["scaler"]:
        run.scaler.load_state_dict(saved["scaler"])
    state = TrainState.from_dict(saved)
    state.epoch = state.step // run.budget.steps_per_epoch
    _set_rank_state(state.ranks[run.rank], run.sampler)
    return state


def _set_lr(run: _Run, state: TrainState) -> float:
    """Every group's lr for the coming step, from the schedule; returns train.lr times the schedule's factor."""
    tc, budget, step = run.cfg.train, run.budget, state.step
    # how far through the budget the step will end (with a time budget, at the mean speed so far)
    after = budget.fraction(step + 1, state.elapsed * (step + 1) / step if step else 0.0)
    warmup = warmup_progress(tc, step, after, time_budget=budget.seconds > 0)
    multiplier = lr_multiplier(tc, warmup, budget.fraction(step, state.elapsed), state.epoch, state.plateau_scale)
    for optimizer in run.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * multiplier
    return tc.lr * multiplier


def _train_step(run: _Run, state: TrainState, log: _Logger) -> tuple[float, Optional[float]]:
    """One optimizer step: the schedule's lr, grad_accum_steps micro-batches, clipping, the non-finite check.

    Returns the lr and the step's mean train loss (None when the step was skipped as non-finite).
    """
    tc, scaler = run.cfg.train, run.scaler
    lr = _set_lr(run, state)
    _set_window(run, state)
    step_loss = torch.zeros((), device=run.device)
    for micro in range(tc.grad_accum_steps):
        x, y = run.sampler.next()
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        # DDP averages gradients over ranks on the last micro-batch only
        last_micro = micro == tc.grad_accum_steps - 1
        sync = contextlib.nullcontext() if run.world == 1 or last_micro else run.train_model.no_sync()
        with sync:
            with run.autocast():
                _, loss = run.train_model(x, y)
            scaler.scale(loss / tc.grad_accum_steps if tc.grad_accum_steps > 1 else loss).backward()
        step_loss += loss.detach()
    step_loss /= tc.grad_accum_steps
    for optimizer in run.optimizers:
        scaler.unscale_(optimizer)
    train_loss = _finite_loss(run, step_loss)
    if train_loss is None:
        state.nonfinite += 1
        if state.nonfinite >= tc.max_nonfinite_steps:
            raise TrainingError(
                f"{state.nonfinite} steps in a row had a NaN/inf loss or gradient (last at step {state.step + 1}); "
                f"lower --train.lr or raise --train.warmup_steps; the last good checkpoint is in {run.run_dir}"
            )
        log.info(f"step {state.step + 1}: non-finite loss or gradient norm, step skipped")
    else:
        state.nonfinite = 0
        for optimizer in run.optimizers:
            scaler.step(optimizer)
    scaler.update()
    for optimizer in run.optimizers:
        optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.epoch = state.step // run.budget.steps_per_epoch
    state.tokens += run.budget.tokens_per_step
    return lr, train_loss


def _set_window(run: _Run, state: TrainState) -> None:
    """train.full_context_fraction: over the budget's last fraction, block_size windows at the same tokens per step."""
    tc, block = run.cfg.train, run.cfg.model.block_size
    if not tc.full_context_fraction or run.sampler.seq_len == block:
        return
    if run.budget.fraction(state.step, state.elapsed) >= 1.0 - tc.full_context_fraction:
        run.sampler.resize(block, tc.batch_size * run.sampler.seq_len // block)


def _finite_loss(run: _Run, step_loss: torch.Tensor) -> Optional[float]:
    """The step's loss after clipping the gradients; None if it or the gradient norm is NaN/inf on any rank."""
    params = [p for p in run.model.parameters()]
    clip, scaled = run.cfg.train.grad_clip, run.scaler.is_enabled()
    checked = [step_loss]  # with fp16 the scaler skips overflowing steps itself; a NaN/inf loss is always an error
    if clip:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        checked += [] if scaled else [grad_norm]
    elif not scaled:
        checked.append(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    values = torch.stack(checked).tolist()  # one host-device sync for all of them
    nonfinite = not all(math.isfinite(v) for v in values)
    return None if _any_rank(nonfinite, run.device) else values[0]


@torch.no_grad()
def _evaluate(run: _Run) -> float:
    """The val loss: over the whole split (the same on every rank), or the mean over the fixed batches and ranks."""
    if run.val_batches is None:
        return mean_loss(run.model, run.shards["val"].tokens, batch_size=run.cfg.train.batch_size)
    run.model.eval()
    with run.autocast():
        losses = [run.model(x.to(run.device), y.to(run.device))[1].item() for x, y in run.val_batches]
    run.model.train()
    return _rank_mean(float(np.mean(losses)), run.device)


def _after_evaluation(run: _Run, state: TrainState, val_loss: float) -> list[str]:
    """Best weights, the plateau schedule, early stopping and the target, after an evaluation; the events."""
    tc, events = run.cfg.train, []
    if not math.isfinite(val_loss):  # a diverged model never overwrites the best weights
        return events
    if val_loss < state.best_val_loss:
        state.best_val_loss, state.best_step = val_loss, state.step
        if run.rank == 0:
            save_weights(run.model, run.run_dir / BEST, metadata={"step": str(state.step)})
    if tc.schedule == "plateau" and plateau_update(state, val_loss, tc):
        events.append("lr_reduced")
    if early_stop_update(state, val_loss, tc):
        state.stopped = "early_stop"
    if tc.stop_at_val_loss and val_loss <= tc.stop_at_val_loss:
        state.stopped = "reached"
        state.reached = {"step": state.step, "tokens": state.tokens, "elapsed": state.elapsed}
    return events + ([state.stopped] if state.stopped else [])


def _save_checkpoint(run: _Run, state: TrainState) -> None:
    """Every rank's sampler and RNG states into `state`, then rank 0 writes the checkpoint."""
    mine = _rank_state(run.sampler)
    state.ranks = [mine]
    if run.world > 1:
        state.ranks = [None] * run.world
        dist.all_gather_object(state.ranks, mine)
    if run.rank == 0:
        saved = {**asdict(state), "optimizers": [o.state_dict() for o in run.optimizers], "scaler": run.scaler.state_dict()}
        save_checkpoint(run.run_dir, run.model, saved, run.cfg.train.keep_last_k)


def _metrics_row(
    state: TrainState, run: _Run, lr: float, train_loss: float, val_loss: Optional[float], speed: float, events: list[str]
) -> dict[str, Any]:
    """One row of metrics.csv (and TensorBoard); val_loss None: a log step without an evaluation."""
    return {
        "step": state.step,
        "epoch": f"{state.step / run.budget.steps_per_epoch:.4f}",
        "tokens": state.tokens,
        "lr": f"{lr:.6g}",
        "train_loss": f"{train_loss:.6f}",
        "val_loss": "" if val_loss is None else f"{val_loss:.6f}",
        "perplexity": "" if val_loss is None else f"{math.exp(min(val_loss, 700)):.4f}",
        "tokens_per_second": f"{speed:.1f}",
        "elapsed": f"{state.elapsed:.2f}",
        "event": " ".join(events),
    }


@dataclass
class _Window:
    """The train loss and throughput since the last metrics row."""

    start: float
    tokens: int = 0
    loss_sum: float = 0.0
    losses: int = 0

    def add(self, loss: Optional[float], tokens: int) -> None:
        self.tokens += tokens
        if loss is not None:
            self.loss_sum, self.losses = self.loss_sum + loss, self.losses + 1

    def flush(self) -> tuple[float, float]:
        """(mean train loss, tokens per second) of the window, and a new window from now."""
        now = _now()
        result = (self.loss_sum / self.losses if self.losses else float("nan"), self.tokens / max(now - self.start, 1e-9))
        self.start, self.tokens, self.loss_sum, self.losses = now, 0, 0.0, 0
        return result


def _fit(run: _Run, state: TrainState, log: _Logger) -> None:
    """Train until the budget is spent or a stop condition holds: a metrics row every log_interval steps,
    an evaluation and a checkpoint every eval_interval steps and at the end."""
    tc = run.cfg.train
    start = _now() - state.elapsed
    window = _Window(_now())
    last = run.budget.done(state, run.device)  # under DDP each call is a collective: once per step, and after an eval
    while not last:
        lr, loss = _train_step(run, state, log)
        window.add(loss, run.budget.tokens_per_step)
        state.elapsed = _now() - start
        last = run.budget.done(state, run.device)
        if run.rank == 0 and tc.sample_interval and state.step % tc.sample_interval == 0:
            text = _sample(run.model, run.tokenizer, run.cfg.sample)  # its own seeded generator: training RNG untouched
            run.model.train()
            log.info(f"sample at step {state.step}:\n{run.cfg.sample.prompt}{text}")
        evaluate_now = state.step % tc.eval_interval == 0 or last
        if not (evaluate_now or state.step % tc.log_interval == 0):
            continue
        train_loss, speed = window.flush()
        log.progress(state.step, run.budget.expected_steps(state), f"loss {train_loss:.3f}, {speed:,.0f} tok/s, lr {lr:.2e}")
        val_loss, events = None, []
        if evaluate_now:
            if last:
                log.info(f"step {state.step}: end of the budget, final evaluation on {run.evaluated_on()}")
            val_loss = _evaluate(run)
            state.elapsed = _now() - start  # a target reached counts the evaluation's time
            log.info(f"step {state.step}: train {train_loss:.4f}, val {val_loss:.4f}")
            events = _after_evaluation(run, state, val_loss)
        log.row(_metrics_row(state, run, lr, train_loss, val_loss, speed, events))
        if val_loss is not None and math.isfinite(val_loss):  # a diverged model never overwrites the last checkpoint
            _save_checkpoint(run, state)  # after its row: a resumed run drops the rows logged after its checkpoint
        if state.stopped:
            log.info(f"stopping at step {state.step}: {state.stopped.replace('_', ' ')}")
        if evaluate_now:  # time spent on evaluation and checkpoints counts against the budget (after a step that
            # only logged, `last` stands: a budget that runs out there still ends with the final evaluation)
            state.elapsed = _now() - start
            last = run.budget.done(state, run.device)


def _check_replicas(run: _Run, log: _Logger) -> None:
    """Under DDP, check once (cheaply) that every rank ends with the same weights."""
    if run.world == 1:
        return
    checksum = torch.stack([p.detach().double().sum() for p in run.model.parameters()]).sum().reshape(1)
    sums = [torch.zeros_like(checksum) for _ in range(run.world)]
    dist.all_gather(sums, checksum)
    if any(not s.equal(checksum) for s in sums):
        raise TrainingError(f"the {run.world} processes ended with different weights; report this as a bug")
    log.info(f"all {run.world} ranks hold identical weights (checksum {checksum.item():.6f})")


def _final_report(run: _Run, state: TrainState, log: _Logger) -> tuple[EvalResult, str]:
    """The best weights on the whole val split (as `slm eval` reports them), a sample of them, the loss plot."""
    load_weights(run.model, run.run_dir / BEST)
    if run.cfg.data.format == "chat":
        final = _chat_report(run, state, log)
        text = ""
        plot_runs([run.run_dir], run.run_dir / PLOT)
        return final, text
    tokens, text_bytes = split_tokens(run.cfg, "val")
    # the evaluations covered the whole split: reuse the best one's loss (best_step 0: a state.pt of the
    # previous version, whose best may have come from fixed batches)
    known = state.best_val_loss if run.val_batches is None and state.best_step else None
    if known is None:
        log.info(f"final evaluation: the best weights on the whole val split ({len(tokens):,} tokens)")
    final = evaluate_tokens(run.model, run.tokenizer, tokens, text_bytes, "val split", run.cfg.train.batch_size, known,
                            progress=log.want_bar)
    best = f" (step {state.best_step})" if state.best_step else ""
    log.info(
        f"done: {state.step} steps, {state.tokens:,} tokens in {state.elapsed:.0f}s; best weights{best} on the "
        f"{final.summary()}"
    )
    text = _sample(run.model, run.tokenizer, run.cfg.sample)
    log.info(f"sample from the best model:\n{run.cfg.sample.prompt}{text}")
    plot_runs([run.run_dir], run.run_dir / PLOT)
    tensorboard_hparams(log.tb, run.cfg, {"best_val_loss": state.best_val_loss, **final.metrics, "steps": state.step})
    return final, text


def _chat_report(run: _Run, state: TrainState, log: _Logger) -> EvalResult:
    """The best weights' masked loss (assistant tokens only) over every val conversation."""
    tokens, mask, text_bytes = chat_split(run.cfg, "val")
    final = evaluate_chat(run.model, run.tokenizer, tokens, mask, text_bytes, "val split", run.sampler.seq_len,
                          run.cfg.train.batch_size)  # fmt: skip
    log.info(f"done: {state.step} steps, {state.tokens:,} tokens in {state.elapsed:.0f}s; best weights on the {final.summary()}")
    return final


# -------------------------------------------------------------------------------------------- the run


def train(
    cfg: Optional[RunConfig] = None,
    out: Optional[Path | str] = None,
    resume: Optional[Path | str] = None,
    progress_bar: bool = True,
    init_weights: Optional[Path | str] = None,
    tokenizer: Optional[Tokenizer] = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train a GPT as `cfg` says into run folder `out` (default runs/<name>).

    With `resume`, continue that run folder from its last checkpoint (cfg defaults to its config.yaml).
    With `init_weights`, start from those safetensors weights instead of a random init, and with
    `tokenizer`, tokenize the data with it instead of fitting one (fine-tuning).
    A folder `out` that is not empty is refused (nothing in it touched) unless `overwrite`: then the
    earlier run's files are deleted when the new run writes its first ones.
    Under torchrun, every rank runs this; rank 0 alone writes files.
    """
    if resume is not None:
        run_dir = Path(resume)
        cfg = cfg or resume_config(run_dir)
    else:
        cfg = cfg or RunConfig()
        run_dir = Path(out) if out is not None else Path("runs") / cfg.name
        check_new_run(run_dir, overwrite)
    distributed = _init_distributed()
    log: Optional[_Logger] = None
    try:
        run = _build(cfg, run_dir, distributed, init_weights, tokenizer, progress_bar)
        if resume is not None:
            state = _restore(run)
        else:
            state = TrainState()
            if run.rank == 0:
                write_run_files(run_dir, cfg, run.tokenizer, overwrite)
        resumed_at = state.step if resume is not None else None
        log = _Logger(run_dir, run.rank == 0, cfg.train.tensorboard, progress_bar, resumed_at)
        log.info(_start_message(run, state, resumed=resume is not None))
        _fit(run, state, log)
        log.close_bar()
        _check_replicas(run, log)
        final, text = _final_report(run, state, log) if run.rank == 0 else (None, "")
        if run.world > 1:
            dist.barrier()
    finally:
        if log is not None:
            log.close()
        if distributed[1] > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return TrainResult(run_dir, state.step, state.tokens, state.best_val_loss, final, text, state.elapsed,
                       stopped=state.stopped or "budget", reached=state.reached)  # fmt: skip


def _start_message(run: _Run, state: TrainState, resumed: bool) -> str:
    tc, n_train = run.cfg.train, len(run.shards["train"])
    return (
        f"{'resuming' if resumed else 'training'} {run.cfg.name}: {run.model.num_parameters() / 1e6:.2f}M parameters "
        f"on {run.device} x{run.world}, {tc.optimizer}, {tc.schedule}, {run.amp_dtype or 'fp32'}, train {n_train:,} "
        f"tokens ({run.budget.steps_per_epoch} steps/epoch), val {len(run.shards['val']):,} tokens, evaluated on "
        f"{run.evaluated_on()} -> {run.run_dir}"
    )
