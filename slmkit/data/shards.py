"""Tokenized binary shards: a 32-byte header then flat uint16/uint32 token ids, read by memmap.

Header (little-endian): magic b"SLMSHARD", format version (u32), bytes per token
(u32: 2 or 4), vocabulary size (u64), token count (u64). A shard folder holds
`train.bin`, `val.bin`, `tokenizer.json` and `manifest.json`, the manifest written
last: a folder without it is incomplete and is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import atomic_path, atomic_write_text, current_umask
from ..config import RunConfig
from ..errors import DataError
from ..tokenizer import Tokenizer, fit_tokenizer, load_tokenizer
from .sources import Corpus, Piece

MAGIC = b"SLMSHARD"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # magic, version, bytes per token, vocab size, token count
HEADER_SIZE = HEADER.size  # 32 bytes, so the tokens that follow stay aligned
SPLITS = ("train", "val")


def dtype_for(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _header(vocab_size: int, count: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, dtype_for(vocab_size).itemsize, vocab_size, count)


def write_shard(path: Path | str, tokens: np.ndarray, vocab_size: int) -> None:
    """Write `tokens` with a header, atomically."""
    dtype = dtype_for(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise DataError(f"{path}: token ids outside [0, {vocab_size}); the tokenizer and vocab size disagree")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(_header(vocab_size, tokens.size))
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
    data = {k: v for k, v in asdict(cfg.data).items() if k not in ("num_workers",)}  # no effect on the tokens
    key = json.dumps({"data": data, "tokenizer": asdict(cfg.tokenizer), "v": VERSION}, sort_keys=True)
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


# ---------------------------------------------------------------- the parallel streaming writer

BATCH_CHARS = 1 << 22  # text per task (~4 MB in ~1 MB pieces, which tiktoken encodes on threads)
IN_FLIGHT = 2  # tasks per worker queued or running
_worker_tokenizer: Optional[Tokenizer] = None


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer_path)


def _encode_pieces(batch: list[Piece]) -> tuple[np.ndarray, int, int]:
    """Token ids of a batch of pieces, with end-of-text after each document's last; (ids, documents, bytes)."""
    tokenizer = _worker_tokenizer
    assert tokenizer is not None
    eot = tokenizer.eot_id
    ids: list[int] = []
    for (text, ends), piece_ids in zip(batch, tokenizer.encode_batch([text for text, _ in batch])):
        ids.extend(piece_ids)
        if ends:
            ids.append(eot)
    documents = sum(ends for _, ends in batch)
    nbytes = sum(len(text) if text.isascii() else len(text.encode("utf-8")) for text, _ in batch)
    return np.array(ids, dtype=dtype_for(tokenizer.vocab_size)), documents, nbytes


def _batches(corpus: Corpus) -> Iterator[tuple[str, list[Piece]]]:
    """(split, pieces) batches of about BATCH_CHARS, train then val, as one stream (no idle worker between splits)."""
    for split in SPLITS:
        batch: list[Piece] = []
        size = 0
        for piece in corpus.pieces(split):
            batch.append(piece)
            size += len(piece[0])
            if size >= BATCH_CHARS:
                yield split, batch
                batch, size = [], 0
        if batch:
            yield split, batch


def _encoded(batches: Iterator[tuple[str, list[Piece]]], pool: Any, workers: int) -> Iterator[tuple[str, Any]]:
    """(split, encoded batch) in order; at most IN_FLIGHT per worker, so memory stays flat (Pool.imap reads ahead)."""
    if pool is None:
        yield from ((split, _encode_pieces(batch)) for split, batch in batches)
        return
    pending: deque = deque()
    for split, batch in batches:
        pending.append((split, pool.apply_async(_encode_pieces, (batch,))))
        if len(pending) >= IN_FLIGHT * workers:
            split, result = pending.popleft()
            yield split, result.get()
    while pending:
        split, result = pending.popleft()
        yield split, result.get()


def write_splits(folder: Path, corpus: Corpus, vocab_size: int, pool: Any, workers: int, bar: Any) -> dict[str, Any]:
    """Stream the encoded corpus into `folder`/{train,val}.bin, each header patched with its count at the end."""
    stats = {split: {"tokens": 0, "documents": 0, "bytes": 0} for split in SPLITS}
    with ExitStack() as stack:
        files = {}
        for split in SPLITS:
            tmp = stack.enter_context(atomic_path(folder / f"{split}.bin"))
            files[split] = stack.enter_context(open(tmp, "wb"))
            files[split].write(_header(vocab_size, 0))
        for split, (ids, documents, nbytes) in _encoded(_batches(corpus), pool, workers):
            if ids.size and int(ids.max()) >= vocab_size:
                raise DataError(
                    f"{split}.bin: token ids outside [0, {vocab_size}); the tokenizer and vocab size disagree"
                )
            files[split].write(ids.tobytes())
            for key, value in zip(("tokens", "documents", "bytes"), (ids.size, documents, nbytes)):
                stats[split][key] += value
            bar.update(nbytes)
        for split, f in files.items():
            f.seek(0)
            f.write(_header(vocab_size, stats[split]["tokens"]))
            f.close()  # before atomic_path fsyncs and renames it
    return stats


def _pool(workers: int, tokenizer_path: Path) -> Any:
    # fork: workers start at once and share the parent's imports; elsewhere the platform's default
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    return ctx.Pool(workers, initializer=_init_worker, initargs=(str(tokenizer_path),))


def _remove_stale(out: Path) -> None:
    """Staging folders of runs that were killed."""
    for stale in out.parent.glob(f".{out.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def prepare(
    cfg: RunConfig,
    force: bool = False,
    log=print,
    progress: Optional[bool] = None,
    tokenizer: Optional[Tokenizer] = None,
) -> Path:
    """Corpus -> tokenizer -> train/val shards, streamed and in parallel; returns the shard folder.

    A complete folder is reused. The shards are written into a hidden staging folder that is
    renamed into place when complete (manifest last), so a killed run leaves nothing that looks
    complete. `progress`: show a bar (None: only on a terminal). `tokenizer`: encode with this one
    (fine-tuning) instead of fitting one on the corpus.
    """
    out = shard_dir_for(cfg)
    if not force and read_manifest(out) is not None:
        return out
    t0 = time.time()
    corpus = Corpus(cfg.data)
    if next(corpus.pieces("train"), None) is None:
        raise DataError(f"data.source {cfg.data.source!r} has no text; point it at a non-empty corpus")
    tokenizer = tokenizer or fit_tokenizer(cfg.tokenizer, corpus.texts())
    workers = cfg.data.num_workers or os.cpu_count() or 1
    new_parent = not out.parent.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700; give the folder the usual permissions
    try:
        tokenizer.save(staging / "tokenizer.json")
        manifest: dict[str, Any] = {
            "format_version": VERSION,
            "source": cfg.data.source,
            "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype_for(tokenizer.vocab_size).name,
            "splits": {},
        }
        pool = _pool(workers, staging / "tokenizer.json") if workers > 1 else None
        if pool is None:
            _init_worker(str(staging / "tokenizer.json"))
        try:
            disable = None if progress is None else not progress  # None: a bar only on a terminal
            with tqdm(
                total=corpus.size_hint(), unit="B", unit_scale=True, unit_divisor=1000, disable=disable, desc="tokenizing"
            ) as bar:
                manifest["splits"] = write_splits(staging, corpus, tokenizer.vocab_size, pool, workers, bar)
        finally:
            if pool is not None:
                pool.terminate()
        atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=2))
        if out.exists():
            old = out.with_name(f".{out.name}.old.tmp")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if new_parent and not out.exists():
            with contextlib.suppress(OSError):
                out.parent.rmdir()  # the folder this failed run made, if it is still empty
    s = manifest["splits"]
    megabytes = (s["train"]["bytes"] + s["val"]["bytes"]) / 1e6
    seconds = time.time() - t0
    log(
        f"prepared {out}: vocab {tokenizer.vocab_size}, train {s['train']['tokens']:,} tokens, "
        f"val {s['val']['tokens']:,} tokens from {megabytes:.1f} MB in {seconds:.1f}s ({megabytes / seconds:.1f} MB/s)"
    )
    return out


def load_prepared(shard_dir: Path | str) -> tuple[Tokenizer, dict[str, Shard], dict[str, Any]]:
    """Tokenizer, shards and manifest of a complete shard folder."""
    manifest = read_manifest(shard_dir)
    if manifest is None:
        raise DataError(f"{shard_dir} is not a complete shard folder; run `slm prepare`")
    tokenizer = load_tokenizer(Path(shard_dir) / "tokenizer.json", kind=manifest.get("tokenizer"))
    shards = {split: Shard(Path(shard_dir) / f"{split}.bin") for split in SPLITS}
    return tokenizer, shards, manifest


def describe(path: Path | str) -> str:
    """A table of a shard file's or shard folder's tokens, documents, dtype, vocabulary size and bytes."""
    path = Path(path)
    if path.is_dir():
        files = [path / f"{split}.bin" for split in SPLITS]
        manifest = read_manifest(path)
        if manifest is None:
            raise DataError(f"{path} is not a complete shard folder (no manifest.json); run `slm prepare`")
    elif path.exists() or path.suffix == ".bin":
        files, manifest = [path], read_manifest(path.parent)
    else:
        raise DataError(f"{path} does not exist; give a shard file (.bin) or a shard folder")
    rows = [("split", "tokens", "documents", "dtype", "vocab", "file bytes", "text bytes")]
    total = [0, 0, 0, 0]
    for file in files:
        shard = Shard(file)
        split = (manifest or {}).get("splits", {}).get(file.stem, {})
        counts = [len(shard), split.get("documents"), file.stat().st_size, split.get("bytes")]
        rows.append((file.stem, *(_count(c) for c in counts[:2]), shard.dtype.name, str(shard.vocab_size),
                     *(_count(c) for c in counts[2:])))
        total = [t + (c or 0) for t, c in zip(total, counts)]
    if len(files) > 1:
        rows.append(("total", _count(total[0]), _count(total[1]), "", "", _count(total[2]), _count(total[3])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _count(value: Optional[int]) -> str:
    return "?" if value is None else f"{value:,}"


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
