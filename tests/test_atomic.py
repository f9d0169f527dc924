"""Atomic writes under a full disk, and read errors told apart from write errors (issue 19.6).

The disk is simulated by patching the writes (the tests run as root, where permissions do not stop
writes, and without a tmpfs): a file object that raises ENOSPC once a few bytes have been written.
"""

from __future__ import annotations

import errno
import hashlib
import io
import shutil
from pathlib import Path

import pytest
from safetensors import SafetensorError

from slmkit import atomic
from slmkit.atomic import atomic_path, atomic_write_text, staged_folder
from slmkit.cli import main
from slmkit.data import shards as shards_module
from slmkit.data.prepare import prepare
from slmkit.data.shards import read_manifest
from slmkit.data.sources import files as files_module
from slmkit.config import load_recipe
from slmkit.errors import ReadError, WriteError
from slmkit.runs import BEST, INT8


def tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, hidden and temp files included (so a leftover shows)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class FullDisk(io.FileIO):
    """A file on a disk with `room` bytes left (shared by every file opened through `opener`)."""

    room = 0

    def write(self, data) -> int:
        if len(data) > FullDisk.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        FullDisk.room -= len(data)
        return super().write(data)


def full_disk_open(room: int):
    FullDisk.room = room

    def opener(path, mode="r", *args, **kwargs):
        if "w" not in mode and "+" not in mode and "a" not in mode:
            return open(path, mode, *args, **kwargs)
        return io.BufferedWriter(FullDisk(path, "w"))  # buffered, as open() is: close() flushes (and may fail)

    return opener


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_library_write_errors_are_translated_in_atomic_path(tmp_path):
    """SafetensorError and the Rust libraries' "os error 28" text become the one-line WriteError."""
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old")
    for error in (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
                  Exception("No space left on device (os error 28)")):  # fmt: skip
        with pytest.raises(WriteError, match=f"cannot write {target}: No space left on device; free disk space"):
            with atomic_path(target):
                raise error
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    with pytest.raises(ValueError):  # anything else is not a write error: it passes unchanged
        with atomic_path(target):
            raise ValueError("a bug")


def test_an_os_error_reading_another_file_is_a_read_error(tmp_path):
    source = tmp_path / "corpus.txt"
    with pytest.raises(ReadError, match=f"cannot read {source}: Input/output error"):
        with atomic_path(tmp_path / "train.bin"):
            raise OSError(errno.EIO, "Input/output error", str(source))
    assert list(tmp_path.iterdir()) == []


def test_staged_folder_leaves_the_folder_as_it_was_when_a_write_fails(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "notes.txt"):
        (out / name).write_text(f"old {name}")
    before = tree(tmp_path)
    with pytest.raises(WriteError, match=f"cannot write {out}/tokenizer.json: No space"):
        with staged_folder(out, last="config.json") as stage:
            atomic_write_text(stage / "model.safetensors", "new")
            with atomic_path(stage / "tokenizer.json"):
                raise OSError(errno.ENOSPC, "No space left on device")
    assert tree(tmp_path) == before  # old files intact, nothing staged left
    with staged_folder(out, last="config.json") as stage:
        atomic_write_text(stage / "model.safetensors", "new")
        atomic_write_text(stage / "config.json", "new")
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "config.json": "new", "model.safetensors": "new", "notes.txt": "old notes.txt",
    }  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.fixture
def prepared(tmp_path, tiny_corpus):
    """A complete shard folder of the tiny corpus, and the recipe that made it."""
    cfg = load_recipe("kjv-char-gpt2", {"data.source": str(tiny_corpus), "data.shard_dir": str(tmp_path / "shards")})
    prepare(cfg, log=lambda _: None)
    return cfg, tmp_path / "shards"


def test_disk_full_during_prepare_keeps_the_earlier_shards(tmp_path, prepared, monkeypatch, capsys):
    cfg, shards = prepared
    before = tree(tmp_path)
    monkeypatch.setattr(shards_module, "open", full_disk_open(room=1000), raising=False)  # fills in train.bin
    args = ["prepare", "--recipe", "kjv-char-gpt2", "--force", f"--data.source={cfg.data.source}", f"--data.shard_dir={shards}"]
    assert main(args) == 1
    line = one_line(capsys)
    assert line.startswith(f"slm: error: cannot write {shards}/train.bin: No space left on device; free disk space")
    assert tree(tmp_path) == before  # the earlier complete folder intact, no staging folder left
    monkeypatch.undo()
    assert main(args) == 0 and read_manifest(shards) is not None


def test_disk_full_during_a_first_prepare_leaves_nothing(tmp_path, tiny_corpus, monkeypatch, capsys):
    monkeypatch.setattr(shards_module, "open", full_disk_open(room=1000), raising=False)
    shards = tmp_path / "new" / "shards"
    assert main(["prepare", f"--data.source={tiny_corpus}", f"--data.shard_dir={shards}"]) == 1
    assert "No space left on device" in one_line(capsys)
    assert not (tmp_path / "new").exists()


def test_a_read_error_in_the_corpus_names_the_corpus_not_the_shard(tmp_path, tiny_corpus, monkeypatch, capsys):
    class Failing(io.BytesIO):
        def read(self, *args):
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files_module, "open", lambda path, mode="r": Failing(), raising=False)
    shards = tmp_path / "shards"
    assert main(["prepare", f"--data.source={tiny_corpus}", f"--data.shard_dir={shards}"]) == 1
    line = one_line(capsys)
    assert line == f"slm: error: cannot read {tiny_corpus}: Input/output error; check the file and the disk it is on"
    assert not shards.exists() and not list(tmp_path.glob(".shards*"))


def test_a_corpus_that_cannot_be_opened_is_a_read_error(tmp_path, tiny_corpus, monkeypatch, capsys):
    def denied(path, mode="r"):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(files_module, "open", denied, raising=False)
    assert main(["prepare", f"--data.source={tiny_corpus}", f"--data.shard_dir={tmp_path / 'shards'}"]) == 1
    assert one_line(capsys) == f"slm: error: cannot read {tiny_corpus}: Permission denied; check the file and the disk it is on"


def test_disk_full_during_export_leaves_the_earlier_export(tmp_path, trained_run, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    out = tmp_path / "hf"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    calls = {"n": 0}
    real = atomic.os.replace

    def fills_up(src, dst):  # the disk fills at the second file of the export (weights already staged)
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", fills_up)
    assert main(["export", "--run", str(run), "--out", str(out)]) == 1
    line = one_line(capsys)
    assert line.startswith(f"slm: error: cannot write {out}/generation_config.json: No space left on device")
    assert tree(tmp_path) == before  # every earlier file intact, nothing staged left behind
    monkeypatch.undo()
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0


def test_disk_full_during_quantize_keeps_the_earlier_int8_file(tmp_path, trained_run, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["quantize", "--run", str(run)]) == 0
    capsys.readouterr()
    before = tree(tmp_path)

    def full(tensors, filename, metadata=None):  # what safetensors raises on a full disk
        Path(filename).write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("slmkit.runs.save_file", full)
    assert main(["quantize", "--run", str(run)]) == 1
    line = one_line(capsys)
    assert line.startswith(f"slm: error: cannot write {run / INT8}: ") and "(any previous" in line
    assert tree(tmp_path) == before and (run / BEST).is_file()


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_disk_full_during_a_single_file_export_keeps_the_earlier_file(tmp_path, trained_run, monkeypatch, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    out = tmp_path / f"model.{fmt}"
    out.write_bytes(b"an earlier export")

    def full(src, dst):  # the disk filled: the temp file could not be completed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    assert main(["export", "--run", str(run), "--format", fmt, "--out", str(out)]) == 1
    assert one_line(capsys).startswith(f"slm: error: cannot write {out}: No space left on device")
    assert out.read_bytes() == b"an earlier export" and sorted(p.name for p in tmp_path.iterdir()) == ["model." + fmt, "run"]
