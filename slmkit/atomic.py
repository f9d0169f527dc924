"""Atomic file writes: a reader sees either the old file or the complete new one, never a half."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ReadError, WriteError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 2**62


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_failure(path: Path | str, exc: BaseException) -> WriteError:
    """A one-line WriteError for a failed write of `path`, naming the cause and the fix."""
    path = Path(path)
    code = getattr(exc, "errno", None)
    if code is None:  # libraries that write themselves (safetensors, torch) report "os error N" in text
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if code is None and _free_bytes(path.parent) < 2**20:  # torch only says "unexpected pos": a full disk
        code = errno.ENOSPC
    reason = os.strerror(code) if code else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if code in _NO_SPACE:
        fix = f"free disk space on {path.parent} (or write elsewhere) and retry"
    elif code in _NO_PERMISSION:
        fix = f"make {path.parent} writable or write elsewhere"
    else:
        fix = f"check free disk space (df) and that {path.parent} is writable"
    return WriteError(f"cannot write {path}: {reason}; {fix} (any previous {path.name} is untouched)")


def read_failure(path: Path | str, exc: OSError) -> ReadError:
    """A one-line ReadError for a file that could not be read (I/O error, permission denied)."""
    return ReadError(f"cannot read {path}: {exc.strerror or exc}; check the file and the disk it is on")


def _is_write_error(exc: BaseException) -> bool:
    """An OSError, or the error of a library that writes itself: safetensors' SafetensorError, or any
    whose text carries the OS's "os error N" (the Rust libraries: safetensors, tokenizers)."""
    return isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError" or bool(re.search(r"os error \d+", str(exc)))


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed onto `path`.

    A failed write (disk full, permission denied; an OSError or a writing library's error, see
    _is_write_error) becomes a one-line WriteError; an OSError about another file (one being read
    while writing) a ReadError naming that file. The one place write errors are translated.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_failure(path, e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except Exception as e:  # disk full, permission denied: the old file at `path` was never touched
        other = getattr(e, "filename", None)
        if isinstance(e, OSError) and other is not None and Path(other) not in (tmp_path, path):
            raise read_failure(other, e) from None
        if _is_write_error(e):
            raise write_failure(path, e) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def staged_folder(out: Path | str, last: str) -> Iterator[Path]:
    """Yield a hidden staging folder beside `out` to write files into; on success they replace their
    namesakes in `out` (other files there stay), `last` moved last and first removed from `out`, so a
    folder holding `last` is complete. On failure (disk full) `out` is untouched and the staging gone.
    The staging folders of killed runs are deleted first (call only where no other writer of `out` runs)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.parent.glob(f".{out.name}.*.tmp"):  # staging folders of killed runs
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise write_failure(out, e) from None
    try:
        yield staging
        names = sorted(p.name for p in staging.iterdir() if p.name != last)
        if (staging / last).exists():
            (out / last).unlink(missing_ok=True)
            names.append(last)
        for name in names:
            os.replace(staging / name, out / name)
    except WriteError as e:  # name the file in `out`, not in the hidden staging folder
        raise WriteError(str(e).replace(str(staging), str(out))) from None
    except OSError as e:  # e.g. a file copied into the staging folder
        failed = str(getattr(e, "filename", None) or out / last).replace(str(staging), str(out))
        raise write_failure(failed, e) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_temp_files(folder: Path | str) -> list[Path]:
    """Delete the temp files a killed atomic_path left in `folder` (call only where no other writer runs)."""
    stale = sorted(Path(folder).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
