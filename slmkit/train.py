"""The training loop: optimizer, schedule, precision, budget, evals, samples, checkpoints, DDP."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .atomic import remove_temp_files
from .config import RunConfig, SampleConfig
from .data.prepare import load_prepared, prepare, shard_dir_for
from .data.sampler import WindowSampler
from .errors import CheckpointError, ConfigError, TrainingError
from .evaluate import mean_loss, report
from .generate import generate
from .model import GPT
from .optim import early_stop_update, lr_multiplier, make_optimizers, plateau_update
from .plot import plot_runs
from .runs import (
    BEST,
    LAST,
    LOG,
    METRICS,
    PLOT,
    STATE,
    TENSORBOARD,
    check_new_run,
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
    final_val: dict[str, float]  # loss/perplexity/bits on the full val split, best weights (rank 0 only)
    sample: str
    elapsed: float
    stopped: str = "budget"  # budget | early_stop | reached
    reached: Optional[dict[str, float]] = None  # step, tokens, elapsed when train.stop_at_val_loss was reached


class _Logger:
    """train.log, metrics.csv (appended to, so a resumed run continues them) and TensorBoard; rank 0 only."""

    def __init__(self, run_dir: Path, bar: Optional[tqdm], enabled: bool, tensorboard: bool):
        self.bar, self.enabled, self.tb = bar, enabled, None
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install tensorboard (or slmkit[tensorboard])") from None
            self.tb = SummaryWriter(str(run_dir / TENSORBOARD))
        self.log = open(run_dir / LOG, "a", encoding="utf-8")
        new = not (run_dir / METRICS).exists()
        self.metrics_file = open(run_dir / METRICS, "a", newline="", encoding="utf-8")
        self.metrics = csv.DictWriter(self.metrics_file, fieldnames=METRICS_FIELDS)
        if new:
            self.metrics.writeheader()

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self.log.flush()
        (self.bar.write if self.bar is not None else print)(message)

    def row(self, **values: Any) -> None:
        if not self.enabled:
            return
        self.metrics.writerow({k: values.get(k, "") for k in METRICS_FIELDS})
        self.metrics_file.flush()
        if self.tb is not None:
            for key in ("lr", "train_loss", "val_loss", "perplexity", "tokens_per_second"):
                if values.get(key) not in (None, ""):
                    self.tb.add_scalar(key, float(values[key]), values["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.log.close()
            self.metrics_file.close()
            if self.tb is not None:
                self.tb.close()


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
    tc = cfg.train
    rank, world, local_rank = _init_distributed()
    device = resolve_device(tc.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp_dtype = resolve_precision(tc.precision, device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)

    if rank == 0:
        prepare(cfg, tokenizer=tokenizer)
    if world > 1:
        dist.barrier()  # the other ranks wait for rank 0's shards
    tokenizer, shards, _ = load_prepared(shard_dir_for(cfg))
    cfg.model.vocab_size = tokenizer.vocab_size
    model = GPT(cfg.model).to(device)
    if init_weights is not None:
        load_weights(model, Path(init_weights))
    optimizers = make_optimizers(model, tc, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    seq_len = tc.seq_len or cfg.model.block_size
    # each rank its own data; rank 0 of a single process keeps the seeds of earlier versions
    sampler = WindowSampler(shards["train"], seq_len, tc.batch_size, seed=tc.seed + 7919 * rank)
    val_sampler = WindowSampler(shards["val"], seq_len, tc.batch_size, seed=tc.seed + 1 + 7919 * rank)
    eval_full = tc.eval_full or tc.eval_batches == 0 or tc.stop_at_val_loss > 0
    val_batches = [] if eval_full else [val_sampler.next() for _ in range(tc.eval_batches)]
    if world > 1:
        torch.manual_seed(tc.seed + 7919 * rank)  # different dropout masks per rank

    progress: dict[str, Any] = {
        "step": 0, "tokens": 0, "elapsed": 0.0, "best_val_loss": float("inf"),
        "plateau_best": float("inf"), "plateau_bad": 0, "plateau_scale": 1.0,
        "early_stop_best": float("inf"), "early_stop_bad": 0, "nonfinite": 0, "stopped": "", "reached": None,
    }  # fmt: skip
    if resume is not None:
        state = load_state(run_dir / STATE)
        if rank == 0:
            remove_temp_files(run_dir)  # half-written checkpoint files of the run that was killed
        if "model" in state:  # the weights of the same step as the optimizer state
            load_state_weights(model, state["model"], run_dir / STATE)
        else:
            load_weights(model, run_dir / LAST)
        if "optimizers" not in state:
            raise CheckpointError(f"{run_dir / STATE} was written by an older slmkit; start a new run")
        if len(state["ranks"]) != world:
            raise CheckpointError(f"{run_dir} was trained by {len(state['ranks'])} processes; resume it with as many")
        for optimizer, saved in zip(optimizers, state["optimizers"], strict=True):
            base_lrs = [g["base_lr"] for g in optimizer.param_groups]
            optimizer.load_state_dict(saved)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["base_lr"] = base_lr  # the config's lr, should it have been edited
        if scaler.is_enabled() and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        _set_rank_state(state["ranks"][rank], sampler)
        progress.update({k: state[k] for k in progress})
    elif rank == 0:
        write_run_files(run_dir, cfg, tokenizer, overwrite)

    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if tc.compile:
        train_model = torch.compile(train_model)

    tokens_per_step = tc.batch_size * seq_len * tc.grad_accum_steps * world
    steps_per_epoch = max(1, len(shards["train"]) // tokens_per_step)
    step_limits = [n for n in (tc.max_steps, tc.max_epochs * steps_per_epoch) if n]
    total_steps = min(step_limits) if step_limits else 0
    budget_s = tc.max_minutes * 60.0
    bar = None
    if progress_bar and rank == 0:
        bar = tqdm(
            total=total_steps or None,
            initial=progress["step"],
            unit="step",
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
        )
    log = _Logger(run_dir, bar, enabled=rank == 0, tensorboard=tc.tensorboard)
    log.info(
        f"{'resuming' if resume else 'training'} {cfg.name}: {model.num_parameters() / 1e6:.2f}M parameters on "
        f"{device} x{world}, {tc.optimizer}, {tc.schedule}, {amp_dtype or 'fp32'}, train {len(shards['train']):,} "
        f"tokens ({steps_per_epoch} steps/epoch), val {len(shards['val']):,} tokens -> {run_dir}"
    )
    autocast = (
        (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else contextlib.nullcontext
    )

    @torch.no_grad()
    def evaluate() -> float:
        if eval_full:
            return mean_loss(model, shards["val"].tokens, batch_size=tc.batch_size)  # the same on every rank
        model.eval()
        with autocast():
            losses = [model(x.to(device), y.to(device))[1].item() for x, y in val_batches]
        model.train()
        return _rank_mean(float(np.mean(losses)), device)

    def done() -> bool:
        if progress["stopped"] or (total_steps and progress["step"] >= total_steps):
            return True
        return _any_rank(bool(budget_s) and progress["elapsed"] >= budget_s, device)  # ranks' clocks differ

    def fraction() -> float:
        """Progress through the budget, 0 -> 1 (steps if they are set, else time)."""
        return progress["step"] / total_steps if total_steps else progress["elapsed"] / budget_s

    params = [p for p in model.parameters()]
    model.train()
    start = time.perf_counter() - progress["elapsed"]
    window_start, window_tokens = time.perf_counter(), 0
    loss_sum, loss_count = 0.0, 0
    last = done()  # under DDP each call is a collective: once per step, and again after an eval
    while not last:
        step = progress["step"]
        multiplier = lr_multiplier(tc, step, fraction(), step // steps_per_epoch, progress["plateau_scale"])
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * multiplier
        lr = tc.lr * multiplier
        step_loss = torch.zeros((), device=device)
        for micro in range(tc.grad_accum_steps):
            x, y = sampler.next()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # DDP averages gradients over ranks on the last micro-batch only
            last_micro = micro == tc.grad_accum_steps - 1
            sync = contextlib.nullcontext() if world == 1 or last_micro else train_model.no_sync()
            with sync:
                with autocast():
                    _, loss = train_model(x, y)
                scaler.scale(loss / tc.grad_accum_steps if tc.grad_accum_steps > 1 else loss).backward()
            step_loss += loss.detach()
        step_loss /= tc.grad_accum_steps
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
        checked = [step_loss]  # with fp16 the scaler skips overflowing steps itself; a NaN/inf loss is always an error
        if tc.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            checked += [] if scaler.is_enabled() else [grad_norm]
        elif not scaler.is_enabled():
            checked.append(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
        values = torch.stack(checked).tolist()  # one host-device sync for all of them
        train_loss_value = values[0]
        nonfinite = not all(math.isfinite(v) for v in values)
        if _any_rank(nonfinite, device):
            progress["nonfinite"] += 1
            if progress["nonfinite"] >= tc.max_nonfinite_steps:
                log.close()
                raise TrainingError(
                    f"{progress['nonfinite']} steps in a row had a NaN/inf loss or gradient (last at step {step + 1}); "
                    f"lower --train.lr or raise --train.warmup_steps; the last good checkpoint is in {run_dir}"
                )
            log.info(f"step {step + 1}: non-finite loss or gradient norm, step skipped")
        else:
            progress["nonfinite"] = 0
            for optimizer in optimizers:
                scaler.step(optimizer)
            loss_sum += train_loss_value
            loss_count += 1
        scaler.update()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        progress["step"] = step + 1
        progress["tokens"] += tokens_per_step
        window_tokens += tokens_per_step
        progress["elapsed"] = time.perf_counter() - start

        last = done()
        log_now = progress["step"] % tc.log_interval == 0 or last
        eval_now = progress["step"] % tc.eval_interval == 0 or last
        if rank == 0 and tc.sample_interval and progress["step"] % tc.sample_interval == 0:
            text = _sample(model, tokenizer, cfg.sample)  # a seeded generator of its own: training RNG untouched
            model.train()
            log.info(f"sample at step {progress['step']}:\n{cfg.sample.prompt}{text}")
        if not (log_now or eval_now):
            continue
        train_loss = loss_sum / loss_count if loss_count else float("nan")
        now = time.perf_counter()
        tokens_per_second = window_tokens / max(now - window_start, 1e-9)
        window_start, window_tokens, loss_sum, loss_count = now, 0, 0.0, 0
        if bar is not None:
            if not total_steps and progress["elapsed"] > 0:  # estimate the steps the time budget allows
                bar.total = max(progress["step"], int(progress["step"] * budget_s / progress["elapsed"]))
            bar.set_postfix_str(f"loss {train_loss:.3f}, {tokens_per_second:,.0f} tok/s, lr {lr:.2e}")
            bar.update(progress["step"] - bar.n)
        val_loss, events = None, []
        if eval_now:
            val_loss = evaluate()
            progress["elapsed"] = time.perf_counter() - start  # a target reached counts the evaluation's time
            log.info(f"step {progress['step']}: train {train_loss:.4f}, val {val_loss:.4f}")
            if math.isfinite(val_loss):  # a diverged model never overwrites the last good checkpoint
                if val_loss < progress["best_val_loss"]:
                    progress["best_val_loss"] = val_loss
                    if rank == 0:
                        save_weights(model, run_dir / BEST, metadata={"step": str(progress["step"])})
                if tc.schedule == "plateau" and plateau_update(progress, val_loss, tc):
                    events.append("lr_reduced")
                if early_stop_update(progress, val_loss, tc):
                    progress["stopped"] = "early_stop"
                if tc.stop_at_val_loss and val_loss <= tc.stop_at_val_loss:
                    progress["stopped"] = "reached"
                    progress["reached"] = {k: progress[k] for k in ("step", "tokens", "elapsed")}
                events += [progress["stopped"]] if progress["stopped"] else []
                mine = _rank_state(sampler)
                ranks = [mine]
                if world > 1:
                    ranks = [None] * world
                    dist.all_gather_object(ranks, mine)
                if rank == 0:
                    state = {
                        "optimizers": [o.state_dict() for o in optimizers],
                        "scaler": scaler.state_dict(),
                        "ranks": ranks,
                        **progress,
                    }
                    save_checkpoint(run_dir, model, state, tc.keep_last_k)
        log.row(
            step=progress["step"],
            epoch=f"{progress['step'] / steps_per_epoch:.4f}",
            tokens=progress["tokens"],
            lr=f"{lr:.6g}",
            train_loss=f"{train_loss:.6f}",
            val_loss="" if val_loss is None else f"{val_loss:.6f}",
            perplexity="" if val_loss is None else f"{math.exp(min(val_loss, 700)):.4f}",
            tokens_per_second=f"{tokens_per_second:.1f}",
            elapsed=f"{progress['elapsed']:.2f}",
            event=" ".join(events),
        )
        if progress["stopped"]:
            log.info(f"stopping at step {progress['step']}: {progress['stopped'].replace('_', ' ')}")
        # time spent on evaluation and checkpoints counts against the budget
        progress["elapsed"] = time.perf_counter() - start
        last = done()
    if bar is not None:
        bar.close()
        log.bar = None

    if world > 1:  # DDP keeps replicas identical; check it once, cheaply
        checksum = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1)
        sums = [torch.zeros_like(checksum) for _ in range(world)]
        dist.all_gather(sums, checksum)
        if any(not s.equal(checksum) for s in sums):
            raise TrainingError(f"the {world} processes ended with different weights; report this as a bug")
        log.info(f"all {world} ranks hold identical weights (checksum {checksum.item():.6f})")

    final, text = {}, ""
    if rank == 0:  # final report: best weights on the whole val split
        load_weights(model, run_dir / BEST)
        val_tokens = shards["val"].tokens
        loss = mean_loss(model, val_tokens, batch_size=tc.batch_size)
        final = report(loss, len(val_tokens) - 1, tokenizer.token_bytes(val_tokens[1:].tolist()))
        per_char = f", {final['bits_per_token']:.4f} bits/char" if tokenizer.kind == "char" else ""
        log.info(
            f"done: {progress['step']} steps, {progress['tokens']:,} tokens in {progress['elapsed']:.0f}s; "
            f"full val split: loss {final['loss']:.4f} nats/token{per_char}, {final['bits_per_byte']:.4f} bits/byte, "
            f"perplexity {final['perplexity']:.2f}"
        )
        text = _sample(model, tokenizer, cfg.sample)
        log.info(f"sample from the best model:\n{cfg.sample.prompt}{text}")
        plot_runs([run_dir], run_dir / PLOT)
    log.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(
        run_dir=run_dir,
        steps=progress["step"],
        tokens=progress["tokens"],
        best_val_loss=progress["best_val_loss"],
        final_val=final,
        sample=text,
        elapsed=progress["elapsed"],
        stopped=progress["stopped"] or "budget",
        reached=progress["reached"],
    )
