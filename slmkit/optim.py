"""Muon: momentum SGD whose update for each weight matrix is orthogonalized (Newton-Schulz).

Muon (Jordan et al., 2024; used by the modded-nanogpt speedrun) replaces each 2-D
update G by the nearest semi-orthogonal matrix U V^T of its SVD, approximated with
five Newton-Schulz iterations. It is meant for the hidden matrices only; embeddings,
the output head, norms and biases stay with AdamW (`make_optimizers` splits them).

Also here: building the optimizers train.optimizer names, and the learning-rate schedules.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor, nn

from .config import TrainConfig


def orthogonalize(G: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately U V^T for G = U S V^T, by a quintic Newton-Schulz iteration (fp32).

    G may be a stack (..., m, n) of same-shape matrices: each is orthogonalized on its own, in one
    batched matmul per iteration (fewer, larger ops than one call per matrix).
    """
    # coefficients chosen to push every singular value towards 1 as fast as possible
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.float()
    transposed = X.size(-2) > X.size(-1)
    if transposed:  # iterate on the wide form: X @ X.T is then the smaller product
        X = X.mT
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    shape = X.shape
    X = X.reshape(-1, *shape[-2:])  # (batch, m, n), m <= n
    m, n = X.shape[-2:]
    if steps and 2 * n >= 3 * m:
        # Every iterate is Q X for an (m, m) polynomial Q in G = X X^T, and X_k X_k^T = Q G Q^T: iterate on
        # the (m, m) side only and touch the (m, n) matrix twice. (4n + 34m) m^2 FLOPs for 5 steps
        # against (20n + 10m) m^2: ~30% fewer for the 128 x 344 and 128 x 384 matrices. Square ones would pay
        # more (n = m: 38 m^3 against 30 m^3), so they keep the direct form below.
        G = torch.bmm(X, X.mT)  # (batch, m, m)
        A, Q = G, None
        for k in range(steps):
            P = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
            P.diagonal(dim1=-2, dim2=-1).add_(a)  # a I + b A + c A^2
            Q = P if Q is None else torch.bmm(P, Q)
            if k < steps - 1:
                A = torch.bmm(torch.bmm(Q, G), Q.mT)
        X = torch.bmm(Q, X)
    else:
        for _ in range(steps):
            A = torch.bmm(X, X.mT)  # (batch, m, m)
            # X <- a X + (b A + c A^2) X, the scalings folded into baddbmm (no separate elementwise passes)
            X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)
    X = X.reshape(shape)
    return (X.mT if transposed else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Orthogonalized momentum for 2-D parameters: p -= lr * scale * NS(nesterov momentum of grad).

    beta2 > 0 is NorMuon (Li et al., 2025): each row (output neuron) of the orthogonalized update is divided
    by the root of an EMA (decay beta2) of its mean square, then the whole update is rescaled to its
    Frobenius norm before that division, so lr keeps Muon's meaning and only the direction changes.
    """

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        beta2: float = 0.0,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, ns_steps=ns_steps, beta2=beta2
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape: dict[tuple[int, ...], list[Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(tuple(p.shape), []).append(p)
            for shape, params in by_shape.items():  # one batched orthogonalization per shape
                grads = [p.grad for p in params]
                bufs, row_moments = [], []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(state["momentum_buffer"])
                    if group["beta2"]:  # NorMuon: one second moment per row (output neuron)
                        if "row_second_moment" not in state:
                            state["row_second_moment"] = p.new_zeros(p.shape[0], 1)
                        row_moments.append(state["row_second_moment"])
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads)
                g = torch._foreach_add(grads, bufs, alpha=group["momentum"]) if group["nesterov"] else bufs
                updates = orthogonalize(torch.stack(g), group["ns_steps"])  # (k, m, n)
                if group["beta2"]:
                    updates = _normalize_rows(updates, row_moments, group["beta2"])
                updates = updates.unbind(0)
                # keep the update's RMS comparable across shapes (tall matrices get a larger step)
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                if group["weight_decay"]:
                    torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
                torch._foreach_add_(params, updates, alpha=-group["lr"] * scale)
        return loss


def _normalize_rows(O: Tensor, row_moments: list[Tensor], beta2: float) -> Tensor:
    """NorMuon's step on a stack O (k, m, n) of orthogonalized updates: each row over the root of its
    second-moment EMA (row_moments: k tensors (m, 1), updated in place), rescaled to O's Frobenius norm."""
    torch._foreach_lerp_(row_moments, list(O.square().mean(-1, keepdim=True).unbind(0)), 1 - beta2)
    # bias correction is left out: the rescaling below cancels any common factor of v
    normalized = O / (torch.stack(row_moments).sqrt() + 1e-8)
    norms = torch.linalg.matrix_norm(O, keepdim=True) / (torch.linalg.matrix_norm(normalized, keepdim=True) + 1e-12)
    return normalized * norms


def _skip_dynamo_import() -> None:
    """Mark torch.optim.Optimizer's `torch._disable_dynamo` methods (add_param_group, zero_grad, state_dict, ...)
    as already wrapped. Their first call, like Adam's step wrapper (see _EagerStep), imports torch._dynamo:
    ~90 modules and ~2 s of CPU at process start (6% of speedrun-cpu's run), only to keep torch.compile from
    tracing them. Nothing here compiles an optimizer method (train.compile compiles the model only), so the
    plain method is what runs either way."""
    marker = torch._disable_dynamo(lambda: None).__code__  # the lazy wrapper's code, shared by every method
    for method in vars(torch.optim.Optimizer).values():
        fn = getattr(method, "__wrapped__", None)
        if fn is not None and getattr(method, "__code__", None) is marker:
            setattr(fn, "__dynamo_disable", fn)  # what the wrapper's first call would cache, minus the import


class _EagerStep:
    """torch's Adam/AdamW step without its _use_grad_for_differentiable wrapper, which imports torch._dynamo
    for graph breaks only torch.compile needs; no_grad is all it sets for a non-differentiable optimizer."""

    @torch.no_grad()
    def step(self, closure=None):
        return inspect.unwrap(super().step)(self, closure)


class _Adam(_EagerStep, torch.optim.Adam):
    pass


class _AdamW(_EagerStep, torch.optim.AdamW):
    pass


def make_optimizers(model: nn.Module, cfg: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    """The optimizers train.optimizer names; each group keeps its base lr in `base_lr`.

    adamw/adam: weight decay on matrices only (not on norms, biases, or embeddings unless
    train.decay_embeddings).
    muon: Muon for the 2-D matrices inside the transformer blocks, AdamW for everything else.
    train.embedding_lr (if set and not train.lr): the embedding tables in an AdamW group of their own at that lr.
    Neither building nor stepping them imports torch._dynamo (see _skip_dynamo_import).
    """
    _skip_dynamo_import()
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    embedding_lr = cfg.embedding_lr or cfg.lr
    hidden, decay, no_decay, embed = [], [], [], []
    for name, p in model.named_parameters():  # tied weights appear once
        if cfg.optimizer == "muon" and p.dim() == 2 and ".h." in f".{name}" and id(p) not in embeddings:
            hidden.append(p)
        elif id(p) in embeddings and embedding_lr != cfg.lr:
            embed.append(p)
        elif p.dim() >= 2 and (cfg.decay_embeddings or id(p) not in embeddings):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": no_decay, "weight_decay": 0.0, "base_lr": cfg.lr},
        # the token (and learned position) tables at their own lr; a tied head shares the table's
        {"params": embed, "weight_decay": cfg.weight_decay if cfg.decay_embeddings else 0.0, "base_lr": embedding_lr},
    ]
    adam_class = _Adam if cfg.optimizer == "adam" else _AdamW
    # fused kernels exist for CUDA and CPU; they update every tensor in one call
    fused = device.type in ("cuda", "cpu")
    optimizers: list[torch.optim.Optimizer] = [
        adam_class([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)
    ]
    if hidden:
        muon_group = {"params": hidden, "base_lr": cfg.muon_lr}
        optimizers.append(Muon([muon_group], lr=cfg.muon_lr, momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps,
                               beta2=cfg.muon_beta2))  # fmt: skip
    return optimizers


# With a time budget, warmup ends by this fraction of the budget at the latest (unless train.warmup_fraction
# says otherwise): a run too slow to reach warmup_steps in its minutes still trains at its peak lr and decays.
TIME_WARMUP_FRACTION = 0.1


def warmup_progress(cfg: TrainConfig, step: int, fraction_after: float, time_budget: bool) -> float:
    """How far step `step` (0-based) takes the linear warmup, 0 -> 1 (1 or more: warmed up).

    `fraction_after` is how far through the budget the run will be when the step ends.
    train.warmup_fraction > 0: warmup over that fraction of the budget. Otherwise over warmup_steps,
    and with a time budget also over at most TIME_WARMUP_FRACTION of it (whichever ends first).
    """
    if cfg.warmup_fraction > 0:
        return fraction_after / cfg.warmup_fraction
    by_steps = (step + 1) / cfg.warmup_steps if cfg.warmup_steps else 1.0
    return max(by_steps, fraction_after / TIME_WARMUP_FRACTION) if time_budget else by_steps


def lr_multiplier(cfg: TrainConfig, warmup: float, fraction: float, epoch: int, plateau_scale: float) -> float:
    """The schedule's factor on each group's base lr, for a step `warmup` through the warmup (see
    warmup_progress), `fraction` through the budget (0 -> 1) and in epoch `epoch`.

    Linear warmup for every schedule, then
    constant: 1; cosine: 1 until the last cooldown_fraction of the budget, then a cosine down to
    min_lr/lr (cooldown_fraction 1: over the whole budget); exponential: gamma ** epoch;
    plateau: the product of the reductions so far.
    """
    if warmup < 1.0:
        return warmup
    if cfg.schedule == "cosine":
        decay_start = 1.0 - cfg.cooldown_fraction
        progress = min(max((fraction - decay_start) / cfg.cooldown_fraction, 0.0), 1.0)
        floor = cfg.min_lr / cfg.lr
        return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - floor)
    if cfg.schedule == "exponential":
        return cfg.gamma**epoch
    if cfg.schedule == "plateau":
        return plateau_scale
    return 1.0


def plateau_update(state: Any, val_loss: float, cfg: TrainConfig) -> bool:
    """Reduce-on-plateau after an evaluation: state.plateau_scale *= factor once `patience` evals pass
    without improvement (as torch's ReduceLROnPlateau: on the (patience+1)-th bad one). True if reduced.

    `state` is the run's train.TrainState (not imported: train imports this module).
    """
    if val_loss < state.plateau_best:
        state.plateau_best, state.plateau_bad = val_loss, 0
        return False
    state.plateau_bad += 1
    if state.plateau_bad > cfg.plateau_patience:
        state.plateau_scale *= cfg.plateau_factor
        state.plateau_bad = 0
        return True
    return False


def early_stop_update(state: Any, val_loss: float, cfg: TrainConfig) -> bool:
    """Early stopping after an evaluation (`state`: the run's train.TrainState): True once
    `early_stop_patience` evals in a row have not beaten state.early_stop_best by more than early_stop_min_delta."""
    if val_loss < state.early_stop_best - cfg.early_stop_min_delta:
        state.early_stop_best, state.early_stop_bad = val_loss, 0
        return False
    state.early_stop_bad += 1
    return bool(cfg.early_stop_patience) and state.early_stop_bad >= cfg.early_stop_patience
