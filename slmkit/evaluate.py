"""Loss, perplexity and bits per token/byte of a model over a whole token array."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .config import RunConfig
from .data.prepare import prepare, shard_dir_for
from .data.shards import Shard, read_manifest
from .data.sources import Corpus
from .errors import DataError
from .model import GPT
from .runs import load_run
from .tokenizer import Tokenizer


@torch.no_grad()
def mean_loss(model: GPT, tokens: np.ndarray, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over every token of `tokens` after the first.

    The array is cut into consecutive, non-overlapping windows of block_size
    (the last one shorter), so every token is predicted exactly once.
    """
    was_training = model.training
    model.eval()
    device = model.device
    T = model.config.block_size
    n = len(tokens) - 1  # tokens that have a target
    total, count = 0.0, 0
    starts = list(range(0, n, T))
    full = [s for s in starts if s + T <= n]
    for i in range(0, len(full), batch_size):
        idx = np.asarray(full[i : i + batch_size])[:, None] + np.arange(T + 1)
        window = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64)).to(device)
        _, loss = model(window[:, :-1], window[:, 1:])
        total += loss.item() * window[:, 1:].numel()
        count += window[:, 1:].numel()
    if n % T:  # the remainder, one short window
        s = starts[-1]
        window = torch.from_numpy(np.asarray(tokens[s : n + 1], dtype=np.int64))[None].to(device)
        _, loss = model(window[:, :-1], window[:, 1:])
        total += loss.item() * window[:, 1:].numel()
        count += window[:, 1:].numel()
    model.train(was_training)
    return total / max(count, 1)


def report(loss: float, tokens: int, text_bytes: int) -> dict[str, float]:
    """loss, perplexity, bits per token and bits per byte (comparable across tokenizers)."""
    bits_per_token = loss / math.log(2)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700)),
        "bits_per_token": bits_per_token,
        "bits_per_byte": bits_per_token * tokens / max(text_bytes, 1),
    }


@dataclass
class EvalResult:
    """What `slm eval` prints: where the tokens came from and the report over them."""

    source: str  # a split name ("val") or the evaluated file/folder
    tokens: int  # tokens predicted
    text_bytes: int  # UTF-8 bytes of the evaluated text
    metrics: dict[str, float]  # loss, perplexity, bits_per_token, bits_per_byte
    dropped_chars: int = 0  # characters outside the tokenizer's vocabulary left out (--data.unknown=drop)

    def summary(self) -> str:
        m = self.metrics
        dropped = f" ({self.dropped_chars:,} characters the tokenizer lacks were dropped)" if self.dropped_chars else ""
        return (
            f"{self.source}: {self.tokens:,} tokens, {self.text_bytes:,} bytes{dropped}: loss {m['loss']:.4f} nats/token, "
            f"perplexity {m['perplexity']:.3f}, {m['bits_per_token']:.4f} bits/token, "
            f"{m['bits_per_byte']:.4f} bits/byte"
        )


def split_tokens(cfg: RunConfig, split: str) -> tuple[np.ndarray, int]:
    """Tokens and text bytes of a split of the run's own shards (prepared first if missing)."""
    shard_dir = shard_dir_for(cfg)
    manifest = read_manifest(shard_dir)
    if manifest is None:
        prepare(cfg)
        manifest = read_manifest(shard_dir) or {}
    splits = manifest.get("splits", {})
    if split not in splits or not (Path(shard_dir) / f"{split}.bin").is_file():
        raise DataError(
            f"data source {cfg.data.source!r} has no {split!r} split (it has: {', '.join(splits)}); "
            "pick --split val, or evaluate a file with --data.source PATH"
        )
    tokens = Shard(Path(shard_dir) / f"{split}.bin").tokens
    return tokens, int(splits[split]["bytes"])


def text_tokens(cfg: RunConfig, tokenizer: Tokenizer, source: str, unknown: str = "") -> tuple[np.ndarray, int, int]:
    """A text file, folder or glob normalized as the run's data and tokenized with its tokenizer:
    (ids, text bytes, characters dropped). `unknown` ("error" or "drop", default the run's data.unknown):
    what to do with characters the tokenizer refuses.

    Documents are joined with the end-of-text id, with one in front so the first token is predicted too.
    """
    data = dataclasses.replace(cfg.data, source=source, unknown=unknown or cfg.data.unknown)
    docs = list(Corpus(data).all_documents())
    if not docs:
        raise DataError(f"--data.source {source} has no text to evaluate")
    dropped = 0
    if data.unknown == "drop":
        kept = [tokenizer.drop_unknown(doc) for doc in docs]
        docs, dropped = [doc for doc, _ in kept], sum(n for _, n in kept)
    ids = [tokenizer.eot_id]
    for doc_ids in tokenizer.encode_batch(docs):  # the tokenizer's batched (parallel) encoder
        ids += doc_ids + [tokenizer.eot_id]
    ids.pop()  # no separator after the last document
    return np.asarray(ids, dtype=np.int64), sum(len(d.encode("utf-8")) for d in docs), dropped


def evaluate_run(
    run_dir: Path | str,
    source: Optional[str] = None,
    split: str = "val",
    int8: bool = False,
    batch_size: int = 32,
    unknown: str = "",
) -> EvalResult:
    """Loss, perplexity and bits per byte of a run's best model over a whole split or a text source
    (`unknown="drop"`: without the characters its tokenizer lacks, counted in the result)."""
    run = load_run(run_dir, int8=int8)
    dropped = 0
    if source is not None:
        tokens, text_bytes, dropped = text_tokens(run.config, run.tokenizer, source, unknown)
        name = source
    else:
        tokens, text_bytes = split_tokens(run.config, split)
        name = f"{split} split"
    if len(tokens) < 2:
        raise DataError(f"{name} has fewer than 2 tokens; there is nothing to evaluate")
    loss = mean_loss(run.model, tokens, batch_size=batch_size)
    return EvalResult(name, len(tokens) - 1, text_bytes, report(loss, len(tokens) - 1, text_bytes), dropped)
