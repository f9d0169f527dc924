"""`slm prepare`: corpus -> tokenizer (fitted on the train split) -> train/val shards, streamed and in parallel."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ..atomic import atomic_write_text, current_umask, write_failure
from ..config import RunConfig
from ..errors import DataError, WriteError
from ..progress import Bar
from ..tokenizer import Tokenizer, fit_tokenizer, get_kind, load_tokenizer
from .shards import SPLITS, VERSION, Shard, ShardWriter, dtype_for, read_manifest, token_array
from .sources import Corpus, Piece, source_kind


def shard_dir_for(cfg: RunConfig) -> Path:
    """The folder for this recipe's shards: data.shard_dir, or shards/<source>-<kind>-<hash>."""
    if cfg.data.shard_dir:
        return Path(cfg.data.shard_dir)
    kind = source_kind(cfg.data.source)
    data = {k: v for k, v in asdict(cfg.data).items() if k not in ("num_workers", "shard_dir")}  # no effect on the tokens
    if data["format"] == "text":
        del data["format"]  # the key of text shards from before chat data existed
    data["source"] = kind.identity(cfg.data.source)  # `sotu`, `sotu/` and `sotu/*.txt` are the same files
    key = json.dumps({"data": data, "tokenizer": asdict(cfg.tokenizer), "v": VERSION}, sort_keys=True)
    slug = kind.label(cfg.data.source)
    return Path("shards") / f"{slug}-{cfg.tokenizer.kind}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- the parallel streaming writer

BATCH_CHARS = 1 << 22  # text per task (~4 MB in ~1 MB pieces, which tiktoken encodes on threads)
IN_FLIGHT = 2  # tasks per worker queued or running
_worker_tokenizer: Optional[Tokenizer] = None


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer_path)


def _encode_pieces(batch: list[Piece], drop: bool) -> tuple[np.ndarray, int, int, int]:
    """Token ids of a batch of pieces, with end-of-text after each document's last; with `drop`, characters
    the tokenizer refuses are dropped first. (ids, documents, bytes, dropped characters)."""
    tokenizer = _worker_tokenizer
    assert tokenizer is not None
    dropped = 0
    if drop:
        kept = [tokenizer.drop_unknown(text) for text, _ in batch]
        batch = [(text, ends) for (text, _), (_, ends) in zip(kept, batch)]
        dropped = sum(n for _, n in kept)
    eot = tokenizer.eot_id
    ids: list[int] = []
    for (text, ends), piece_ids in zip(batch, tokenizer.encode_batch([text for text, _ in batch])):
        ids.extend(piece_ids)
        if ends:
            ids.append(eot)
    documents = sum(ends for _, ends in batch)
    nbytes = sum(len(text) if text.isascii() else len(text.encode("utf-8")) for text, _ in batch)
    return token_array(ids, tokenizer.vocab_size, "the tokenizer"), documents, nbytes, dropped


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


def _encoded(
    batches: Iterator[tuple[str, list[Piece]]], pool: Any, workers: int, drop: tuple[str, ...]
) -> Iterator[tuple[str, Any]]:
    """(split, encoded batch) in order; at most IN_FLIGHT per worker, so memory stays flat (Pool.imap reads ahead)."""
    if pool is None:
        yield from ((split, _encode_pieces(batch, split in drop)) for split, batch in batches)
        return
    pending: deque = deque()
    for split, batch in batches:
        pending.append((split, pool.apply_async(_encode_pieces, (batch, split in drop))))
        if len(pending) >= IN_FLIGHT * workers:
            split, result = pending.popleft()
            yield split, result.get()
    while pending:
        split, result = pending.popleft()
        yield split, result.get()


def write_splits(
    folder: Path, corpus: Corpus, vocab_size: int, pool: Any, workers: int, bar: Any, drop: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Stream the encoded corpus into `folder`/{train,val}.bin; in the splits `drop` names, characters the
    tokenizer refuses are dropped (and counted) instead of refused."""
    stats = {split: {"tokens": 0, "documents": 0, "bytes": 0, "dropped_chars": 0} for split in SPLITS}
    with ExitStack() as stack:
        writers = {split: stack.enter_context(ShardWriter(folder / f"{split}.bin", vocab_size)) for split in SPLITS}
        for split, (ids, documents, nbytes, dropped) in _encoded(_batches(corpus), pool, workers, drop):
            writers[split].write(ids)
            for key, value in zip(("tokens", "documents", "bytes", "dropped_chars"), (ids.size, documents, nbytes, dropped)):
                stats[split][key] += value
            bar.update(nbytes)
    return stats


def _pool(workers: int, tokenizer_path: Path) -> Any:
    # fork: workers start at once and share the parent's imports; elsewhere the platform's default
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    return ctx.Pool(workers, initializer=_init_worker, initargs=(str(tokenizer_path),))


def _remove_stale(out: Path) -> None:
    """Staging folders of runs that were killed."""
    for stale in out.parent.glob(f".{out.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def fit_on_train(cfg: RunConfig, corpus: Corpus, log=print) -> Tokenizer:
    """The recipe's tokenizer fitted on the train split only (the val split stays unseen); says so when
    the text holds fewer tokens than tokenizer.vocab_size asks for."""
    tokenizer = fit_tokenizer(cfg.tokenizer, corpus.texts())
    wanted = get_kind(cfg.tokenizer.kind).vocab_size(cfg.tokenizer.vocab_size)
    if wanted is not None and tokenizer.vocab_size < wanted:
        log(
            f"note: tokenizer.vocab_size={wanted:,} asked, but the train split of {cfg.data.source} yields only "
            f"{tokenizer.vocab_size:,} {cfg.tokenizer.kind} tokens (too little text, or pieces seen fewer than "
            f"tokenizer.min_frequency={cfg.tokenizer.min_frequency} times); the model gets {tokenizer.vocab_size:,}"
        )
    return tokenizer


def prepare(
    cfg: RunConfig,
    force: bool = False,
    log=print,
    progress: bool = True,
    tokenizer: Optional[Tokenizer] = None,
) -> Path:
    """Corpus -> tokenizer -> train/val shards, streamed and in parallel; returns the shard folder.

    A complete folder is reused. The shards are written into a hidden staging folder that is
    renamed into place when complete (manifest last), so a killed run leaves nothing that looks
    complete. `progress`: a bar over the bytes on a terminal (False: none). `tokenizer`: encode with this one
    (fine-tuning) instead of fitting one on the train split; characters it refuses are an error
    unless data.unknown=drop. A fitted tokenizer drops (and counts) val characters the train split lacks.
    """
    out = shard_dir_for(cfg)
    if not force and read_manifest(out) is not None:
        return out
    if cfg.data.format == "chat":
        from .chat import prepare_chat  # conversations: tokens and a loss mask

        return prepare_chat(cfg, out, tokenizer, log)
    t0 = time.time()
    corpus = Corpus(cfg.data)
    if next(corpus.pieces("train"), None) is None:
        raise DataError(f"data.source {cfg.data.source!r} has no text; point it at a non-empty corpus")
    drop: tuple[str, ...] = SPLITS if cfg.data.unknown == "drop" else ()
    if tokenizer is None:
        tokenizer, drop = fit_on_train(cfg, corpus, log), ("val",) + drop
    new_parent = not out.parent.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise write_failure(out, e) from None
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700; give the folder the usual permissions
    try:
        manifest = _write_staging(staging, cfg, corpus, tokenizer, drop, progress)
        if out.exists():
            old = out.with_name(f".{out.name}.old.tmp")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except WriteError as e:  # name the shard folder, not the hidden staging folder (any earlier one is intact)
        raise WriteError(str(e).replace(str(staging), str(out))) from None
    except OSError as e:
        raise write_failure(out, e) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if new_parent and not out.exists():
            with contextlib.suppress(OSError):
                out.parent.rmdir()  # the folder this failed run made, if it is still empty
    log(_summary(out, manifest, time.time() - t0))
    return out


def _write_staging(
    staging: Path, cfg: RunConfig, corpus: Corpus, tokenizer: Tokenizer, drop: tuple[str, ...], progress: bool
) -> dict[str, Any]:
    """tokenizer.json, the two shards and (last) manifest.json into `staging`; returns the manifest."""
    tokenizer.save(staging / "tokenizer.json")
    manifest: dict[str, Any] = {
        "format_version": VERSION,
        "source": cfg.data.source,
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype_for(tokenizer.vocab_size).name,
        "splits": {},
    }
    workers = cfg.data.num_workers or os.cpu_count() or 1
    pool = _pool(workers, staging / "tokenizer.json") if workers > 1 else None
    if pool is None:
        _init_worker(str(staging / "tokenizer.json"))
    try:
        # a bar over the bytes read (a counter for a source of unknown size), on a terminal
        with Bar(corpus.size_hint(), "tokenizing", "B", progress, unit_scale=True, unit_divisor=1000) as bar:
            manifest["splits"] = write_splits(staging, corpus, tokenizer.vocab_size, pool, workers, bar, drop)
    finally:
        if pool is not None:
            pool.terminate()
    atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _summary(out: Path, manifest: dict[str, Any], seconds: float) -> str:
    s = manifest["splits"]
    megabytes = (s["train"]["bytes"] + s["val"]["bytes"]) / 1e6
    dropped = [f"{s[split]['dropped_chars']:,} {split}" for split in SPLITS if s[split]["dropped_chars"]]
    note = f"; dropped characters the tokenizer lacks: {', '.join(dropped)}" if dropped else ""
    return (
        f"prepared {out}: vocab {manifest['vocab_size']}, train {s['train']['tokens']:,} tokens, "
        f"val {s['val']['tokens']:,} tokens from {megabytes:.1f} MB in {seconds:.1f}s "
        f"({megabytes / max(seconds, 1e-9):.1f} MB/s){note}"
    )


def load_prepared(shard_dir: Path | str) -> tuple[Tokenizer, dict[str, Shard], dict[str, Any]]:
    """Tokenizer, shards and manifest of a complete shard folder."""
    manifest = read_manifest(shard_dir)
    if manifest is None:
        raise DataError(f"{shard_dir} is not a complete shard folder; run `slm prepare`")
    tokenizer = load_tokenizer(Path(shard_dir) / "tokenizer.json", kind=manifest.get("tokenizer"))
    shards = {split: Shard(Path(shard_dir) / f"{split}.bin") for split in SPLITS}
    return tokenizer, shards, manifest
