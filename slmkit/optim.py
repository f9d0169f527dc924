"""Muon: momentum SGD whose update for each weight matrix is orthogonalized (Newton-Schulz).

Muon (Jordan et al., 2024; used by the modded-nanogpt speedrun) replaces each 2-D
update G by the nearest semi-orthogonal matrix U V^T of its SVD, approximated with
five Newton-Schulz iterations. It is meant for the hidden matrices only; embeddings,
the output head, norms and biases stay with AdamW (`make_muon_groups` splits them).
"""

from __future__ import annotations

import torch
from torch import Tensor


def orthogonalize(G: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately U V^T for G = U S V^T, by a quintic Newton-Schulz iteration (fp32)."""
    # coefficients chosen to push every singular value towards 1 as fast as possible
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.float()
    transposed = X.size(0) > X.size(1)
    if transposed:  # iterate on the wide form: X @ X.T is then the smaller product
        X = X.T
    X = X / (X.norm() + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return (X.T if transposed else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Orthogonalized momentum for 2-D parameters: p -= lr * scale * NS(nesterov momentum of grad)."""

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
    ):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, ns_steps=ns_steps)
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
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                update = orthogonalize(g, group["ns_steps"])
                # keep the update's RMS comparable across shapes (tall matrices get a larger step)
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)
        return loss
