"""The tiny recipe end to end through the `slm` command: prepare, train, sample, resume, errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slmkit import load_run
from slmkit.cli import main
from slmkit.config import load_recipe
from slmkit.data.sampler import WindowSampler
from slmkit.data.shards import Shard
from slmkit.runs import BEST, CONFIG, LAST, LOG, METRICS, PLOT, STATE, TOKENIZER
from slmkit.tokenizer import GPT2Tokenizer, load_tokenizer
from slmkit.train import train


CHAR_RECIPE = ("--recipe", "kjv-char-gpt2")  # the character reference recipe, whatever the default


def slm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "slmkit", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def as_args(overrides: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in overrides.items()]


def test_prepare_train_sample(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    # the character reference recipe: the test counts characters
    result = slm("prepare", *CHAR_RECIPE, *as_args(tiny_overrides), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "shards" / "manifest.json").is_file()

    result = slm("train", "--no-progress", "--out", str(run), *CHAR_RECIPE, *as_args(tiny_overrides), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in [CONFIG, TOKENIZER, BEST, LAST, STATE, METRICS, LOG, PLOT]:
        assert (run / name).is_file(), name
    # the training report and `slm eval` print the same line for the same run and split (one bits-per-byte)
    evaluated = slm("eval", "--run", str(run), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.startswith("val split: ") and "bits/byte" in evaluated.stdout
    assert f"best weights (step 20) on the {evaluated.stdout.strip()}\n" in result.stdout
    assert (run / PLOT).read_bytes()[:4] == b"\x89PNG"
    rows = (run / METRICS).read_text().splitlines()
    assert rows[0].startswith("step,epoch,tokens,lr,train_loss,val_loss,perplexity")
    assert len(rows) == 1 + 20 // 5
    first, last = float(rows[1].split(",")[4]), float(rows[-1].split(",")[4])
    assert last < first  # the loss went down

    a = slm("sample", "--run", str(run), "--prompt", "And God", "--max-new-tokens", "40", "--seed", "7", cwd=tmp_path)
    b = slm("sample", "--run", str(run), "--prompt", "And God", "--max-new-tokens", "40", "--seed", "7", cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout  # a fixed seed gives the same text
    assert a.stdout.startswith("And God") and len(a.stdout.rstrip("\n")) == len("And God") + 40
    greedy = slm("sample", "--run", str(run), "--prompt", "And", "--temperature", "0", "--max-new-tokens", "10", cwd=tmp_path)
    assert greedy.returncode == 0, greedy.stderr
    assert greedy.stdout == "And" + model_greedy(run, "And", 10) + "\n"  # the model's own argmax continuation


def model_greedy(run_dir: Path, prompt: str, n: int) -> str:
    """The greedy continuation computed from the model's full forward pass (no cache, no sampling code)."""
    run = load_run(run_dir)
    ids = run.tokenizer.encode(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = run.model.eval()(torch.tensor([ids[-run.model.config.block_size :]]))
            ids.append(int(logits[0, -1].argmax()))
    return run.tokenizer.decode(ids[len(run.tokenizer.encode(prompt)) :])


def test_resume_is_bitwise_identical(tmp_path, tiny_overrides, monkeypatch):
    """A run that crashes after its step-10 checkpoint and is resumed ends exactly as an uninterrupted one."""
    cfg = load_recipe("kjv-char-gpt2", tiny_overrides)
    full = train(cfg, out=tmp_path / "full", progress_bar=False)

    calls = {"n": 0}
    original = WindowSampler.next

    def crash_at_step_15(self):
        if self.batch_size == 8 and calls["n"] == 15 + 2:  # +2: the fixed val batches are drawn first
            raise RuntimeError("simulated crash")
        calls["n"] += 1
        return original(self)

    monkeypatch.setattr(WindowSampler, "next", crash_at_step_15)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(load_recipe("kjv-char-gpt2", tiny_overrides), out=tmp_path / "crashed", progress_bar=False)
    monkeypatch.setattr(WindowSampler, "next", original)

    resumed = train(resume=tmp_path / "crashed", progress_bar=False)
    assert resumed.steps == full.steps == 20
    a = load_file(tmp_path / "full" / LAST)
    b = load_file(tmp_path / "crashed" / LAST)
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


def write_bad_inputs(tmp_path: Path) -> None:
    """The bad inputs of the parametrized test below, written into tmp_path."""
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait\n" * 10)
    (tmp_path / "short.txt").write_text("In the beginning God created the heaven and the earth.\n")
    (tmp_path / "corpus.txt").write_text("In the beginning God created the heaven and the earth.\n" * 50)
    (tmp_path / "bad.bin").write_bytes(b"NOTSHARD" + bytes(40))


BAD_INPUTS = [
    (["prepare", "--data.source=missing/*.txt"], "glob missing/*.txt matches no files"),
    (["prepare", "--data.source=empty.txt"], "data.source 'empty.txt' has no text"),
    (["prepare", "--data.source=latin1.txt"], "latin1.txt is not UTF-8 text (bad byte at offset 3)"),
    (["train", "--data.source=short.txt", "--model.block_size=64"], "fewer than one window of 64 + 1"),
    (["prepare", "--data.source=corpus.txt", "--tokenizer.kind=bpe", "--tokenizer.vocab_size=100"], "too small"),
    (["train", "--data.source=corpus.txt", "--data.shard_dir=swapped"], "holds a 'gpt2' tokenizer, expected 'bpe'"),
    (["data", "info", "bad.bin"], "bad.bin is not an slmkit shard (bad magic)"),
]


@pytest.mark.parametrize(
    "args, message", BAD_INPUTS, ids=["missing", "empty", "not-utf8", "short", "vocab", "wrong-kind", "header"]
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    write_bad_inputs(tmp_path)
    if "--data.shard_dir=swapped" in args:  # a complete shard folder whose tokenizer was swapped for another kind
        assert main(["prepare", "--data.source=corpus.txt", "--data.shard_dir=swapped"]) == 0
        GPT2Tokenizer().save(tmp_path / "swapped" / TOKENIZER)
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert main([*args, "--out=run"] if args[0] == "train" else args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("slm: error: ") and message in err, err
    if "--data.source=short.txt" not in args:
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no shards, no run folder
    else:  # the shards of a short corpus are valid (another block size may use them); no run folder
        assert not (tmp_path / "run").exists()


def test_errors_replace_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_bad_inputs(tmp_path)
    assert main(["prepare", "--data.source=latin1.txt", "--data.errors=replace", "--data.shard_dir=s"]) == 0
    assert "\ufffd" in load_tokenizer(tmp_path / "s").decode(Shard(tmp_path / "s" / "train.bin").tokens.tolist())


def test_data_info(tmp_path, tiny_overrides, tiny_corpus):
    text = tiny_corpus.read_text(encoding="utf-8")
    assert slm("prepare", *CHAR_RECIPE, *as_args(tiny_overrides), cwd=tmp_path).returncode == 0
    result = slm("data", "info", str(tmp_path / "shards"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, train, val, total = result.stdout.splitlines()
    assert header.split()[:5] == ["split", "tokens", "documents", "dtype", "vocab"]
    assert train.split()[0] == "train" and train.split()[3:5] == ["uint16", str(len(set(text)))]
    assert total.split()[:3] == ["total", f"{len(text) + 2:,}", "2"]  # every char, plus one end-of-text per split
