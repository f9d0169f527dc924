"""Run folders: never unpickle a user file; a failed save (disk full, no permission) leaves the old one intact;
a new run never lands on an old one unless told to."""

import csv
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from slmkit import atomic, runs
from slmkit.cli import main
from slmkit.config import load_recipe
from slmkit.errors import CheckpointError, WriteError
from slmkit.runs import (
    BEST,
    CHECKPOINTS,
    CONFIG,
    FINGERPRINT,
    INT8,
    LAST,
    LOG,
    METRICS,
    STATE,
    TOKENIZER,
    check_new_run,
    load_run,
    load_state,
    save_state,
    save_weights,
)
from slmkit.train import train


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file in `folder` (temp files included, so a leftover shows)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


CHECKPOINT_FILES = (BEST, LAST, STATE, CONFIG, TOKENIZER)


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def craft_evil_state(path: Path, marker: Path) -> None:
    """A state.pt that looks like torch.save's but whose pickle calls os.system when loaded."""
    torch.save({"step": 4, "optimizer": Payload(marker)}, path)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_crafted_pickle_is_refused_without_running_it(tmp_path, trained_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "pwned"
    craft_evil_state(run / STATE, marker)
    before = digests(run)

    with pytest.raises(CheckpointError, match="refusing to load it"):
        load_state(run / STATE)
    assert not marker.exists()

    assert main(["train", "--no-progress", "--resume", str(run), "--train.max_steps=6"]) == 1
    line = one_line_error(capsys)
    assert f"{run / STATE} holds objects other than tensors" in line
    assert not marker.exists()
    assert {k: v for k, v in digests(run).items() if k in CHECKPOINT_FILES} == {
        k: v for k, v in before.items() if k in CHECKPOINT_FILES
    }

    # the payload is live: an unsafe load would have run it
    torch.load(run / STATE, weights_only=False)
    assert marker.exists()


def test_disk_full_while_saving_weights_keeps_the_old_file(tmp_path, trained_run, monkeypatch):
    model = load_run(trained_run).model
    path = tmp_path / LAST
    save_weights(model, path)
    before = digests(tmp_path)

    def full(*args, **kwargs):  # what safetensors raises when the disk fills
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(runs, "save_model", full)
    with pytest.raises(WriteError) as info:
        save_weights(model, path)
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot write {path}: No space left on device; free disk space on {tmp_path}" in message
    assert digests(tmp_path) == before  # old file byte-identical, no temp file left


@pytest.mark.parametrize(
    "failure, expected",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device; free disk space"),
        (OSError(errno.EACCES, "Permission denied"), "Permission denied; make"),
        (OSError(errno.EROFS, "Read-only file system"), "Read-only file system; make"),
    ],
)
@pytest.mark.parametrize("where", ["mkstemp", "replace"])
def test_write_failures_are_one_line_and_keep_the_old_state(tmp_path, monkeypatch, failure, expected, where):
    path = tmp_path / STATE
    save_state({"step": 1, "w": torch.arange(10)}, path)
    before = digests(tmp_path)

    def fail(*args, **kwargs):
        raise failure

    # tests run as root, where chmod does not stop writes: make the write itself fail
    if where == "mkstemp":
        monkeypatch.setattr(atomic.tempfile, "mkstemp", fail)
    else:
        monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(WriteError, match=expected) as info:
        save_state({"step": 2, "w": torch.arange(20)}, path)
    assert str(info.value).startswith(f"cannot write {path}: ") and "\n" not in str(info.value)
    monkeypatch.undo()
    assert digests(tmp_path) == before
    assert load_state(path)["step"] == 1


def test_torch_save_failure_on_a_full_disk(tmp_path, monkeypatch):
    """torch reports a full disk as RuntimeError('unexpected pos ...'); the free space tells why."""
    path = tmp_path / STATE
    save_state({"step": 1}, path)
    before = digests(tmp_path)

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(atomic, "_free_bytes", lambda folder: 0)
    with pytest.raises(WriteError, match="No space left on device; free disk space"):
        save_state({"step": 2}, path)
    monkeypatch.undo()
    assert digests(tmp_path) == before


def test_disk_full_during_training_stops_cleanly_and_resume_still_works(tmp_path, trained_run, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {k: v for k, v in digests(run).items() if k in CHECKPOINT_FILES}
    target = load_state(run / STATE)["step"] + 2

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    assert main(["train", "--no-progress", "--resume", str(run), f"--train.max_steps={target}"]) == 1
    line = one_line_error(capsys)
    assert line.startswith(f"slm: error: cannot write {run}/") and "No space left on device" in line
    monkeypatch.undo()
    after = digests(run)
    assert {k: v for k, v in after.items() if k in CHECKPOINT_FILES} == before
    assert not [name for name in after if name.endswith(".tmp")]

    stale = run / ".state.pt.x1y2z3.tmp"  # what a kill in the middle of a save leaves
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "--no-progress", "--resume", str(run), f"--train.max_steps={target}"]) == 0
    assert load_state(run / STATE)["step"] == target
    assert not stale.exists()


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """mtime and sha256 of every file under `folder`."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_new_run_may_go_into_a_missing_or_empty_folder_only(tmp_path):
    check_new_run(tmp_path / "no" / "such")
    (tmp_path / "empty").mkdir()
    check_new_run(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="other is not empty; .* or add --overwrite"):
        check_new_run(tmp_path / "other")
    check_new_run(tmp_path / "other", overwrite=True)


@pytest.mark.parametrize("command", ["train", "finetune", "train-default-folder"])
def test_an_existing_run_is_refused_untouched(tmp_path, trained_run, tiny_overrides, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    # without a recipe the run is named after its data and the default's tokenizer: corpus.txt, bpe (issue 23.9)
    run = tmp_path / ("runs/corpus-bpe" if command == "train-default-folder" else "run")
    shutil.copytree(trained_run, run)
    before = snapshot(run)
    overrides = [f"--{k}={v}" for k, v in tiny_overrides.items()]
    args = {
        "train": ["train", "--out", str(run), *overrides],
        "finetune": ["finetune", "--from", str(trained_run), "--out", str(run), "--train.max_steps=2"],
        "train-default-folder": ["train", *overrides],  # a second `slm train` into runs/corpus-bpe
    }[command]
    assert main(args) == 1
    line = one_line_error(capsys)
    shown = run.relative_to(tmp_path) if command == "train-default-folder" else run
    assert f"{shown} holds a run; continue it with `slm train --resume {shown}`, give a new --out, or add --overwrite" in line
    assert snapshot(run) == before  # same bytes, same mtimes
    assert not (tmp_path / "shards").exists()  # refused before any data was prepared


def test_overwrite_replaces_the_old_run_and_keeps_other_files(tmp_path, trained_run, tiny_overrides):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / INT8).write_bytes(b"an int8 model of the old weights")
    (run / CHECKPOINTS).mkdir()
    (run / CHECKPOINTS / "step-0000010.safetensors").write_bytes(b"old")
    (run / "notes.txt").write_text("mine")
    old_best = (run / BEST).read_bytes()
    result = train(
        load_recipe("kjv-char-gpt2", dict(tiny_overrides, **{"train.max_steps": 4, "train.eval_interval": 2})),
        out=run, progress_bar=False, overwrite=True,
    )  # fmt: skip
    assert result.steps == 4
    with open(run / METRICS, newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2, 4]  # the new run's rows only
    assert "training kjv-char" in (run / LOG).read_text() and (run / LOG).read_text().count("done:") == 1
    assert not (run / INT8).exists() and not (run / CHECKPOINTS).exists()
    assert (run / BEST).read_bytes() != old_best
    assert (run / "notes.txt").read_text() == "mine"


def permuted_char_tokenizer(path: Path) -> None:
    """The same characters in another order: same vocabulary size, other ids (a tokenizer of another run)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    chars = data["chars"]
    data["chars"] = [chars[0], *reversed(chars[1:])]
    path.write_text(json.dumps(data), encoding="utf-8")


def test_a_run_records_its_tokenizer_fingerprint_in_sha256sum_form(trained_run):
    digest = hashlib.sha256((trained_run / TOKENIZER).read_bytes()).hexdigest()
    assert (trained_run / FINGERPRINT).read_text() == f"{digest}  {TOKENIZER}\n"


def test_a_swapped_tokenizer_of_the_same_size_is_refused_and_an_old_run_still_loads(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    original = load_run(run).tokenizer
    permuted_char_tokenizer(run / TOKENIZER)
    with pytest.raises(CheckpointError, match=f"{TOKENIZER} is not the tokenizer .* was trained with"):
        load_run(run)
    with pytest.raises(CheckpointError, match="was trained with"):
        runs.resume_config(run)
    # a run folder from before fingerprints (none recorded) loads as it did, swapped or not
    (run / FINGERPRINT).unlink()
    swapped = load_run(run).tokenizer
    assert swapped.vocab_size == original.vocab_size and swapped.encode("God") != original.encode("God")
    (run / FINGERPRINT).write_text("not a digest\n")
    with pytest.raises(CheckpointError, match="is not a sha256 line"):
        load_run(run)


def test_resume_refuses_shards_rebuilt_with_another_tokenizer(tmp_path, trained_run, capsys):
    """The run's own tokenizer.json is intact, but its shard folder now holds another one: resume trains on
    the shards, so it must refuse them."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    cfg = runs.resume_config(run)
    shards = tmp_path / "shards"
    shutil.copytree(cfg.data.shard_dir, shards)
    cfg.data.shard_dir = str(shards)
    runs.save_config(cfg, run / CONFIG)
    permuted_char_tokenizer(shards / TOKENIZER)
    before = digests(run)
    assert main(["train", "--no-progress", "--resume", str(run), "--train.max_steps=30"]) == 1
    line = one_line_error(capsys)
    assert f"{shards / TOKENIZER} is not the tokenizer {run} was trained with" in line
    assert digests(run) == before
    (run / FINGERPRINT).unlink()  # an older run: nothing to compare with, it resumes as before
    assert main(["train", "--no-progress", "--resume", str(run), "--train.max_steps=22"]) == 0
