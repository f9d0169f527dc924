"""Install the PyTorch build that fits this machine into the running Python's environment (`make` runs it).

In order: a torch already installed is kept (CI puts torch==2.13.0 in first); `TORCH_INDEX=URL` takes torch
from that index; an NVIDIA GPU (`nvidia-smi -L` lists one) or a Mac takes the default index (PyPI's wheel is
the CUDA build on Linux, the CPU/MPS build on macOS); any other machine takes PyTorch's CPU index, or the
default index when that does not answer within a few seconds. Prints one line saying which it took.
`--dry-run` prints the pip command instead of running it.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Callable, Optional

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_SECONDS = 5.0
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def torch_requirement(pyproject: Path = PYPROJECT) -> str:
    """The torch requirement of pyproject.toml's dependencies (e.g. 'torch>=2.3'), so it is written once."""
    found = re.search(r'"(torch(?![\w-])[^"]*)"', pyproject.read_text(encoding="utf-8"))
    if not found:
        raise SystemExit(f"install_torch: no torch requirement in {pyproject}")
    return found.group(1)


def has_nvidia_gpu() -> bool:
    """True when `nvidia-smi -L` runs and lists a GPU (a driver without a GPU lists none)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def answers(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """True when `url` answers an HTTP GET within `timeout` seconds (pip's own timeout is minutes)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # an HTTP error status raises
            return True
    except (OSError, http.client.HTTPException, ValueError):
        return False


def choose(
    requirement: str,
    installed: Optional[str],
    torch_index: Optional[str],
    system: str,
    gpu: Callable[[], bool],
    cpu_index_answers: Callable[[], bool],
) -> tuple[Optional[list[str]], str]:
    """(pip arguments or None for nothing to do, the one-line note); the probes run only when needed."""
    if installed:
        return None, f"torch {installed} is already installed; keeping it (delete .venv to reinstall)"
    install = ["install", requirement]
    if torch_index:
        return install + ["--index-url", torch_index], f"TORCH_INDEX={torch_index}: torch from that index"
    if system == "Darwin":
        return install, "macOS: torch from the default index (its wheel is the CPU/MPS build)"
    if gpu():
        return install, "NVIDIA GPU found: torch from the default index (the CUDA build)"
    if cpu_index_answers():
        return install + ["--index-url", CPU_INDEX], f"no NVIDIA GPU: PyTorch's CPU build from {CPU_INDEX}"
    return install, (
        f"no NVIDIA GPU, but {CPU_INDEX} could not be reached (in {PROBE_SECONDS:.0f} s): torch from the default "
        "index (on Linux the CUDA build, several GB; TORCH_INDEX=URL picks another index)"
    )


def installed_torch() -> Optional[str]:
    """The version of the torch installed in this environment, or None (read without importing torch)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: Optional[list[str]] = None) -> int:
    """Decide, print the note, then run pip (or, with --dry-run, print its command)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--dry-run"]):
        print("usage: python scripts/install_torch.py [--dry-run]", file=sys.stderr)
        return 2
    pip_args, note = choose(
        torch_requirement(), installed_torch(), os.environ.get("TORCH_INDEX") or None, platform.system(),
        has_nvidia_gpu, lambda: answers(f"{CPU_INDEX}/torch/"),
    )
    print(f"install_torch: {note}", flush=True)
    if pip_args is None:
        return 0
    command = [sys.executable, "-m", "pip", *pip_args]
    if argv:
        print(f"install_torch: would run: {shlex.join(command)}")
        return 0
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
