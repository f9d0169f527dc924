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

from .errors import WriteError

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


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed onto `path`.

    An OSError while writing (disk full, permission denied) becomes a one-line WriteError.
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
    except OSError as e:  # disk full, permission denied: the old file at `path` was never touched
        raise write_failure(path, e) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
