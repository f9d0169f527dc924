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

    result = slm("quantize", "--run", str(run), cwd=tmp_path)
    assert result.returncode == 0 and "x smaller" in result.stdout, result.stderr
    result = slm("eval", "--run", str(run), "--int8", cwd=tmp_path)
    assert result.returncode == 0 and "perplexity" in result.stdout, result.stderr
    result = slm("sample", "--run", str(run), "--int8", "--prompt", "And", "--max-new-tokens", "12", cwd=tmp_path)
    assert result.returncode == 0 and len(result.stdout.rstrip("\n")) == 3 + 12, result.stderr


def test_export_then_import_hf_then_sample_and_eval(tiny_run, tmp_path):
    transformers = __import__("pytest").importorskip("transformers")
    result = slm("export", "--run", str(tiny_run), "--format", "hf", "--out", str(tmp_path / "hf"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "newline" in result.stderr  # char kind: its end-of-text is the newline, and the user is told
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").config.n_layer == 2

    result = slm("import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    args = ("--prompt", "And", "--temperature", "0", "--max-new-tokens", "15")
    original = slm("sample", "--run", str(tiny_run), *args, cwd=tmp_path)
    imported = slm("sample", "--run", str(tmp_path / "back"), *args, cwd=tmp_path)
    assert imported.returncode == 0 and imported.stdout == original.stdout, imported.stderr


def test_import_hf_gpt2_then_sample_and_eval(tmp_path):
    transformers = __import__("pytest").importorskip("transformers")
    from slmkit.tokenizer.gpt2 import gpt2_data_dir

    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    shutil.copyfile(gpt2_data_dir() / "encoder.json", tmp_path / "hf" / "vocab.json")
    shutil.copyfile(gpt2_data_dir() / "vocab.bpe", tmp_path / "hf" / "merges.txt")
    result = slm("import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = slm("sample", "--run", str(tmp_path / "run"), "--prompt", "Hello", "--max-new-tokens", "5", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("Hello"), result.stderr
    (tmp_path / "t.txt").write_text("Hello world.\n", encoding="utf-8")
    result = slm("eval", "--run", str(tmp_path / "run"), "--data.source", str(tmp_path / "t.txt"), cwd=tmp_path)
    assert result.returncode == 0 and "13 bytes" in result.stdout, result.stderr
