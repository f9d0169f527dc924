"""scripts/install_torch.py: which PyTorch build `make` installs. Nothing here installs anything or uses the network."""

import importlib.util
import os
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("install_torch", ROOT / "scripts" / "install_torch.py")
install_torch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install_torch)

CPU = install_torch.CPU_INDEX


def _never() -> bool:
    raise AssertionError("this probe must not run")


def _choose(installed=None, torch_index=None, system="Linux", gpu=_never, cpu_index_answers=_never):
    return install_torch.choose("torch>=2.3", installed, torch_index, system, gpu, cpu_index_answers)


def test_no_gpu_takes_the_cpu_index():
    pip_args, note = _choose(gpu=lambda: False, cpu_index_answers=lambda: True)
    assert pip_args == ["install", "torch>=2.3", "--index-url", CPU]
    assert "CPU build" in note and CPU in note


def test_unreachable_cpu_index_falls_back_to_the_default_index_with_a_note():
    pip_args, note = _choose(gpu=lambda: False, cpu_index_answers=lambda: False)
    assert pip_args == ["install", "torch>=2.3"]
    assert "could not be reached" in note and "default index" in note and "TORCH_INDEX" in note


def test_gpu_keeps_the_default_cuda_build_without_probing_the_cpu_index():
    pip_args, note = _choose(gpu=lambda: True)
    assert pip_args == ["install", "torch>=2.3"]
    assert "CUDA" in note


def test_mac_takes_the_default_index_without_probing():
    pip_args, note = _choose(system="Darwin")
    assert pip_args == ["install", "torch>=2.3"]
    assert "macOS" in note


def test_torch_index_is_honoured_without_probing():
    url = "https://download.pytorch.org/whl/cu126"
    for system in ("Linux", "Darwin"):
        pip_args, note = _choose(torch_index=url, system=system)
        assert pip_args == ["install", "torch>=2.3", "--index-url", url]
        assert url in note


def test_installed_torch_is_kept_whatever_else_is_set():
    pip_args, note = _choose(installed="2.13.0+cpu", torch_index="https://example.invalid/simple")
    assert pip_args is None
    assert "2.13.0+cpu" in note and "keeping it" in note


def test_requirement_is_pyprojects():
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert install_torch.torch_requirement() in deps
    assert install_torch.torch_requirement().startswith("torch")


@pytest.fixture
def no_torch_machine(monkeypatch):
    """main() as on a machine with no torch installed and no GPU, whose CPU index `answers` says it reaches."""
    monkeypatch.setattr(install_torch, "installed_torch", lambda: None)
    monkeypatch.setattr(install_torch, "has_nvidia_gpu", lambda: False)
    monkeypatch.delenv("TORCH_INDEX", raising=False)
    monkeypatch.setattr(install_torch.platform, "system", lambda: "Linux")

    def reach(answer: bool) -> list:
        asked = []
        monkeypatch.setattr(install_torch, "answers", lambda url: asked.append(url) or answer)
        return asked

    return reach


@pytest.mark.parametrize("answer", [True, False])
def test_dry_run_prints_the_note_and_the_pip_command(no_torch_machine, capsys, answer):
    asked = no_torch_machine(answer)
    assert install_torch.main(["--dry-run"]) == 0
    note, command = capsys.readouterr().out.splitlines()
    assert asked == [f"{CPU}/torch/"]
    assert note.startswith("install_torch: ") and ("CPU build" in note) == answer
    assert command.startswith(f"install_torch: would run: {sys.executable} -m pip install")
    assert command.endswith(f"--index-url {CPU}") == answer


def test_dry_run_honours_torch_index_from_the_environment(no_torch_machine, monkeypatch, capsys):
    asked = no_torch_machine(True)
    monkeypatch.setenv("TORCH_INDEX", "https://mirror.example/torch")
    assert install_torch.main(["--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("--index-url https://mirror.example/torch")
    assert asked == []


def test_the_shared_venvs_torch_is_kept(capsys):
    # The test suite runs in a venv that has torch (as CI's, which installs torch==2.13.0 first): nothing to do.
    assert install_torch.main([]) == 0
    out = capsys.readouterr().out
    assert "keeping it" in out and "would run" not in out


@pytest.mark.skipif(os.name != "posix", reason="a shell-script stand-in for nvidia-smi")
@pytest.mark.parametrize(("script", "found"), [
    ("echo 'GPU 0: NVIDIA A100 (UUID: GPU-0)'", True),
    ("echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver'; exit 9", False),
])  # fmt: skip
def test_nvidia_smi_decides_whether_there_is_a_gpu(tmp_path, monkeypatch, script, found):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert install_torch.has_nvidia_gpu() is found
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert install_torch.has_nvidia_gpu() is False
