"""Local text: a file, a folder (its .txt/.md/.jsonl/.parquet files) or a glob, read in ~1 MB pieces.

A text file is one document; each record of a .jsonl or .parquet file is one. Big files are
streamed, so memory does not grow with the corpus.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional

from ...errors import DataError
from .base import DocumentSource, SourceKind

if TYPE_CHECKING:  # config validates against the source kinds: no import back at run time
    from ...config import DataConfig

TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".parquet")
CHUNK_BYTES = 1 << 20  # a text file is read and tokenized in pieces of about this size
GLOB_CHARS = "*?["


_SPACE_BYTES = b" \t\r\n\x0b\x0c"


def _cut_point(data: bytes, force: bool) -> int:
    """Where to end a piece of `data`: after a newline with text on both sides, so that the
    tokenizers' pre-tokenization is the same as for the whole text. With `force` (the data is
    long), else after any newline, else at a UTF-8 character boundary; without it 0 (read more)."""
    pos = data.rfind(b"\n", 0, len(data) - 1)
    first_newline = pos
    while pos > 0 and (data[pos - 1] in _SPACE_BYTES or data[pos + 1] in _SPACE_BYTES):
        pos = data.rfind(b"\n", 0, pos)
    if pos > 0:
        return pos + 1
    if not force:
        return 0
    if first_newline >= 0:
        return first_newline + 1
    cut = len(data)
    while cut > 0 and (data[cut - 1] & 0xC0) == 0x80:  # back up over continuation bytes
        cut -= 1
    return cut - 1 if cut > 0 and data[cut - 1] >= 0xC0 else cut


def read_pieces(path: Path, errors: str = "strict") -> Iterator[str]:
    """The text of a file in pieces of about CHUNK_BYTES; a non-UTF-8 or binary file is an error
    naming the byte offset (with errors='replace' bad bytes become U+FFFD)."""
    offset = 0
    rest = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK_BYTES)
            data = rest + block
            if not data:
                return
            if block and len(data) < CHUNK_BYTES:  # read on: a small file stays one piece
                rest = data
                continue
            cut = _cut_point(data, force=len(data) >= 4 * CHUNK_BYTES) if block else len(data)
            chunk, rest = data[:cut], data[cut:]
            if not chunk:  # no good boundary yet: read more
                continue
            try:
                text = chunk.decode("utf-8", errors=errors)
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path} is not UTF-8 text (bad byte at offset {offset + e.start}); "
                    "convert it, or set --data.errors=replace"
                ) from None
            if errors == "strict" and "\x00" in text:  # valid UTF-8, but text files have no NUL
                at = offset + chunk.index(b"\x00")
                raise DataError(
                    f"{path} looks binary (NUL byte at offset {at}); "
                    "remove it from data.source, or set --data.errors=replace"
                )
            yield text
            offset += len(chunk)


def _read_records(path: Path, cfg: DataConfig) -> Iterator[str]:
    """The text field of each record of a .jsonl or .parquet file."""
    if path.suffix == ".parquet":
        yield from _parquet_records(path, cfg.text_field)
        return
    lineno = 0
    for piece in read_pieces(path, cfg.errors):
        for line in piece.splitlines():
            lineno += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{lineno} is not valid JSON; fix the line or remove it") from None
            value = record.get(cfg.text_field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                raise DataError(f"{path}:{lineno} has no text field {cfg.text_field!r}; set --data.text_field to its name")
            yield value


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow: pip install 'slmkit[hf]'") from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and others for a damaged file
        raise DataError(f"{path} is not a valid parquet file ({str(e).splitlines()[0]})") from None


def _parquet_records(path: Path, field: str) -> Iterator[str]:
    pf = _parquet_file(path)
    if field not in pf.schema_arrow.names:
        raise DataError(
            f"{path} has no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}); set --data.text_field"
        )
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        yield from (v for v in batch.column(0).to_pylist() if isinstance(v, str))


def _count_records(path: Path) -> int:
    """Number of records of a .jsonl (non-blank lines) or .parquet file, without parsing them."""
    if path.suffix == ".parquet":
        return _parquet_file(path).metadata.num_rows
    count = 0
    with open(path, "rb") as f:
        while block := f.readline():
            count += bool(block.strip())
    return count


def resolve_files(source: str) -> list[Path]:
    """The files a path, folder or glob names, sorted; errors when there are none."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + RECORD_SUFFIXES)
        if not files:
            raise DataError(f"folder {source} has no {', '.join(TEXT_SUFFIXES + RECORD_SUFFIXES)} files")
        return files
    if any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"glob {source} matches no files")
        return files
    raise DataError(f"data.source {source!r}: no such file, folder or glob")


def _glob_base(source: str) -> Path:
    """The part of a glob before its first wildcard (`sotu/*.txt` -> `sotu`)."""
    parts = Path(source).expanduser().parts
    fixed = [p for p in parts[: next((i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS)), len(parts))]]
    return Path(*fixed) if fixed else Path(".")


def label(source: str) -> str:
    """The folder's, file's (without suffix) or glob's folder name: `sotu`, `sotu/` and `sotu/*.txt` give `sotu`."""
    path = _glob_base(source) if any(c in source for c in GLOB_CHARS) else Path(source).expanduser()
    name = path.resolve().name if path.is_dir() or not path.suffix else path.stem
    return re.sub(r"[^A-Za-z0-9_]+", "-", name).strip("-")[:40] or "data"


def identity(source: str) -> str:
    """The resolved files, so the folder and glob forms of the same files share one shard folder."""
    try:
        return "\n".join(str(p.resolve()) for p in resolve_files(source))
    except DataError:
        return source


class FileSource(DocumentSource):
    """Documents of local files: one per text file, one per record of a .jsonl/.parquet file."""

    def __init__(self, cfg: DataConfig, files: Optional[list[Path]] = None):
        super().__init__(cfg)
        self.files = files if files is not None else resolve_files(cfg.source)
        self._counts: Optional[list[int]] = None  # documents per file (records, or 1 for a text file)

    def _file_counts(self) -> list[int]:
        if self._counts is None:
            self._counts = [_count_records(p) if p.suffix in RECORD_SUFFIXES else 1 for p in self.files]
        return self._counts

    def count(self) -> int:
        return sum(self._file_counts())

    def size_hint(self) -> Optional[int]:
        return sum(p.stat().st_size for p in self.files)

    def raw_documents(self, skip: int = 0) -> Iterator[Iterable[str]]:
        index = 0
        for path, n in zip(self.files, self._file_counts()):
            if path.suffix in RECORD_SUFFIXES:
                if index + n <= skip:
                    index += n
                    continue
                for record in _read_records(path, self.cfg):
                    if index >= skip:
                        yield [record]
                    index += 1
            else:
                if index >= skip:
                    yield read_pieces(path, self.cfg.errors)
                index += 1


def _claims(source: str) -> bool:
    path = Path(source).expanduser()
    return path.exists() or any(c in source for c in GLOB_CHARS)


KIND = SourceKind(
    name="files",
    form="an existing file, folder or glob",
    claims=_claims,
    open=FileSource,
    label=label,
    identity=identity,
    fallback=True,
)
