"""Chat data (`data.format=chat`): conversations -> token shards with a loss mask -> training windows.

Sources: a .jsonl file, a folder or glob of them (one record a line, see chat.parse_record),
`hf:<dataset>` whose rows have a `messages` column (or `prompt` and `completion`), or a generated
set (`arithmetic-reversal`, sources/instructions.py). The last
val_fraction of the conversations is the val split (an HF dataset's own validation split when
it has one, else every k-th row).

A shard folder of chat data holds, beside the usual train.bin/val.bin, tokenizer.json (with its
chat_template.json) and manifest.json ("format": "chat"), a mask per split, {split}.mask.bin:
per token PROMPT, TRAINED (an assistant token: the loss counts it) or START (the first token of a
conversation). `ChatSampler` draws windows that start at a conversation (the conversations after
it fill the rest: packed) and sets the targets the loss must not count to IGNORE.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from ..atomic import atomic_write_text, current_umask
from ..chat import Message, parse_line, parse_record
from ..config import DataConfig, RunConfig
from ..errors import DataError
from ..tokenizer import ChatTokenizer, Tokenizer, fit_tokenizer
from .shards import SPLITS, VERSION, Shard, ShardWriter, dtype_for
from .sources import source_kind
from .sources.files import resolve_files
from .sources.hf import HF_VAL_SPLITS, hf_dataset_id, load_hf

PROMPT, TRAINED, START = 0, 1, 2
IGNORE = -100  # F.cross_entropy's ignore_index: the model's loss skips these targets


def mask_path(shard_dir: Path | str, split: str) -> Path:
    """The loss mask beside a split's tokens."""
    return Path(shard_dir) / f"{split}.mask.bin"


# ---------------------------------------------------------------- reading conversations


def _file_conversations(path: Path) -> Iterator[list[Message]]:
    if path.suffix != ".jsonl":
        raise DataError(f"{path}: chat data is JSONL (one {{\"messages\": [...]}} record a line); got a {path.suffix or 'plain'} file")
    with open(path, encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield parse_line(line, f"{path}:{lineno}")
        except UnicodeDecodeError:
            raise DataError(f"{path}:{lineno + 1} is not UTF-8 text; convert the file") from None


def _hf_conversations(source: str, val_fraction: float) -> dict[str, Iterator[list[Message]]]:
    repo, config, streaming = hf_dataset_id(source)
    splits = load_hf(repo, config, streaming)
    if "train" not in splits:
        raise DataError(f"Hugging Face dataset {repo!r} has no train split (it has {', '.join(splits)})")
    val_name = next((name for name in HF_VAL_SPLITS if name in splits), None)

    def rows(name: str) -> Iterator[list[Message]]:
        for i, row in enumerate(splits[name]):
            yield parse_record(dict(row), f"{repo} {name} row {i}")

    if val_name is not None:
        return {"train": rows("train"), "val": rows(val_name)}
    every = max(2, round(1 / val_fraction))

    def every_kth(val: bool) -> Iterator[list[Message]]:
        return (m for i, m in enumerate(rows("train")) if (i % every == every - 1) == val)

    return {"train": every_kth(False), "val": every_kth(True)}


def _generated_records(source: str) -> Optional[list[dict]]:
    """The records of a generated set (sources/instructions.py), None for any other source."""
    return getattr(source_kind(source).open(DataConfig(source=source)), "chat_records", None)


def is_chat_source(source: str) -> bool:
    """Whether a chat run reads `source` as conversations: `hf:` datasets, a generated set, `.jsonl` files
    (a file, or a folder or glob holding some); other files are plain text."""
    if source.startswith("hf:") or _generated_records(source) is not None:
        return True
    return any(path.suffix == ".jsonl" for path in resolve_files(source))


def _local_conversations(source: str) -> list[list[Message]]:
    records = _generated_records(source)
    if records is not None:
        return [parse_record(r, f"{source} record {i}") for i, r in enumerate(records)]
    files = resolve_files(source)
    if Path(source).is_dir():
        files = [p for p in files if p.suffix == ".jsonl"] or files  # a folder's .jsonl files
    return [c for path in files for c in _file_conversations(path)]


def read_conversations(source: str, val_fraction: float = 0.1) -> dict[str, list[list[Message]]]:
    """The train and val conversations of a chat `data.source`; DataError naming the file:line of a bad record."""
    if source.startswith("hf:"):
        return {split: list(convs) for split, convs in _hf_conversations(source, val_fraction).items()}
    conversations = _local_conversations(source)
    if len(conversations) < 2:
        raise DataError(f"data.source {source!r} has {len(conversations)} conversation(s); chat data needs at least 2")
    cut = min(max(1, int(len(conversations) * (1 - val_fraction))), len(conversations) - 1)
    return {"train": conversations[:cut], "val": conversations[cut:]}


def all_conversations(source: str) -> list[list[Message]]:
    """Every conversation of a chat `data.source` (an `hf:` dataset's splits one after another), to evaluate."""
    if source.startswith("hf:"):
        return [c for convs in _hf_conversations(source, 0.1).values() for c in convs]
    conversations = _local_conversations(source)
    if not conversations:
        raise DataError(f"data.source {source!r} has no conversation to evaluate")
    return conversations


# ---------------------------------------------------------------- shards with a mask


def encode_conversations(
    tokenizer: ChatTokenizer, conversations: list[list[Message]], drop: bool = False
) -> tuple[np.ndarray, np.ndarray, int]:
    """Tokens and mask (PROMPT/TRAINED/START) of the conversations one after another, and the UTF-8
    bytes of the trained text. With `drop`, characters the tokenizer lacks are left out first."""
    ids: list[int] = []
    mask: list[int] = []
    trained_bytes = 0
    for messages in conversations:
        if drop:
            messages = [{**m, "content": tokenizer.drop_unknown(m["content"])[0]} for m in messages]
        conv_ids, trained = tokenizer.encode_chat(messages)
        ids += conv_ids
        mask += [START] + [TRAINED if t else PROMPT for t in trained[1:]]
        trained_bytes += sum(len(m["content"].encode("utf-8")) for m in messages if m["role"] == "assistant")
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.int64), trained_bytes


def check_unknown(tokenizer: Tokenizer, conversations: list[list[Message]], where: str, unknown: str) -> bool:
    """Whether the conversations hold characters the tokenizer lacks (to drop: `unknown` is "drop");
    DataError naming `where` and them otherwise."""
    found = sorted({ch for c in conversations for m in c for ch in tokenizer.unknown_chars(m["content"])})
    if found and unknown != "drop":
        shown = ", ".join(repr(ch) for ch in found[:10])
        raise DataError(
            f"{where} has characters the tokenizer lacks ({shown}); set --data.unknown=drop to leave them out"
        )
    return bool(found)


def encode_source(
    tokenizer: ChatTokenizer, source: str, unknown: str = "error"
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Every conversation of a chat `source` as tokens and mask (see encode_conversations), the UTF-8 bytes
    of the trained text, and the characters the tokenizer lacks that were dropped (`unknown="drop"`)."""
    conversations = all_conversations(source)
    drop = check_unknown(tokenizer, conversations, f"--data.source {source}", unknown)
    dropped = sum(tokenizer.drop_unknown(m["content"])[1] for c in conversations for m in c) if drop else 0
    ids, mask, trained_bytes = encode_conversations(tokenizer, conversations, drop=drop)
    return ids, mask, trained_bytes, dropped


def prepare_chat(cfg: RunConfig, shard_dir: Path, tokenizer: Optional[Tokenizer] = None, log=print) -> Path:
    """Conversations -> tokens and masks in `shard_dir` (written into a staging folder, renamed into place).

    `tokenizer`: the run's (fine-tuning; the chat markers are added to it), else one fitted on the
    train conversations' text.
    """
    t0 = time.time()
    conversations = read_conversations(cfg.data.source, cfg.data.val_fraction)
    if tokenizer is None:
        texts = (m["content"] for c in conversations["train"] for m in c)
        tokenizer = fit_tokenizer(cfg.tokenizer, texts)
    chat_tokenizer = tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)
    shard_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{shard_dir.name}.", suffix=".tmp", dir=shard_dir.parent))
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        chat_tokenizer.save(staging / "tokenizer.json")
        splits: dict[str, Any] = {}
        for split in SPLITS:
            texts = conversations[split]
            where = f"data.source {cfg.data.source!r} ({split})"
            unknown = check_unknown(chat_tokenizer, texts, where, cfg.data.unknown)
            ids, mask, trained_bytes = encode_conversations(chat_tokenizer, texts, drop=unknown)
            for path, values, vocab in ((staging / f"{split}.bin", ids, chat_tokenizer.vocab_size),
                                        (mask_path(staging, split), mask, START + 1)):  # fmt: skip
                with ShardWriter(path, vocab) as writer:
                    writer.write(values)
            splits[split] = {"tokens": int(ids.size), "documents": len(texts), "bytes": trained_bytes,
                             "trained_tokens": int((mask == TRAINED).sum()), "dropped_chars": 0}  # fmt: skip
        manifest = {"format_version": VERSION, "format": "chat", "source": cfg.data.source,
                    "tokenizer": chat_tokenizer.kind, "vocab_size": chat_tokenizer.vocab_size,
                    "dtype": dtype_for(chat_tokenizer.vocab_size).name, "splits": splits}  # fmt: skip
        atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=2))
        if shard_dir.exists():
            shutil.rmtree(shard_dir)
        os.replace(staging, shard_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    s = manifest["splits"]
    log(
        f"prepared {shard_dir}: chat data, vocab {manifest['vocab_size']} (with {len(chat_tokenizer.specials)} chat "
        f"markers), train {s['train']['documents']:,} conversations ({s['train']['trained_tokens']:,} of "
        f"{s['train']['tokens']:,} tokens trained), val {s['val']['documents']:,} in {time.time() - t0:.1f}s"
    )
    return shard_dir


# ---------------------------------------------------------------- training windows


class ChatSampler:
    """Random (x, y) windows of `seq_len` tokens, each starting at a conversation; y is IGNORE where
    the loss must not count (prompt tokens, padding). Same interface as WindowSampler."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, seq_len: int, batch_size: int, seed: int, pad_id: int,
                 where: str = "the chat data"):  # fmt: skip
        self.tokens, self.mask = tokens, mask
        if len(self.mask) != len(self.tokens):
            raise DataError(f"{where}: its loss mask does not match its tokens; re-run `slm prepare --force`")
        self.starts = np.flatnonzero(np.asarray(self.mask) == START)
        if not len(self.starts):
            raise DataError(f"{where} holds no conversation; re-run `slm prepare --force`")
        self.seq_len, self.batch_size, self.pad_id = seq_len, batch_size, pad_id
        self.rng = np.random.default_rng(seed)

    def window(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: (len(starts), seq_len) int64 from those token offsets, padded past the end."""
        n = self.seq_len + 1
        idx = starts[:, None] + np.arange(n)
        inside = idx < len(self.tokens)
        idx = np.minimum(idx, len(self.tokens) - 1)
        tokens = np.where(inside, self.tokens[idx].astype(np.int64), self.pad_id)
        counted = inside & (self.mask[idx] == TRAINED)
        targets = np.where(counted, tokens, IGNORE)
        return torch.from_numpy(tokens[:, :-1]), torch.from_numpy(targets[:, 1:])

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.window(self.rng.choice(self.starts, size=self.batch_size))

    def every_conversation(self, limit: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batches with one window per conversation, in order (the first `limit` batches; 0 = all)."""
        chunks = [self.starts[i : i + self.batch_size] for i in range(0, len(self.starts), self.batch_size)]
        return [self.window(c) for c in (chunks[:limit] if limit else chunks)]

    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def chat_sampler(shard_dir: Path | str, split: str, tokenizer: Tokenizer, seq_len: int, batch_size: int, seed: int) -> ChatSampler:
    """The ChatSampler of a split of a chat shard folder."""
    shard = Shard(Path(shard_dir) / f"{split}.bin")
    mask = Shard(mask_path(shard_dir, split)).tokens
    return ChatSampler(shard.tokens, mask, seq_len, batch_size, seed, tokenizer.eot_id, where=str(shard.path))


@torch.no_grad()
def masked_loss(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
    """Mean loss over the counted (assistant) targets of `batches`, and how many there were."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in batches:
        n = int((y != IGNORE).sum())
        if n:
            _, loss = model(x.to(device), y.to(device))
            total, count = total + loss.item() * n, count + n
    model.train(was_training)
    return total / max(count, 1), count
