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
`message`, and leaves every file of the test folder (so {run} too) byte-identical, with no new file
(but under the row's `writes`).
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
from slmkit.runs import BEST, CONFIG, FINGERPRINT, LAST, METRICS, STATE, TOKENIZER

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


def permuted_tokenizer(run: Path) -> None:
    """tokenizer.json swapped: the run's characters in another order (same vocabulary size, other ids)"""
    data = json.loads((run / TOKENIZER).read_text(encoding="utf-8"))
    data["chars"] = [data["chars"][0], *reversed(data["chars"][1:])]
    (run / TOKENIZER).write_text(json.dumps(data), encoding="utf-8")


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
    writes: tuple[str, ...] = ()  # files under these (relative) paths may be new: a step that succeeded first


SWAPPED = "is not the tokenizer"  # ... {run} was trained with (sha256 ..., its tokenizer.sha256 says ...)
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
         "fewer than one window", files={"short.txt": "a few words\n" * 20}, writes=("shards/",)),
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
    Case("resume-with-recipe", ["train", "--resume", "{run}", "--recipe", "kjv-char-gpt2"], "drop --recipe"),
    Case("resume-changes-model", ["train", "--resume", "{run}", "--model.n_layer=3"], "cannot change when resuming"),
    Case("resume-with-overwrite", ["train", "--resume", "{run}", "--overwrite"], "drop --overwrite"),
    # an existing run folder given as the --out of a new run
    Case("train-out-existing-run", ["train", "--out", "{run}", *DATA], "holds a run; continue it with `slm train --resume",
         subprocess=True),
    # a tokenizer.json swapped for another of the same vocabulary size: every entry point refuses the run
    Case("sample-swapped-tokenizer", ["sample", "--run", "{run}"], SWAPPED, damage=permuted_tokenizer, subprocess=True),
    Case("eval-swapped-tokenizer", ["eval", "--run", "{run}"], SWAPPED, damage=permuted_tokenizer),
    Case("serve-swapped-tokenizer", ["serve", "--run", "{run}", "--port", "0"], SWAPPED, damage=permuted_tokenizer),
    Case("resume-swapped-tokenizer", ["train", "--resume", "{run}"], SWAPPED, damage=permuted_tokenizer),
    Case("finetune-swapped-tokenizer", ["finetune", "--from", "{run}", "--out", "{tmp}/ft", *DATA], SWAPPED,
         damage=permuted_tokenizer),
    Case("quantize-swapped-tokenizer", ["quantize", "--run", "{run}"], SWAPPED, damage=permuted_tokenizer),
    Case("export-swapped-tokenizer", ["export", "--run", "{run}", "--out", "{tmp}/hf"], SWAPPED,
         damage=permuted_tokenizer),
    Case("sample-bad-fingerprint", ["sample", "--run", "{run}"], "tokenizer.sha256 is not a sha256 line",
         damage=replace(FINGERPRINT, "garbage\n")),
    # eval
    Case("eval-missing-weights", ["eval", "--run", "{run}"], "model.safetensors does not exist", damage=delete(BEST)),
    Case("eval-no-test-split", ["eval", "--run", "{run}", "--split", "test"], "has no 'test' split"),
    Case("eval-int8-not-written", ["eval", "--run", "{run}", "--int8"], "write it with `slm quantize"),
    Case("eval-missing-source", ["eval", "--run", "{run}", "--data.source", "{missing}"], "nor an existing file"),
    Case("eval-binary-source", ["eval", "--run", "{run}", "--data.source", "{binary}"], "is not UTF-8 text"),
    Case("eval-bad-unknown-policy", ["eval", "--run", "{run}", "--data.unknown", "skip"], "invalid choice: 'skip'"),
    Case("eval-extra-argument", ["eval", "--run", "{run}", "--train.lr=1"], "unrecognized arguments"),
    # plot
    Case("plot-missing-run", ["plot", "{missing}", "--out", "{tmp}/p.png"], "metrics.csv does not exist"),
    Case("plot-not-a-run", ["plot", "{emptydir}", "--out", "{tmp}/p.png"], "metrics.csv does not exist"),
    Case("plot-metrics-binary", ["plot", "{run}", "--out", "{tmp}/p.png"], "metrics.csv",
         damage=replace(METRICS, bytes(range(256)))),
    Case("plot-metrics-empty", ["plot", "{run}", "--out", "{tmp}/p.png"], "metrics.csv", damage=replace(METRICS, b"")),
    Case("plot-no-runs", ["plot"], "the following arguments are required: DIR"),
    # quantize
    Case("quantize-missing-run", ["quantize", "--run", "{missing}"], "does not exist; train one"),
    Case("quantize-truncated-weights", ["quantize", "--run", "{run}"], "it may be truncated", damage=truncate(BEST)),
    Case("quantize-config-empty", ["quantize", "--run", "{run}"], "config.yaml is empty", damage=replace(CONFIG, b"")),
    Case("quantize-no-run-flag", ["quantize"], "the following arguments are required: --run"),
    # export
    Case("export-missing-weights", ["export", "--run", "{run}", "--out", "{tmp}/hf"], "model.safetensors does not exist",
         damage=delete(BEST)),
    Case("export-tokenizer-missing", ["export", "--run", "{run}", "--out", "{tmp}/hf"], "tokenizer.json does not exist",
         damage=delete(TOKENIZER)),
    Case("export-unknown-format", ["export", "--run", "{run}", "--out", "{tmp}/x", "--format", "tflite"],
         "invalid choice: 'tflite'", subprocess=True),
    Case("export-gguf-unknown-dtype", ["export", "--run", "{run}", "--format", "gguf", "--out", "{tmp}/m.gguf",
         "--dtype", "q4_k"], "invalid choice: 'q4_k'"),
    Case("export-gguf-missing-weights", ["export", "--run", "{run}", "--format", "gguf", "--out", "{tmp}/m.gguf"],
         "model.safetensors does not exist", damage=delete(BEST)),
    Case("export-onnx-swapped-tokenizer", ["export", "--run", "{run}", "--format", "onnx", "--out", "{tmp}/m.onnx"],
         SWAPPED, damage=permuted_tokenizer),
    Case("export-no-out", ["export", "--run", "{run}"], "the following arguments are required: --out"),
    # import-hf
    Case("import-hf-missing-folder", ["import-hf", "{missing}", "--out", "{tmp}/imp"], "is not a folder"),
    Case("import-hf-not-hf", ["import-hf", "{emptydir}", "--out", "{tmp}/imp"], "config.json is missing"),
    Case("import-hf-config-binary", ["import-hf", "{hf}", "--out", "{tmp}/imp"], "config.json is not valid JSON",
         files={"hf/config.json": "\x00\x01{"}),
    Case("import-hf-unknown-family", ["import-hf", "{hf}", "--out", "{tmp}/imp"], "model_type 'llama-x' does not import",
         files={"hf/config.json": '{"model_type": "llama-x"}'}),
    Case("import-hf-no-weights", ["import-hf", "{hf}", "--out", "{tmp}/imp"], "has no model.safetensors",
         files={"hf/config.json": '{"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 8}'}),
    Case("import-hf-bad-weights", ["import-hf", "{hf}", "--out", "{tmp}/imp"], "model.safetensors is not readable",
         files={"hf/config.json": '{"model_type": "gpt2"}', "hf/model.safetensors": "not tensors"}),
    # serve: bad flags and run folders with missing files (refused before it listens)
    Case("serve-missing-run", ["serve", "--run", "{missing}"], "does not exist; train one"),
    Case("serve-missing-weights", ["serve", "--run", "{run}", "--port", "0"], "model.safetensors does not exist",
         damage=delete(BEST)),
    Case("serve-missing-config", ["serve", "--run", "{run}", "--port", "0"], "config.yaml is missing",
         damage=delete(CONFIG)),
    Case("serve-missing-tokenizer", ["serve", "--run", "{run}", "--port", "0"], "tokenizer.json does not exist",
         damage=delete(TOKENIZER)),
    Case("serve-port-not-a-number", ["serve", "--run", "{run}", "--port", "http"], "invalid int value: 'http'",
         subprocess=True),
    Case("serve-port-out-of-range", ["serve", "--run", "{run}", "--port", "99999"], "serve.port=99999 must be between"),
    Case("serve-negative-limit", ["serve", "--run", "{run}", "--serve.max_tokens_limit=-1"],
         "serve.max_tokens_limit=-1 must be a positive integer"),
    Case("serve-other-override", ["serve", "--run", "{run}", "--train.lr=1"], "takes serve.* overrides only"),
    Case("serve-unknown-key", ["serve", "--run", "{run}", "--serve.prot=1"], "unknown key 'serve.prot'"),
    # finetune
    Case("finetune-missing-run", ["finetune", "--from", "{missing}", "--out", "{tmp}/ft"], "config.yaml is missing"),
    Case("finetune-missing-weights", ["finetune", "--from", "{run}", "--out", "{tmp}/ft", *DATA],
         "model.safetensors does not exist; train the run first or pick another --from", damage=delete(BEST)),
    Case("finetune-changes-model", ["finetune", "--from", "{run}", "--out", "{tmp}/ft", "--model.n_layer=3"],
         "--model.n_layer cannot change when fine-tuning"),
    Case("finetune-changes-tokenizer", ["finetune", "--from", "{run}", "--out", "{tmp}/ft", "--tokenizer.kind=bpe"],
         "--tokenizer.kind cannot change when fine-tuning"),
    Case("finetune-missing-source", ["finetune", "--from", "{run}", "--out", "{tmp}/ft", "--data.source={missing}",
         *DATA], "nor an existing file, folder or glob"),
    Case("finetune-binary-source", ["finetune", "--from", "{run}", "--out", "{tmp}/ft", "--data.source={binary}",
         *DATA], "is not UTF-8 text"),
    Case("finetune-no-from", ["finetune", "--out", "{tmp}/ft"], "the following arguments are required: --from"),
    # the command itself
    Case("unknown-command", ["trian"], "invalid choice: 'trian'", subprocess=True),
    Case("data-no-action", ["data"], "the following arguments are required: ACTION"),
    Case("finetune-out-existing-run", ["finetune", "--from", "{run}", "--out", "{run}", *DATA],
         "give a new --out, or add --overwrite to replace it"),
    # sweeps: grids, sweep files and their --out
    Case("sweep-grid-no-values", ["sweep", "--grid", "train.lr", *DATA], "should look like KEY=V1,V2"),
    Case("sweep-grid-unknown-key", ["sweep", "--grid", "train.lrr=1,2", *DATA], "unknown key 'train.lrr'"),
    Case("sweep-grid-bad-value", ["sweep", "--grid", "model.n_layer=2,0", *DATA],
         "model.n_layer=0 must be a positive integer", subprocess=True),
    Case("sweep-range-without-samples", ["sweep", "--grid", "train.lr=1e-4:1e-2", *DATA], "add --samples K"),
    Case("sweep-zero-seeds", ["sweep", "--grid", "train.lr=1e-3", "--seeds", "0", *DATA], "--seeds=0 must be >= 1"),
    Case("sweep-zero-parallel", ["sweep", "--grid", "train.lr=1e-3", "--parallel", "0", *DATA],
         "--parallel=0 must be >= 1"),
    Case("sweep-file-missing", ["sweep", "--file", "{missing}.yaml"], "does not exist"),
    Case("sweep-file-binary", ["sweep", "--file", "{binary}"], "is not valid YAML"),
    Case("sweep-file-not-a-sweep", ["sweep", "--file", "{s.yaml}"], "should be a mapping of recipe, seeds",
         files={"s.yaml": "model:\n  n_layer: 2\n"}),
    Case("sweep-out-existing-run", ["sweep", "--grid", "train.lr=1e-3", "--out", "{run}", *DATA],
         "is not empty and holds no sweep; give a new --out"),
    # run folders given to runs
    Case("runs-missing", ["runs", "{missing}"], "does not exist; give run folders"),
    Case("runs-empty-folder", ["runs", "{emptydir}"], "holds no run folder"),
    Case("runs-config-binary", ["runs", "{run}"], "config.yaml is not valid YAML", damage=replace(CONFIG, bytes(range(256)))),
    Case("runs-bad-format", ["runs", "{run}", "--format", "html"], "--format 'html' is not known"),
    Case("runs-bad-sort", ["runs", "{run}", "--sort", "speed"], "--sort 'speed' is not a column nor a config key"),
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
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text, encoding="utf-8")
        paths[name] = tmp / name
        paths[name.split("/")[0]] = tmp / name.split("/")[0]  # {hf} for files under hf/
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
    tmp = bad_files["tmp"]
    before = digests(tmp)
    assert main(args) == 1
    out = capsys.readouterr()
    assert_one_line(out.err, case.message)
    after = {k: v for k, v in digests(tmp).items() if not k.startswith(case.writes)}
    assert after == before  # nothing on disk changed: the run folder, the inputs, no new files


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
    assert main(["prepare", f"--data.source={path}", f"--data.shard_dir={shards}", "--tokenizer.kind=char"]) == 0
    splits = read_manifest(shards)["splits"]
    assert splits["train"]["bytes"] + splits["val"]["bytes"] == HUGE_BYTES
    # one char token per character, plus an end-of-text per split
    assert splits["train"]["tokens"] + splits["val"]["tokens"] == HUGE_BYTES + 2
