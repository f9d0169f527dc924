"""`slm eval`, `slm plot`, `slm quantize` and `slm sample --int8` on a tiny trained run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from slmkit.evaluate import evaluate_run


def slm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "slmkit", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_eval_plot_quantize(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = slm("eval", "--run", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = evaluate_run(run).metrics
    assert f"perplexity {expected['perplexity']:.3f}" in result.stdout
    assert f"{expected['bits_per_byte']:.4f} bits/byte" in result.stdout

    text = tmp_path / "t.txt"
    text.write_text("And God said, Let there be light.\n", encoding="utf-8")
    result = slm("eval", "--run", str(run), "--data.source", str(text), cwd=tmp_path)
    assert result.returncode == 0 and "34 tokens, 34 bytes" in result.stdout, result.stderr

    result = slm("eval", "--run", str(run), "--split", "test", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("slm: error:") and "test" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    result = slm("plot", str(run), "--out", str(tmp_path / "loss.png"), cwd=tmp_path)
    assert result.returncode == 0 and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    result = slm("plot", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1 and "metrics.csv does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    result = slm("sample", "--run", str(run), "--int8", cwd=tmp_path)
    assert result.returncode == 1 and "slm quantize" in result.stderr
    result = slm("quantize", "--run", str(run), cwd=tmp_path)
    assert result.returncode == 0 and "x smaller" in result.stdout, result.stderr
    result = slm("eval", "--run", str(run), "--int8", cwd=tmp_path)
    assert result.returncode == 0 and "perplexity" in result.stdout, result.stderr
    args = ("sample", "--run", str(run), "--int8", "--prompt", "And", "--max-new-tokens", "12", "--seed", "3")
    a, b = slm(*args, cwd=tmp_path), slm(*args, cwd=tmp_path)
    assert a.returncode == 0 and a.stdout == b.stdout and len(a.stdout.rstrip("\n")) == 3 + 12
