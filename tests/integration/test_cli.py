"""The tiny recipe end to end through the `slm` command: prepare, train, sample, resume, errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from slmkit.config import load_recipe
from slmkit.data.shards import BatchSampler
from slmkit.train import train


def slm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "slmkit", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def as_args(overrides: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in overrides.items()]


def test_prepare_train_sample(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    result = slm("prepare", *as_args(tiny_overrides), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "shards" / "manifest.json").is_file()

    result = slm("train", "--no-progress", "--out", str(run), *as_args(tiny_overrides), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ["config.yaml", "tokenizer.json", "model.safetensors", "last.safetensors", "state.pt", "metrics.csv", "train.log"]:
        assert (run / name).is_file(), name
    assert "full val split: loss" in result.stdout and "bits/byte" in result.stdout
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,tokens,lr,train_loss,val_loss")
    assert len(rows) == 1 + 20 // 5
    first, last = float(rows[1].split(",")[3]), float(rows[-1].split(",")[3])
    assert last < first  # the loss went down

    a = slm("sample", "--run", str(run), "--prompt", "And God", "--max-new-tokens", "40", "--seed", "7", cwd=tmp_path)
    b = slm("sample", "--run", str(run), "--prompt", "And God", "--max-new-tokens", "40", "--seed", "7", cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout  # a fixed seed gives the same text
    assert a.stdout.startswith("And God") and len(a.stdout.rstrip("\n")) == len("And God") + 40
    greedy = slm("sample", "--run", str(run), "--prompt", "And", "--temperature", "0", "--max-new-tokens", "10", cwd=tmp_path)
    assert greedy.returncode == 0 and greedy.stdout.startswith("And")


def test_resume_is_bitwise_identical(tmp_path, tiny_overrides, monkeypatch):
    """A run that crashes after its step-10 checkpoint and is resumed ends exactly as an uninterrupted one."""
    cfg = load_recipe("kjv-char", tiny_overrides)
    full = train(cfg, out=tmp_path / "full", progress_bar=False)

    calls = {"n": 0}
    original = BatchSampler.next

    def crash_at_step_15(self):
        if self.batch_size == 8 and calls["n"] == 15 + 2:  # +2: the fixed val batches are drawn first
            raise RuntimeError("simulated crash")
        calls["n"] += 1
        return original(self)

    monkeypatch.setattr(BatchSampler, "next", crash_at_step_15)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(load_recipe("kjv-char", tiny_overrides), out=tmp_path / "crashed", progress_bar=False)
    monkeypatch.setattr(BatchSampler, "next", original)

    resumed = train(resume=tmp_path / "crashed", progress_bar=False)
    assert resumed.steps == full.steps == 20
    a = load_file(tmp_path / "full" / "last.safetensors")
    b = load_file(tmp_path / "crashed" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    assert resumed.best_val_loss == full.best_val_loss


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--train.lrr=1"], "unknown key 'train.lrr'"),
        (["train", "--model.n_embd=30", "--model.n_head=4"], "not divisible"),
        (["train", "--recipe", "nope"], "unknown recipe 'nope'"),
        (["train", "--data.source=/no/such/file.txt"], "nor an existing file, folder or glob"),
        (["sample", "--run", "/no/such/run"], "run folder /no/such/run does not exist"),
        (["train", "--resume", "/no/such/run"], "has no state.pt"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    result = slm(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
