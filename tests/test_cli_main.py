"""The `slm` command itself: a fast start (no torch before a command needs it), prepare --out, a closed stdout."""

import os
import subprocess
import sys

import pytest

from slmkit.cli import main

HEAVY = ("torch", "numpy", "tokenizers", "tiktoken", "datasets", "slmkit.model", "slmkit.train", "slmkit.generate")
ENV = dict(os.environ, PYTHONWARNINGS="ignore")


def imported_by(*argv: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running `slm argv` (output discarded)."""
    code = (
        "import contextlib, io, sys\n"
        "from slmkit.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({list(argv)!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sample", "--help"], ["serve", "--help"], []])
def test_help_imports_nothing_heavy(argv):
    assert imported_by(*argv) == []


def test_recipes_needs_no_torch():
    assert not {"torch", "numpy", "slmkit.model"} & set(imported_by("recipes"))


def test_runs_needs_no_torch(tiny_run):
    """`slm runs` reads run folders through runfiles.py's names: no torch, no model."""
    assert not {"torch", "slmkit.model", "slmkit.train"} & set(imported_by("runs", str(tiny_run)))


def test_importtime_of_help_shows_no_torch():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "slmkit", "--help"], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "usage: slm" in result.stdout
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "slmkit.cli" in modules and "torch" not in modules and "numpy" not in modules


def test_package_names_load_on_first_use():
    code = "import sys, slmkit; a = 'torch' in sys.modules; slmkit.generate; print(a, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120).stdout
    assert out.split() == ["False", "True"]
    import slmkit

    assert set(slmkit.__all__) <= set(dir(slmkit)) and callable(slmkit.SamplingParams)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        slmkit.nope


def test_prepare_out_is_the_shard_folder(tmp_path, tiny_corpus, capsys):
    out = tmp_path / "my-shards"
    assert main(["prepare", "--out", str(out), f"--data.source={tiny_corpus}", "--data.num_workers=1"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert all((out / name).is_file() for name in ("manifest.json", "tokenizer.json", "train.bin", "val.bin"))
    assert main(["prepare", "--out", str(out), f"--data.shard_dir={tmp_path / 'x'}"]) == 1
    assert "--out and --data.shard_dir" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["recipes"], ["data", "info", "SHARDS"]])
def test_a_closed_stdout_ends_quietly(argv, tmp_path, tiny_corpus):
    """As `slm ... | head -c 0`: the reader is gone before the command writes; no traceback."""
    if "SHARDS" in argv:
        assert main(["prepare", f"--out={tmp_path / 's'}", f"--data.source={tiny_corpus}", "--data.num_workers=1"]) == 0
        argv = [a.replace("SHARDS", str(tmp_path / "s")) for a in argv]
    read, write = os.pipe()
    os.close(read)  # a real pipe whose reader has closed it
    with os.fdopen(write, "wb") as stdout:
        argv = [sys.executable, "-m", "slmkit", *argv]
        result = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, env=ENV, timeout=120)
    assert result.stderr.decode() == ""
    assert result.returncode == 141  # 128 + SIGPIPE, as a shell reports for cat
