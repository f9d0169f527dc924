"""The shard file format: a 32-byte header then flat uint16/uint32 token ids, read by memmap.

Header (little-endian): magic b"SLMSHARD", format version (u32), bytes per token
(u32: 2 or 4), vocabulary size (u64), token count (u64). A shard folder holds
`train.bin`, `val.bin`, `tokenizer.json` and `manifest.json`, the manifest written
last: a folder without it is incomplete and is rebuilt (see prepare.py).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..atomic import atomic_path
from ..errors import DataError

MAGIC = b"SLMSHARD"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # magic, version, bytes per token, vocab size, token count
HEADER_SIZE = HEADER.size  # 32 bytes, so the tokens that follow stay aligned
SPLITS = ("train", "val")


def dtype_for(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def token_array(ids: Sequence[int] | np.ndarray, vocab_size: int, where: str) -> np.ndarray:
    """`ids` as the shard dtype of `vocab_size`; DataError naming `where` if any id is outside [0, vocab_size)."""
    array = np.asarray(ids)
    if array.size and (int(array.min()) < 0 or int(array.max()) >= vocab_size):
        raise DataError(f"{where}: token ids outside [0, {vocab_size}); the tokenizer and vocab size disagree")
    return array.astype(dtype_for(vocab_size), copy=False)


class ShardWriter:
    """Streams token ids into a shard file; the header's count is written at `close`, the file renamed
    into place only then (a failed write leaves nothing). Use as a context manager."""

    def __init__(self, path: Path | str, vocab_size: int):
        self.path = Path(path)
        self.vocab_size = vocab_size
        self.count = 0
        self._atomic = atomic_path(self.path)
        self._file = open(self._atomic.__enter__(), "wb")
        self._file.write(self._header())

    def _header(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, dtype_for(self.vocab_size).itemsize, self.vocab_size, self.count)

    def write(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append `ids` (checked against the vocabulary)."""
        tokens = token_array(ids, self.vocab_size, str(self.path))
        self._file.write(tokens.tobytes())
        self.count += tokens.size

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self._file.seek(0)
            self._file.write(self._header())
        self._file.close()  # before atomic_path fsyncs and renames it (or removes it after an error)
        self._atomic.__exit__(*exc)


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


def read_manifest(shard_dir: Path | str) -> Optional[dict[str, Any]]:
    """The manifest of a complete shard folder, or None if the folder is absent or incomplete."""
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


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
