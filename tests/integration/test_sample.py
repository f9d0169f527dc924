"""`slm sample` end to end on a tiny trained run: flags, several samples, stop strings, the prompt loop."""

import os
import subprocess
import sys
from pathlib import Path

from slmkit.config import load_recipe
from slmkit.train import train


def slm(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "slmkit", *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=300
    )


def test_sample_flags_and_interactive_loop(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    train(load_recipe("kjv-char-gpt2", dict(tiny_overrides, **{"train.max_steps": 5})), out=run, progress_bar=False)
    common = ["sample", "--run", str(run), "--max-new-tokens", "30", "--seed", "3", "--top-p", "0.9",
              "--repetition-penalty", "1.2", "--top-k", "10"]

    cached = slm(*common, "--prompt", "And", "--num-samples", "2", cwd=tmp_path)
    uncached = slm(*common, "--prompt", "And", "--num-samples", "2", "--no-cache", cwd=tmp_path)
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout == uncached.stdout  # same seed, same text, with or without the cache
    first, second = cached.stdout.split("--- sample 2/2\n")
    assert first.startswith("--- sample 1/2\nAnd") and second.startswith("And") and first != second
    seed_4 = [*common[: common.index("--seed")], "--seed", "4", *common[common.index("--seed") + 2 :]]
    assert slm(*seed_4, "--prompt", "And", cwd=tmp_path).stdout == second  # sample 2 of the batch: seed + 1, alone

    text = first.removeprefix("--- sample 1/2\nAnd")
    stop = text[10:12]
    stopped = slm(*common, "--prompt", "And", "--stop", stop, "--stop", "QQQ", cwd=tmp_path)
    assert stopped.stdout == "And" + text[: text.index(stop)] + "\n"

    loop = slm(*common, "--interactive", cwd=tmp_path, stdin="And God\nthe earth\n\nnever read\n")
    assert loop.returncode == 0, loop.stderr
    lines = loop.stdout.split("\n")
    assert lines[0].startswith("And God") and "the earth" in loop.stdout and "never read" not in loop.stdout
    single = slm(*common, "--prompt", "the earth", cwd=tmp_path)
    assert single.stdout in loop.stdout  # each prompt of the loop is sampled as a single call would

    bad = slm(*common, "--top-p", "0", cwd=tmp_path)
    assert bad.returncode == 1 and "sample.top_p=0.0" in bad.stderr and "Traceback" not in bad.stderr


def head(argv: list[str], cwd: Path, read: int, stdin: bytes = b"") -> tuple[int, str]:
    """Run `slm argv | head -c READ` through a real pipe: read `read` bytes (0: none), close it; (exit code, stderr)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        [sys.executable, "-m", "slmkit", *argv], cwd=cwd, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdin.write(stdin)
    proc.stdin.close()
    got = proc.stdout.read(read) if read else b""
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert len(got) == read
    return proc.returncode, err


def test_a_reader_that_stops_early_ends_the_output_quietly(tmp_path, tiny_overrides):
    """`slm sample ... | head -c 20` (and the other commands that print a lot): no traceback, cat's exit status."""
    run = str(tmp_path / "run")
    train(load_recipe("kjv-char-gpt2", dict(tiny_overrides, **{"train.max_steps": 5})), out=run, progress_bar=False)
    overrides = [f"--{k}={v}" for k, v in tiny_overrides.items()]
    cases = [
        (["sample", "--run", run, "--max-new-tokens", "20000"], 20, b""),
        (["sample", "--run", run, "--interactive", "--max-new-tokens", "100"], 20, b"And God\n" * 200),
        (["eval", "--run", run], 0, b""),
        (["train", "--no-progress", "--out", str(tmp_path / "again"), *overrides], 10, b""),
    ]
    for argv, read, stdin in cases:
        code, err = head(argv, tmp_path, read, stdin)
        assert (code, err) == (141, ""), (argv, err)
