"""A GPT in one file: pre-norm blocks, causal SDPA attention, an MLP, tied embeddings, a KV cache.

The defaults are GPT-2's (learned positions, LayerNorm, tanh-GELU MLP 4x wide, biases, tied
embeddings); `model.pos_embedding`, `norm`, `mlp`, `d_ff`, `qk_norm`, `zero_init_proj` and
`tie_embeddings` choose the alternatives (see ModelConfig); `n_kv_head`, `head_dim`, `rope_theta`,
`norm_eps` and `qk_norm_gain` are what pretrained Llama/Qwen3 checkpoints add.

Parameter names follow Hugging Face GPT-2 (`transformer.wte`, `transformer.h.0.attn.c_attn`,
`transformer.ln_f`, `lm_head`) so weights convert without a table (only HF's Conv1D
layers store their weights transposed). SwiGLU adds `mlp.c_gate` (c_fc is the up projection).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
from torch.nn import functional as F

from .config import ModelConfig

GPTConfig = ModelConfig  # the model's config is the recipe's `model` section
RMS_EPS = 1e-6  # RMSNorm's epsilon (Llama's), fixed so it does not depend on the dtype


class KVCache:
    """Keys and values of the tokens seen so far, per layer, with one slot per sequence, each
    preallocated to block_size.

    Slot s holds `lengths[s]` tokens; a forward's row for slot s puts its tokens at positions
    lengths[s], lengths[s] + 1, ... (its own positions and its own keys: slots never see each other).
    """

    def __init__(self, config: GPTConfig, batch_size: int = 1, device=None, dtype=torch.float32):
        # (L, slots, n_kv, T, hs): with grouped-query attention only the key/value heads are stored
        shape = (config.n_layer, batch_size, config.kv_heads, config.block_size, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = [0] * batch_size
        self._step: Optional[_CacheStep] = None

    def reset(self, slot: Optional[int] = None) -> None:
        """Forget every cached token of `slot` (default: of every slot); the buffers are reused."""
        for s in range(len(self.lengths)) if slot is None else [slot]:
            self.lengths[s] = 0

    def begin(self, slots: list[int], T: int) -> "_CacheStep":
        """Plan a forward of T new tokens for each slot in `slots` (one row each); end() commits it."""
        self._step = _CacheStep(self, slots, T)
        return self._step

    def end(self) -> None:
        """The planned forward is done: its slots grow by T tokens."""
        step, self._step = self._step, None
        for s in step.slots:
            self.lengths[s] += step.T


class _CacheStep:
    """One forward through a KVCache: where each row's tokens go, and which keys each query sees."""

    def __init__(self, cache: KVCache, slots: list[int], T: int):
        self.cache, self.slots, self.T = cache, slots, T
        starts = [cache.lengths[s] for s in slots]
        self.start = starts[0] if len(set(starts)) == 1 else None  # one start for every row: slices
        self.contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        self.keys = max(starts) + T  # keys read: the longest slot's
        device = cache.k.device
        starts_t = torch.tensor(starts, device=device)
        self.positions = starts_t[:, None] + torch.arange(T, device=device)  # (B, T)
        self.rows = torch.tensor(slots, device=device)
        self._flat: Optional[torch.Tensor] = None  # flat_rows(), made once for every layer
        self.mask: Optional[torch.Tensor] = None  # (B, 1, T, keys) bool: query i of row b sees keys <= its position
        self.bias: Optional[torch.Tensor] = None  # T == 1: the mask as (B, 1, 1, keys) 0 / -inf, added to the scores
        self.causal = max(starts) == 0 and self.start is not None
        if not self.causal and not (self.start is not None and T == 1):
            mask = (torch.arange(self.keys, device=device)[None, None, :] <= self.positions[:, :, None])[:, None]
            if T == 1:  # rows of different lengths decoding: the decode attention adds it (cheaper than masking)
                self.bias = torch.zeros(mask.shape, dtype=cache.k.dtype, device=device).masked_fill_(~mask, float("-inf"))
            else:
                self.mask = mask

    def flat_rows(self, shape: torch.Size) -> torch.Tensor:
        """(B * n_kv * T,) row of each new key in a layer's cache seen as (slots * n_kv * block_size, hs),
        in k's (B, n_kv, T) order."""
        if self._flat is None:
            _, n_kv, block, _ = shape
            heads = torch.arange(n_kv, device=self.rows.device)[None, :, None]
            self._flat = ((self.rows[:, None, None] * n_kv + heads) * block + self.positions[:, None, :]).reshape(-1)
        return self._flat

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new k, v (B, n_kv, T, hs) of `layer`; return every key and value the rows see (B, n_kv, keys, hs)."""
        ck, cv = self.cache.k[layer], self.cache.v[layer]  # (slots, n_kv, block_size, hs)
        span = slice(self.slots[0], self.slots[0] + len(self.slots))
        if self.contiguous and self.start is not None:  # one sequence, or a batch in step: slices
            ck[span, :, self.start : self.start + self.T] = k
            cv[span, :, self.start : self.start + self.T] = v
        else:  # one index_copy_ into the (slots * n_kv * block_size, hs) rows (an indexed put on dims 0 and 2: ~10x slower)
            where = self.flat_rows(ck.shape)
            ck.view(-1, ck.size(-1)).index_copy_(0, where, k.reshape(-1, k.size(-1)))
            cv.view(-1, cv.size(-1)).index_copy_(0, where, v.reshape(-1, v.size(-1)))
        if self.contiguous:  # views, no copies (rows of different lengths: the mask hides the keys past each)
            return ck[span, :, : self.keys], cv[span, :, : self.keys]
        return ck[:, :, : self.keys].index_select(0, self.rows), cv[:, :, : self.keys].index_select(0, self.rows)


class _ReLUSquared(torch.autograd.Function):
    """relu(x)**2 with a one-kernel backward, 2 * relu(x) * grad.

    Autograd's own graph for F.relu(x).square() runs pow's and threshold's backward kernels,
    ~10x slower on CPU (3.1 vs 0.26 ms fwd+bwd on a (16, 64, 512) tensor, 1 thread).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r.square()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return (r + r).mul_(grad)


class _RMSNormFn(torch.autograd.Function):
    """x / rms(x) over the last dim (no weight), with a hand-written backward.

    F.rms_norm is a composite of ~6 ops on CPU whose backward is ~2x slower than this one:
    with y = x / rms(x), dx = (g - y * mean(g * y)) / rms(x).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        inv_rms = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))  # (..., 1)
        y = x * inv_rms
        ctx.save_for_backward(y, inv_rms)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, inv_rms = ctx.saved_tensors
        return (grad - y * (grad * y).mean(-1, keepdim=True)).mul_(inv_rms), None


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = RMS_EPS) -> torch.Tensor:
    """RMSNorm over the last dim, equal to F.rms_norm(x, (C,), weight, eps) with a faster backward."""
    y = _RMSNormFn.apply(x, eps)
    return y if weight is None else y * weight


class RMSNorm(nn.Module):
    """RMSNorm with a learned gain (no bias); state dict as nn.RMSNorm's (`weight`)."""

    def __init__(self, dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def _norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.eps("rmsnorm"))  # weight only: RMSNorm has no bias
    return nn.LayerNorm(config.n_embd, eps=config.eps("layernorm"), bias=config.bias)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on (B, nh, T, hs) with cos/sin (T, hs/2): rotate the pairs (x[i], x[i + hs/2])."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through scaled_dot_product_attention (grouped-query with n_kv_head);
    a KV-cached decoding step (one new token a row) through decode()."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.kv_heads, config.head_size
        q_size, kv_size = self.n_head * self.head_size, self.n_kv_head * self.head_size
        self.sizes = (q_size, kv_size, kv_size)
        self.c_attn = nn.Linear(config.n_embd, sum(self.sizes), bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(q_size, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.qk_norm, self.qk_norm_gain, self.eps = config.qk_norm, config.qk_norm_gain, config.eps("rmsnorm")
        if self.qk_norm_gain:  # Qwen3's q_norm / k_norm: one gain per head dimension, shared by the heads
            self.q_norm, self.k_norm = RMSNorm(self.head_size, self.eps), RMSNorm(self.head_size, self.eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        cache: Optional[KVCache] = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        hs = self.head_size
        q, k, v = self.c_attn(x).split(self.sizes, dim=2)
        # (B, T, nh * hs) -> (B, nh, T, hs); k, v have n_kv heads
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        if self.qk_norm_gain:
            q, k = self.q_norm(q), self.k_norm(k)
        elif self.qk_norm:
            q, k = rms_norm(q, eps=self.eps), rms_norm(k, eps=self.eps)  # no weight
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        mask, causal = None, True
        if cache is not None:
            step = cache._step
            k, v = step.update(layer, k, v)  # (B, n_kv, keys, hs): this row's cached keys, then the new ones
            if T == 1:  # decoding
                return self.resid_dropout(self.c_proj(self.decode(q, k, v, step.bias)))
            mask, causal = step.mask, step.causal
        if self.n_kv_head != self.n_head:  # query head j reads k/v head j // (nh / n_kv) (SDPA's enable_gqa: no ONNX)
            k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))  # (B, nh, keys, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * hs)
        return self.resid_dropout(self.c_proj(y))

    def decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention of one new query per row, q (B, nh, 1, hs), over the row's cached keys and values k, v
        (B, n_kv, keys, hs), plus `bias` (B, 1, 1, keys) (-inf past a row's own keys) when rows differ in length
        -> (B, 1, nh * hs).

        Two matmuls and a softmax, grouped-query attention without repeating k and v: a 50-row step of the
        0.82 M and 10.8 M runs took 2-5% less than with SDPA, whose CPU kernel at one query a row costs about
        the same memory traffic. Every decoding step takes it, one sequence or a batch, so a sequence's logits
        are the same arithmetic wherever it is decoded; prompts and training (T > 1) take SDPA.
        """
        B, nh, _, hs = q.shape
        # the query heads sharing a key/value head are its rows: (B, n_kv, nh / n_kv, hs), no repeated k, v
        q = q.reshape(B, self.n_kv_head, nh // self.n_kv_head, hs) * hs**-0.5
        scores = q @ k.transpose(-2, -1)  # (B, n_kv, nh / n_kv, keys)
        if bias is not None:
            scores = scores + bias
        return (scores.softmax(-1) @ v).reshape(B, 1, nh * hs)


class MLP(nn.Module):
    """Position-wise feed-forward, d_ff wide: GELU (GPT-2's tanh form or the exact erf), ReLU² or SwiGLU."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        d_ff = config.d_ff or 4 * config.n_embd
        self.kind = config.mlp
        self.c_fc = nn.Linear(config.n_embd, d_ff, bias=config.bias)  # the up projection
        if self.kind == "swiglu":
            self.c_gate = nn.Linear(config.n_embd, d_ff, bias=config.bias)
        elif self.kind in ("gelu", "gelu_exact"):
            self.gelu = nn.GELU(approximate="tanh" if self.kind == "gelu" else "none")  # GPT-2's GELU, or nanoGPT's
        self.c_proj = nn.Linear(d_ff, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind in ("gelu", "gelu_exact"):
            h = self.gelu(self.c_fc(x))
        elif self.kind == "relu2":
            h = _ReLUSquared.apply(self.c_fc(x))
        else:
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope=None, cache: Optional[KVCache] = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed positions of "Attention is all you need": sin on even, cos on odd dims."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class GPT(nn.Module):
    """Decoder-only transformer language model."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("GPTConfig.vocab_size must be set (from the tokenizer) before building the model")
        config.validate()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos_embedding == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=_norm(config),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied input/output embeddings
        # Fixed tables are buffers computed here, never saved (persistent=False): not parameters.
        if config.pos_embedding == "sinusoidal":
            # The paper adds the table to embeddings scaled by sqrt(d_model); dividing the table instead
            # keeps that ratio and makes it a drop-in for wpe (what the HF export writes).
            table = sinusoidal_table(config.block_size, config.n_embd) / math.sqrt(config.n_embd)
            self.register_buffer("pos_table", table, persistent=False)
        if config.pos_embedding == "rotary":
            hs = config.head_size
            inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs))
            angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)  # (T, hs/2)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.apply(self._init_weights)
        # GPT-2: scale residual output projections by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights counted once; fixed position tables are not parameters).

        non_embedding=True leaves out the tables that are only looked up, never multiplied:
        the position embeddings, and the token embeddings when lm_head is not tied to them.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.transformer.wte.weight.numel()
        return n

    @property
    def device(self) -> torch.device:
        """Where the model lives (read off the token embedding: an int8 model's block Linears hold packed weights)."""
        return self.transformer.wte.weight.device

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty KV cache for this model (block_size tokens, on the model's device and dtype)."""
        return KVCache(self.config, batch_size, device=self.device, dtype=self.transformer.wte.weight.dtype)

    def forward(
        self,
        idx: torch.Tensor,
        targets: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        slots: Optional[list[int]] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """idx (B, T) token ids -> logits (B, T, vocab); mean cross-entropy if targets (B, T) given.

        With a `cache`, row b of idx continues the tokens cached in slot slots[b] (default: slot b):
        its positions start at that slot's length, the slot grows by T, and only the last
        position's logits are computed: (B, 1, vocab).
        """
        B, T = idx.shape
        step = None if cache is None else cache.begin(list(range(B)) if slots is None else list(slots), T)
        if step is not None and step.keys > self.config.block_size:
            cache._step = None
            raise ValueError(f"sequence length {step.keys} exceeds block_size {self.config.block_size}")
        if step is None and T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        # positions: a slice when every row starts at the same place, else one row per slot (B, T)
        where = slice(0, T) if step is None else slice(step.start, step.start + T) if step.start is not None else step.positions
        x = self.transformer.wte(idx)  # (B, T, C)
        kind = self.config.pos_embedding
        rope = None
        if kind == "learned":
            x = x + self.transformer.wpe.weight[where]  # the rows wpe(positions) looks up
        elif kind == "sinusoidal":
            x = x + self.pos_table[where]
        elif kind == "rotary":
            rope = (self.rope_cos[where], self.rope_sin[where])  # (T, hs/2) or (B, T, hs/2)
            if rope[0].dim() == 3:
                rope = (rope[0][:, None], rope[1][:, None])  # (B, 1, T, hs/2): the same for every head
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, rope, cache, layer)
        if cache is not None:
            cache.end()
            if targets is None:
                x = x[:, -1:]  # generation needs the next token's logits only
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        if self.config.logit_softcap:  # bounded logits: no token's logit runs away early in training
            cap = self.config.logit_softcap
            logits = torch.tanh(logits / cap) * cap
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward): 6N plus attention (PaLM appendix B), whose q.k and
        weights.v products are n_head * head_size wide (not n_embd when head_dim is set, as in Qwen3)."""
        c = self.config
        n = self.num_parameters(non_embedding=True)
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_size * c.block_size

