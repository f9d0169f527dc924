"""Bad input to every `slm` command: one line naming the problem and the fix, exit 1, no traceback, nothing lost.

The cases are one table: add a row for each new command. A row's args may name
  {tmp}      the test's folder (the working directory)
  {missing}  a path that does not exist
  {empty} {binary} {latin1} {huge}   files holding nothing / random bytes / Latin-1 text /
                                     HUGE_BYTES of one line without a newline
  {emptydir} an empty folder
  {run}      a copy of a finished tiny run folder, first damaged by the row's `damage`
  {NAME}     a file the row writes from its `files` mapping (NAME -> text)
A row passes when the command exits 1, prints exactly one non-empty line on stderr that contains
`message`, and leaves every file of {run} byte-identical.
Most rows call `slmkit.cli.main` in this process (fast); a few also run `python -m slmkit`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from slmkit.cli import main
from slmkit.data.shards import read_manifest
from slmkit.runs import BEST, CONFIG, LAST, STATE, TOKENIZER

HUGE_BYTES = 5_000_000  # 5 MB on one line: enough to show nothing reads it line by line or chokes on it
DATA = ["--data.shard_dir={tmp}/shards"]  # keep prepared shards inside the test folder


def truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * keep)])

    return damage


def replace(name: str, content: bytes | str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / name).write_bytes(content.encode() if isinstance(content, str) else content)

    return damage


def delete(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def other_char_tokenizer(run: Path) -> None:
    """The tokenizer of a run on other text (fewer characters)."""
    (run / TOKENIZER).write_text(json.dumps({"kind": "char", "chars": list("\nabc")}))


def weights_of_another_model(run: Path) -> None:
    from slmkit.runs import save_weights
    from slmkit.config import ModelConfig
    from slmkit.model import GPT

    save_weights(GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=30)), run / BEST)


def state_of_another_model(run: Path) -> None:
    import torch

    state = torch.load(run / STATE, weights_only=True)
    state["model"] = {k: v[..., :1] for k, v in state["model"].items()}
    torch.save(state, run / STATE)


@dataclass
class Case:
    id: str
    args: list[str]
    message: str
    files: dict[str, str] = field(default_factory=dict)
    damage: Optional[Callable[[Path], None]] = None
    subprocess: bool = False  # also run it as `python -m slmkit`


CASES = [
    # data files given to prepare and train
    Case("prepare-missing-source", ["prepare", "--data.source={missing}", *DATA], "nor an existing file, folder or glob"),
    Case("prepare-empty-source", ["prepare", "--data.source={empty}", *DATA], "has no text; point it at a non-empty"),
    Case("prepare-binary-source", ["prepare", "--data.source={binary}", *DATA], "is not UTF-8 text", subprocess=True),
    Case("prepare-latin1-source", ["prepare", "--data.source={latin1}", *DATA], "set --data.errors=replace"),
    Case("prepare-empty-folder", ["prepare", "--data.source={emptydir}", *DATA], "has no .txt, .md"),
    Case("prepare-bad-jsonl", ["prepare", "--data.source={bad.jsonl}", *DATA], "bad.jsonl:2 is not valid JSON",
         files={"bad.jsonl": '{"text": "fine"}\n{"text": \n'}),
    Case("prepare-jsonl-no-field", ["prepare", "--data.source={r.jsonl}", *DATA], "set --data.text_field",
         files={"r.jsonl": '{"body": "fine"}\n'}),
    Case("train-missing-source", ["train", "--data.source={missing}", *DATA], "nor an existing file, folder or glob"),
    Case("train-empty-source", ["train", "--data.source={empty}", *DATA], "has no text"),
    Case("train-binary-source", ["train", "--data.source={binary}", *DATA], "is not UTF-8 text"),
    Case("train-latin1-source", ["train", "--data.source={latin1}", *DATA], "set --data.errors=replace"),
    Case("train-corpus-shorter-than-a-block", ["train", "--data.source={short.txt}", *DATA, "--model.block_size=64"],
         "fewer than one window", files={"short.txt": "a few words\n" * 20}),
    # recipe files
    Case("recipe-missing", ["train", "--recipe", "{missing}.yaml"], "does not exist"),
    Case("recipe-empty-name", ["prepare", "--recipe", "nope"], "unknown recipe 'nope'"),
    Case("recipe-binary", ["prepare", "--recipe", "{binary}"], "is not valid YAML"),
    Case("recipe-latin1", ["train", "--recipe", "{latin1}"], "is not valid YAML"),
    Case("recipe-huge-line", ["train", "--recipe", "{huge}"], "too big for a recipe", subprocess=True),
    Case("recipe-not-a-mapping", ["train", "--recipe", "{r.yaml}"], "expected a mapping of sections",
         files={"r.yaml": "- model\n- train\n"}),
    Case("recipe-unknown-key", ["train", "--recipe", "{r.yaml}"], "unknown key 'model.n_layr'",
         files={"r.yaml": "model:\n  n_layr: 2\n"}),
    Case("recipe-unknown-section", ["prepare", "--recipe", "{r.yaml}"], "unknown section 'modle'",
         files={"r.yaml": "modle:\n  n_layer: 2\n"}),
    Case("recipe-section-not-mapping", ["train", "--recipe", "{r.yaml}"], "section 'model' should be a mapping",
         files={"r.yaml": "model: 3\n"}),
    Case("recipe-wrong-type", ["train", "--recipe", "{r.yaml}"], "train.lr='fast' should be float",
         files={"r.yaml": "train:\n  lr: fast\n"}),
    Case("recipe-negative-size", ["train", "--recipe", "{r.yaml}"], "model.n_layer=-2 must be a positive integer",
         files={"r.yaml": "model:\n  n_layer: -2\n"}),
    Case("recipe-list-value", ["train", "--recipe", "{r.yaml}"], "model.n_head=[4] should be int",
         files={"r.yaml": "model:\n  n_head: [4]\n"}),
    # overrides on the command line
    Case("override-unknown-key", ["train", "--train.lrr=1"], "unknown key 'train.lrr'"),
    Case("override-wrong-type", ["prepare", "--train.batch_size=lots"], "train.batch_size='lots' should be int"),
    Case("override-n_embd-not-divisible", ["train", "--model.n_embd=30", "--model.n_head=4"], "not divisible"),
    Case("override-block-size-0", ["train", "--model.block_size=0"], "model.block_size=0 must be a positive integer"),
    Case("override-negative-batch", ["train", "--train.batch_size=-8"], "train.batch_size=-8"),
    Case("override-nan-lr", ["train", "--train.lr=nan"], "train.lr=nan must be a finite number"),
    Case("override-val-fraction", ["prepare", "--data.val_fraction=0"], "data.val_fraction=0.0 must be between 0 and 1"),
    Case("override-negative-vocab", ["prepare", "--tokenizer.vocab_size=-5"], "tokenizer.vocab_size=-5 must be >= 0"),
    Case("override-no-value", ["train", "--train.lr"], "needs a value"),
    # run folders given to sample
    Case("sample-missing-run", ["sample", "--run", "{missing}"], "does not exist; train one"),
    Case("sample-not-a-run", ["sample", "--run", "{tmp}"], "config.yaml is missing"),
    Case("sample-truncated-weights", ["sample", "--run", "{run}"], "it may be truncated", damage=truncate(BEST),
         subprocess=True),
    Case("sample-empty-weights", ["sample", "--run", "{run}"], "model.safetensors is not a readable safetensors",
         damage=replace(BEST, b"")),
    Case("sample-truncated-last", ["sample", "--run", "{run}", "--last"], "last.safetensors is not a readable",
         damage=truncate(LAST, 0.9)),
    Case("sample-missing-last", ["sample", "--run", "{run}", "--last"], "last.safetensors does not exist",
         damage=delete(LAST)),
    Case("sample-weights-of-another-model", ["sample", "--run", "{run}"], "does not fit the model in config.yaml",
         damage=weights_of_another_model),
    Case("sample-tokenizer-of-another-run", ["sample", "--run", "{run}"], "the tokenizer belongs to another run",
         damage=other_char_tokenizer),
    Case("sample-tokenizer-wrong-kind", ["sample", "--run", "{run}"], "unknown tokenizer kind 'morse'",
         damage=replace(TOKENIZER, '{"kind": "morse"}')),
    Case("sample-tokenizer-unigram", ["sample", "--run", "{run}"], "Hugging Face model 'Unigram'",
         damage=replace(TOKENIZER, '{"model": {"type": "Unigram", "vocab": []}}')),
    Case("sample-tokenizer-binary", ["sample", "--run", "{run}"], "tokenizer.json is not a tokenizer file",
         damage=replace(TOKENIZER, bytes(range(256)))),
    Case("sample-tokenizer-empty", ["sample", "--run", "{run}"], "tokenizer.json is not a tokenizer file",
         damage=replace(TOKENIZER, b"")),
    Case("sample-tokenizer-missing", ["sample", "--run", "{run}"], "tokenizer.json does not exist",
         damage=delete(TOKENIZER)),
    Case("sample-config-binary", ["sample", "--run", "{run}"], "config.yaml is not valid YAML",
         damage=replace(CONFIG, bytes(range(256)))),
    Case("sample-config-empty", ["sample", "--run", "{run}"], "config.yaml is empty",
         damage=replace(CONFIG, b"")),
    Case("sample-negative-tokens", ["sample", "--run", "{run}", "--max-new-tokens", "-1"],
         "sample.max_new_tokens=-1 must be >= 0"),
    Case("sample-extra-argument", ["sample", "--run", "{run}", "--train.lr=1"], "unrecognized arguments"),
    # text with characters the run's char tokenizer lacks (issue 23.6), and options the registries refuse
    Case("eval-unknown-characters", ["eval", "--run", "{run}", "--data.source", "{odd.txt}"],
         "set --data.unknown=drop", files={"odd.txt": "And God said \u263a\n"}),
    Case("finetune-unknown-characters", ["finetune", "--from", "{run}", "--out", "{tmp}/ft", "--data.source={odd.txt}",
         "--no-progress"], "set --data.unknown=drop", files={"odd.txt": "And God said \u263a\n" * 30}),
    Case("prepare-unknown-policy", ["prepare", "--data.unknown=skip", *DATA], "must be 'error' or 'drop'"),
    Case("prepare-unknown-tokenizer", ["prepare", "--tokenizer.kind=sentencepiece", *DATA],
         "valid: bpe, char, gpt2, word, wordpiece"),
    # shard files and folders given to data info
    Case("data-info-missing", ["data", "info", "{missing}"], "does not exist"),
    Case("data-info-empty", ["data", "info", "{empty}"], "too short to be a shard"),
    Case("data-info-binary", ["data", "info", "{binary}"], "bad magic"),
    Case("data-info-huge-line", ["data", "info", "{huge}"], "bad magic"),
    Case("data-info-empty-folder", ["data", "info", "{emptydir}"], "emptydir"),
    # run folders given to train --resume
    Case("resume-missing-run", ["train", "--resume", "{missing}"], "has no state.pt"),
    Case("resume-truncated-state", ["train", "--resume", "{run}"], "state.pt is unreadable or truncated",
         damage=truncate(STATE), subprocess=True),
    Case("resume-empty-state", ["train", "--resume", "{run}"], "state.pt is unreadable or truncated",
         damage=replace(STATE, b"")),
    Case("resume-binary-state", ["train", "--resume", "{run}"], "state.pt is unreadable or truncated",
         damage=replace(STATE, bytes(range(256)) * 10)),
    Case("resume-state-of-another-model", ["train", "--resume", "{run}"], "does not fit the model in config.yaml",
         damage=state_of_another_model),
    Case("resume-config-binary", ["train", "--resume", "{run}"], "config.yaml is not valid YAML",
         damage=replace(CONFIG, bytes(range(256)))),
    Case("resume-with-recipe", ["train", "--resume", "{run}", "--recipe", "kjv-char"], "drop --recipe"),
    Case("resume-changes-model", ["train", "--resume", "{run}", "--model.n_layer=3"], "cannot change when resuming"),
    Case("resume-with-overwrite", ["train", "--resume", "{run}", "--overwrite"], "drop --overwrite"),
    # an existing run folder given as the --out of a new run
    Case("train-out-existing-run", ["train", "--out", "{run}", *DATA], "holds a run; continue it with `slm train --resume",
         subprocess=True),
    Case("finetune-out-existing-run", ["finetune", "--from", "{run}", "--out", "{run}", *DATA],
         "give a new --out, or add --overwrite to replace it"),
    # export and import
    Case("export-hf-out-is-a-file", ["export", "--run", "{run}", "--out", "{empty}"], "is a file; --format hf writes a folder"),
    Case("export-gguf-out-is-a-folder", ["export", "--run", "{run}", "--format", "gguf", "--out", "{emptydir}"],
         "emptydir: Is a directory"),
    Case("export-onnx-out-is-a-folder", ["export", "--run", "{run}", "--format", "onnx", "--out", "{emptydir}"],
         "emptydir: Is a directory"),
    Case("import-hf-not-a-model", ["import-hf", "{emptydir}", "--out", "{tmp}/imported"], "config.json is missing"),
    Case("import-hf-unknown-model", ["import-hf", "{tmp}", "--out", "{tmp}/imported"], "model_type 'mistral' does not import",
         files={"config.json": '{"model_type": "mistral"}'}),
]


@pytest.fixture
def bad_files(tmp_path, monkeypatch):
    """The shared bad files and the working directory of one case."""
    monkeypatch.chdir(tmp_path)
    rng = random.Random(0)
    files = {
        "empty": tmp_path / "empty.txt",
        "binary": tmp_path / "binary.bin",
        "latin1": tmp_path / "latin1.txt",
    }
    files["empty"].write_bytes(b"")
    files["binary"].write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    files["latin1"].write_bytes("Ça coûte très cher, dit l'élève.\n".encode("latin-1") * 50)
    files["emptydir"] = tmp_path / "emptydir"
    files["emptydir"].mkdir()
    return {"tmp": tmp_path, "missing": tmp_path / "no" / "such", **files}


def huge_line(path: Path) -> Path:
    """HUGE_BYTES of words on one line, no newline."""
    words = b"and the earth was without form and void darkness upon face of deep "
    path.write_bytes((words * (HUGE_BYTES // len(words) + 1))[:HUGE_BYTES])
    return path


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def setup_case(case: Case, bad_files: dict, trained_run: Path) -> tuple[list[str], Optional[Path]]:
    tmp = bad_files["tmp"]
    paths = dict(bad_files)
    for name, text in case.files.items():
        (tmp / name).write_text(text, encoding="utf-8")
        paths[name] = tmp / name
    joined = " ".join(case.args)
    if "{huge}" in joined:
        paths["huge"] = huge_line(tmp / "huge.txt")
    run = None
    if "{run}" in joined:
        run = tmp / "run"
        shutil.copytree(trained_run, run)
        if case.damage:
            case.damage(run)
        paths["run"] = run
    return [re.sub(r"\{([^{}]+)\}", lambda m: str(paths[m.group(1)]), arg) for arg in case.args], run


def assert_one_line(stderr: str, message: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("slm: error: "), stderr
    assert message in lines[0], stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, bad_files, trained_run, capsys):
    args, run = setup_case(case, bad_files, trained_run)
    before = digests(run) if run else None
    assert main(args) == 1
    out = capsys.readouterr()
    assert_one_line(out.err, case.message)
    if run:
        assert digests(run) == before  # nothing in the run folder changed


@pytest.mark.parametrize("case", [c for c in CASES if c.subprocess], ids=[c.id for c in CASES if c.subprocess])
def test_bad_input_through_the_real_command(case, bad_files, trained_run):
    args, run = setup_case(case, bad_files, trained_run)
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)  # warnings would show on stderr: there must be none
    result = subprocess.run(
        [sys.executable, "-m", "slmkit", *args], cwd=bad_files["tmp"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr
    assert_one_line(result.stderr, case.message)


def test_huge_single_line_corpus_is_prepared(bad_files):
    """A corpus of one 5 MB line with no newline is one document: it prepares, split by characters."""
    path = huge_line(bad_files["tmp"] / "huge.txt")
    shards = bad_files["tmp"] / "shards"
    assert main(["prepare", f"--data.source={path}", f"--data.shard_dir={shards}"]) == 0
    splits = read_manifest(shards)["splits"]
    assert splits["train"]["bytes"] + splits["val"]["bytes"] == HUGE_BYTES
    # one char token per character, plus an end-of-text per split
    assert splits["train"]["tokens"] + splits["val"]["tokens"] == HUGE_BYTES + 2
