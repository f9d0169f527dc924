"""tinyshakespeare: char-rnn's input.txt, downloaded once into the cache and checked by its SHA-256."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ...atomic import atomic_path
from ...errors import DataError
from .base import SourceKind
from .files import FileSource

if TYPE_CHECKING:  # config validates against the source kinds: no import back at run time
    from ...config import DataConfig

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SIZE = 1_115_394
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# the 65 characters of the pinned file's train split (its first 90%), so `slm recipes` counts them without it
TRAIN_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


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


def open_tinyshakespeare(cfg: DataConfig) -> FileSource:
    """The downloaded file as a one-document local source."""
    return FileSource(cfg, [tinyshakespeare_path()])


KIND = SourceKind(
    name="tinyshakespeare",
    form="'tinyshakespeare'",
    claims=lambda source: source == "tinyshakespeare",
    open=open_tinyshakespeare,
    label=lambda source: "tinyshakespeare",
    download=lambda source: "" if tinyshakespeare_cached() else f"{TINYSHAKESPEARE_SIZE / 1e6:.1f} MB",
    pinned_chars=TRAIN_CHARS,
)
