"""Loss, perplexity and bits per token/byte of a model over a whole token array.

A chat run (data.format chat) evaluated on chat data (its own split, or `.jsonl` conversations, `hf:`,
a generated set) is scored by the masked loss: the assistant's tokens and their end markers only,
over windows that start at each conversation, as its training counts them (evaluate_chat).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .config import RunConfig
from .data.chat import ChatSampler, encode_source, is_chat_source, mask_path, masked_loss
from .data.prepare import prepare, shard_dir_for
from .data.sampler import windows
from .data.shards import Shard, read_manifest
from .data.sources import Corpus
from .errors import DataError
from .model import GPT
from .progress import Bar
from .runs import Run, load_run
from .tokenizer import Tokenizer


@torch.no_grad()
def mean_loss(model: GPT, tokens: np.ndarray, batch_size: int = 32, progress: bool = False) -> float:
    """Mean next-token cross-entropy (nats) over every token of `tokens` after the first, read in `windows`
    of block_size (data.sampler.windows), each from scratch. `progress`: a bar over the tokens on a terminal."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with Bar(max(len(tokens) - 1, 0), "evaluating", unit="tok", enabled=progress, unit_scale=True) as bar:
        for window in windows(tokens, model.config.block_size, batch_size):
            window = window.to(model.device)
            _, loss = model(window[:, :-1], window[:, 1:])
            total += loss.item() * window[:, 1:].numel()
            count += window[:, 1:].numel()
            bar.update(window[:, 1:].numel())
    model.train(was_training)
    return total / max(count, 1)


def report(loss: float, tokens: int, text_bytes: int) -> dict[str, float]:
    """loss, perplexity, bits per token and bits per byte (comparable across lossless tokenizers)."""
    bits_per_token = loss / math.log(2)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700)),
        "bits_per_token": bits_per_token,
        "bits_per_byte": bits_per_token * tokens / max(text_bytes, 1),
    }


@dataclass
class EvalResult:
    """What `slm eval` and the end of `slm train` print: where the tokens came from and the report over them."""

    source: str  # a split name ("val split") or the evaluated file/folder
    tokens: int  # tokens predicted
    text_bytes: int  # UTF-8 bytes of the evaluated text (end-of-text markers not counted)
    metrics: dict[str, float]  # loss, perplexity, bits_per_token, bits_per_byte
    dropped_chars: int = 0  # characters outside the tokenizer's vocabulary left out (--data.unknown=drop)
    # lossy tokenizers (an unknown token): the share of text_bytes it could not represent; None when lossless.
    # Their bits/byte is then not comparable: an unknown token stands for a whole word at the price of one token.
    unknown_share: Optional[float] = None

    def summary(self) -> str:
        m = self.metrics
        dropped = f" ({self.dropped_chars:,} characters the tokenizer lacks were dropped)" if self.dropped_chars else ""
        line = (
            f"{self.source}: {self.tokens:,} tokens, {self.text_bytes:,} bytes{dropped}: loss {m['loss']:.4f} nats/token, "
            f"perplexity {m['perplexity']:.3f}, {m['bits_per_token']:.4f} bits/token, "
            f"{m['bits_per_byte']:.4f} bits/byte"
        )
        if self.unknown_share is not None:
            line += (
                f" (not comparable across tokenizers: {self.unknown_share:.2%} of the bytes became the unknown token)"
            )
        return line


def unknown_share(tokenizer: Tokenizer, tokens: np.ndarray, text_bytes: int) -> Optional[float]:
    """The share of `text_bytes` that `tokens` do not represent (they became the unknown token); None if the
    tokenizer is lossless (has no unknown token)."""
    unk = tokenizer.unk_id  # None for the lossless kinds
    if unk is None:
        return None
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=tokenizer.vocab_size)
    counts[[unk, tokenizer.eot_id]] = 0
    present = np.flatnonzero(counts)
    # every known token of these kinds decodes on its own to exactly the text it came from
    represented = sum(int(counts[i]) * tokenizer.token_bytes([int(i)]) for i in present)
    return max(0.0, 1.0 - represented / max(text_bytes, 1))


def evaluate_tokens(
    model: GPT,
    tokenizer: Tokenizer,
    tokens: np.ndarray,
    text_bytes: int,
    source: str,
    batch_size: int = 32,
    loss: Optional[float] = None,
    dropped_chars: int = 0,
    progress: bool = False,
) -> EvalResult:
    """Loss, perplexity, bits per token and bits per byte of `model` predicting every token of `tokens`
    after the first, for a text of `text_bytes` UTF-8 bytes (its end-of-text markers not counted).

    `loss`: the mean loss over exactly these tokens when it is already known (no second pass);
    `dropped_chars`: characters left out of the text because the tokenizer lacks them; `progress`: a bar on a
    terminal.
    """
    if len(tokens) < 2:
        raise DataError(f"{source} has fewer than 2 tokens; there is nothing to evaluate")
    if loss is None:
        loss = mean_loss(model, tokens, batch_size, progress)
    predicted = len(tokens) - 1
    metrics = report(loss, predicted, text_bytes)
    return EvalResult(source, predicted, text_bytes, metrics, dropped_chars, unknown_share(tokenizer, tokens, text_bytes))


CHAT_LOSS = "(chat: the loss on the assistant's tokens only)"  # what a masked evaluation's source says
TEXT_LOSS = "(every token)"  # a chat run evaluated on plain text


def evaluate_chat(
    model: GPT,
    tokenizer: Tokenizer,
    tokens: np.ndarray,
    mask: np.ndarray,
    text_bytes: int,
    source: str,
    seq_len: int,
    batch_size: int = 32,
    dropped_chars: int = 0,
) -> EvalResult:
    """The masked loss of `model` over chat `tokens` and their `mask` (data/chat.py): one window of
    `seq_len` from each conversation's start, the assistant's tokens counted, as in training.

    `text_bytes`: UTF-8 bytes of the assistant's text (for bits per byte).
    """
    sampler = ChatSampler(tokens, mask, seq_len, batch_size, 0, tokenizer.eot_id, where=source)
    loss, counted = masked_loss(model, sampler.every_conversation())
    return EvalResult(f"{source} {CHAT_LOSS}", counted, text_bytes, report(loss, counted, text_bytes), dropped_chars)


def split_tokens(cfg: RunConfig, split: str, tokenizer: Optional[Tokenizer] = None) -> tuple[np.ndarray, int]:
    """Tokens and text bytes of a split of the run's own shards (prepared first if missing, with
    `tokenizer` when given: a fine-tuned run's)."""
    shard_dir = shard_dir_for(cfg)
    manifest = read_manifest(shard_dir)
    if manifest is None:
        prepare(cfg, tokenizer=tokenizer)
        manifest = read_manifest(shard_dir) or {}
    splits = manifest.get("splits", {})
    if split not in splits or not (Path(shard_dir) / f"{split}.bin").is_file():
        raise DataError(
            f"data source {cfg.data.source!r} has no {split!r} split (it has: {', '.join(splits)}); "
            "pick --split val, or evaluate a file with --data.source PATH"
        )
    tokens = Shard(Path(shard_dir) / f"{split}.bin").tokens
    return tokens, int(splits[split]["bytes"])


def chat_split(cfg: RunConfig, split: str, tokenizer: Optional[Tokenizer] = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Tokens, loss mask and assistant-text bytes of a split of a chat run's shards (see split_tokens)."""
    tokens, text_bytes = split_tokens(cfg, split, tokenizer)
    return tokens, Shard(mask_path(shard_dir_for(cfg), split)).tokens, text_bytes


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
    batch_size: int = 0,
    unknown: str = "",
    progress: bool = True,
) -> EvalResult:
    """Loss, perplexity and bits per byte of a run's best model over a whole split or a text source
    (`unknown="drop"`: without the characters its tokenizer lacks, counted in the result). A chat run on
    chat data: the masked loss (evaluate_chat), and its source says so; on plain text: every token.

    batch_size 0: the run's train.batch_size, as the report at the end of its training. `progress`: a bar
    over the tokens on a terminal.
    """
    run = load_run(run_dir, int8=int8)
    batch_size = batch_size or run.config.train.batch_size
    if run.config.data.format == "chat" and (source is None or is_chat_source(source)):
        return _evaluate_chat_run(run, source, split, batch_size, unknown)
    dropped = 0
    if source is not None:
        tokens, text_bytes, dropped = text_tokens(run.config, run.tokenizer, source, unknown)
        name = source if run.config.data.format != "chat" else f"{source} {TEXT_LOSS}"
    else:
        tokens, text_bytes = split_tokens(run.config, split)
        name = f"{split} split"
    return evaluate_tokens(run.model, run.tokenizer, tokens, text_bytes, name, batch_size, dropped_chars=dropped,
                           progress=progress)


def _evaluate_chat_run(run: Run, source: Optional[str], split: str, batch_size: int, unknown: str) -> EvalResult:
    """A chat run's masked loss over a split of its chat shards or over the conversations of `source`."""
    cfg, dropped = run.config, 0
    if source is not None:
        tokens, mask, text_bytes, dropped = encode_source(run.tokenizer, source, unknown or cfg.data.unknown)
        name = source
    else:
        tokens, mask, text_bytes = chat_split(cfg, split, run.tokenizer)
        name = f"{split} split"
    seq_len = cfg.train.seq_len or cfg.model.block_size  # the training windows'
    return evaluate_chat(run.model, run.tokenizer, tokens, mask, text_bytes, name, seq_len, batch_size, dropped)
