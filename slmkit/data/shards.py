"""Tokenized binary shards: a 32-byte header then flat uint16/uint32 token ids, read by memmap.

Header (little-endian): magic b"SLMSHARD", format version (u32), bytes per token
(u32: 2 or 4), vocabulary size (u64), token count (u64). A shard folder holds
`train.bin`, `val.bin`, `tokenizer.json` and `manifest.json`, the manifest written
last: a folder without it is incomplete and is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..atomic import atomic_path, atomic_write_text
from ..config import RunConfig
from ..errors import DataError
from ..tokenizer import Tokenizer, fit_tokenizer, load_tokenizer
from .sources import load_splits

MAGIC = b"SLMSHARD"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # magic, version, bytes per token, vocab size, token count
HEADER_SIZE = HEADER.size  # 32 bytes, so the tokens that follow stay aligned
SPLITS = ("train", "val")


def dtype_for(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_shard(path: Path | str, tokens: np.ndarray, vocab_size: int) -> None:
    """Write `tokens` with a header, atomically."""
    dtype = dtype_for(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise DataError(f"{path}: token ids outside [0, {vocab_size}); the tokenizer and vocab size disagree")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, VERSION, dtype.itemsize, vocab_size, tokens.size))
            f.write(tokens.astype(dtype, copy=False).tobytes())


class Shard:
    """A memmapped shard: `.tokens` is a read-only numpy array of ids."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                head = f.read(HEADER_SIZE)
        except FileNotFoundError:
            raise DataError(f"shard {self.path} does not exist; run `slm prepare`") from None
        if len(head) < HEADER_SIZE:
            raise DataError(f"{self.path} is too short to be a shard; delete it and run `slm prepare`")
        magic, version, itemsize, vocab_size, count = HEADER.unpack(head)
        if magic != MAGIC:
            raise DataError(f"{self.path} is not an slmkit shard (bad magic); delete it and run `slm prepare`")
        if version != VERSION:
            raise DataError(f"{self.path} has shard format {version}, this slmkit reads {VERSION}; re-run `slm prepare`")
        if itemsize not in (2, 4):
            raise DataError(f"{self.path} has an invalid token width {itemsize}; delete it and run `slm prepare`")
        expected = HEADER_SIZE + count * itemsize
        actual = self.path.stat().st_size
        if actual != expected:
            raise DataError(
                f"{self.path} is truncated or padded ({actual} bytes, header says {expected}); "
                "delete it and run `slm prepare`"
            )
        self.vocab_size = vocab_size
        self.dtype = np.dtype(np.uint16 if itemsize == 2 else np.uint32)
        self.tokens = (
            np.memmap(self.path, dtype=self.dtype, mode="r", offset=HEADER_SIZE, shape=(count,))
            if count
            else np.zeros(0, dtype=self.dtype)
        )

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def shard_dir_for(cfg: RunConfig) -> Path:
    """The folder for this recipe's shards: data.shard_dir, or shards/<source>-<kind>-<hash>."""
    if cfg.data.shard_dir:
        return Path(cfg.data.shard_dir)
    key = json.dumps({"data": asdict(cfg.data), "tokenizer": asdict(cfg.tokenizer), "v": VERSION}, sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(cfg.data.source).name).strip("-")[:40] or "data"
    return Path("shards") / f"{slug}-{cfg.tokenizer.kind}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def read_manifest(shard_dir: Path | str) -> Optional[dict[str, Any]]:
    """The manifest of a complete shard folder, or None if the folder is absent or incomplete."""
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def prepare(cfg: RunConfig, force: bool = False, log=print) -> Path:
    """Corpus -> tokenizer -> train/val shards; returns the shard folder (reused when complete)."""
    out = shard_dir_for(cfg)
    if not force and read_manifest(out) is not None:
        return out
    t0 = time.time()
    splits = load_splits(cfg.data)
    tokenizer = fit_tokenizer(cfg.tokenizer, (d for docs in splits.values() for d in docs))
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # incomplete until rewritten below
    manifest: dict[str, Any] = {
        "format_version": VERSION,
        "source": cfg.data.source,
        "tokenizer": cfg.tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype_for(tokenizer.vocab_size).name,
        "splits": {},
    }
    for split in SPLITS:
        ids: list[int] = []
        for doc in splits[split]:
            ids.extend(tokenizer.encode_document(doc))
        write_shard(out / f"{split}.bin", np.array(ids, dtype=np.int64), tokenizer.vocab_size)
        manifest["splits"][split] = {
            "tokens": len(ids),
            "documents": len(splits[split]),
            "bytes": sum(len(d.encode("utf-8")) for d in splits[split]),
        }
    tokenizer.save(out / "tokenizer.json")
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    s = manifest["splits"]
    log(
        f"prepared {out}: vocab {tokenizer.vocab_size}, train {s['train']['tokens']:,} tokens, "
        f"val {s['val']['tokens']:,} tokens in {time.time() - t0:.1f}s"
    )
    return out


def load_prepared(shard_dir: Path | str) -> tuple[Tokenizer, dict[str, Shard], dict[str, Any]]:
    """Tokenizer, shards and manifest of a complete shard folder."""
    manifest = read_manifest(shard_dir)
    if manifest is None:
        raise DataError(f"{shard_dir} is not a complete shard folder; run `slm prepare`")
    tokenizer = load_tokenizer(Path(shard_dir) / "tokenizer.json")
    shards = {split: Shard(Path(shard_dir) / f"{split}.bin") for split in SPLITS}
    return tokenizer, shards, manifest


class BatchSampler:
    """Random (x, y) windows of `block_size` tokens from a shard; its position is its RNG state."""

    def __init__(self, shard: Shard, block_size: int, batch_size: int, seed: int):
        if len(shard) < block_size + 1:
            raise DataError(
                f"{shard.path} has {len(shard)} tokens, fewer than one block of {block_size} + 1; "
                "use more text or a smaller --model.block_size"
            )
        self.tokens = shard.tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.offsets = np.arange(block_size + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: (batch, block_size) int64, y shifted by one."""
        starts = self.rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        window = torch.from_numpy(self.tokens[starts[:, None] + self.offsets].astype(np.int64))
        return window[:, :-1], window[:, 1:]

    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state
