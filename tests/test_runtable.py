"""slm runs: the table read from run folders of any age (old and new final-report lines), finished or not."""

from __future__ import annotations

import csv
import io

import pytest

from slmkit.cli import main
from slmkit.config import RunConfig, save_config
from slmkit.errors import ConfigError, DataError
from slmkit.runs import CONFIG, LOG, METRICS
from slmkit.runtable import finished, format_table, read_run, run_table, without_seed

OLD_DONE = "done: 20 steps, 5,120 tokens in 3s; full val split: loss 2.1000 nats/token, 3.0300 bits/char, 3.0123 bits/byte, perplexity 8.17"
NEW_DONE = (
    "done: 40 steps, 10,240 tokens in 5s; best weights (step 40) on the val split: 1,000 tokens, 4,000 bytes: "
    "loss 4.2000 nats/token, perplexity 66.686, 6.0593 bits/token, 1.5148 bits/byte "
    "(not comparable across tokenizers: 12.50% of the bytes became the unknown token)"
)


def write_run(folder, log: list[str], metrics: str, kind: str = "char", lr: float = 1e-3, seed: int = 1337):
    folder.mkdir(parents=True)
    cfg = RunConfig()
    cfg.tokenizer.kind, cfg.train.lr, cfg.train.seed = kind, lr, seed
    save_config(cfg, folder / CONFIG)
    (folder / METRICS).write_text(metrics)
    (folder / LOG).write_text("".join(f"2026-01-02 03:04:05 {line}\n" for line in log))
    return folder


OLD_METRICS = "step,lr,train_loss,val_loss,elapsed\n10,0.001,3.0,2.9,1.5\n20,0.001,2.5,2.7,3.0\n"
NEW_METRICS = (
    "step,epoch,tokens,lr,train_loss,val_loss,perplexity,tokens_per_second,elapsed,event\n"
    "20,0.5,5120,0.001,3.0,2.6,13.4,1000.0,5.0,\n30,0.75,7680,0.001,2.9,,,3000.0,7.5,\n"
    "40,1.0,10240,0.001,2.8,2.65,14.1,2000.0,10.0,early_stop\n"
)


def test_an_old_run_folder_reads(tmp_path):
    """Before tokens and tokens/s were logged, and the old final-report line."""
    run = write_run(tmp_path / "old", ["training kjv-char: 0.82M parameters", "step 20: train 2.5, val 2.7", OLD_DONE], OLD_METRICS)
    row = read_run(run)
    assert (row.steps, row.tokens, row.best_val_loss, row.bits_per_byte, row.wall_time) == (20, 0, 2.7, 3.0123, 3.0)
    assert row.stopped == "budget" and row.parameters is None and not row.lossy  # no model.safetensors: unknown
    assert row.tokens_per_second != row.tokens_per_second  # NaN: not logged
    assert "-" in format_table(run_table([run])).splitlines()[1].split()


def test_a_lossy_tokenizer_is_marked_with_its_unknown_share(tmp_path):
    log = ["training x", "stopping at step 40: early stop", NEW_DONE]
    run = write_run(tmp_path / "word", log, NEW_METRICS, kind="word")
    row = read_run(run)
    assert (row.steps, row.tokens, row.best_val_loss, row.bits_per_byte) == (40, 10240, 2.6, 1.5148)
    assert (row.tokens_per_second, row.stopped, row.lossy, row.unknown_share) == (2000.0, "early_stop", True, 0.125)
    text = format_table(run_table([run]))
    assert "1.5148 *" in text.splitlines()[1]
    assert text.splitlines()[-1] == (
        "* word: lossy tokenizer, bits/byte not comparable across tokenizers: 12.50% of the val bytes became the unknown token"
    )
    rows = list(csv.DictReader(io.StringIO(format_table(run_table([run]), "csv"))))
    assert rows[0]["bits_per_byte"] == "1.5148" and rows[0]["bits_per_byte_comparable"] == "false"


def test_a_killed_or_resumed_run_is_finished_only_after_its_last_session_reports(tmp_path):
    run = write_run(tmp_path / "r", ["training x", "step 10: train 3.0, val 2.9"], OLD_METRICS)
    assert not finished(run) and read_run(run).stopped == "unfinished"
    assert read_run(run).bits_per_byte != read_run(run).bits_per_byte  # NaN: no final report yet
    with open(run / LOG, "a") as f:
        f.write(f"2026-01-02 03:04:05 resuming x\n2026-01-02 03:05:05 {OLD_DONE}\n")
    assert finished(run) and read_run(run).stopped == "budget"
    with open(run / LOG, "a") as f:  # resumed again with a bigger budget, then killed
        f.write("2026-01-02 03:06:05 resuming x\n")
    assert not finished(run)


def test_points_group_seeds_and_the_differing_keys_are_shown(tmp_path):
    for lr in (1e-3, 3e-3):
        for seed in (1, 2):
            write_run(tmp_path / "s" / f"lr={lr},seed={seed}", ["training", OLD_DONE], OLD_METRICS, lr=lr, seed=seed)
    table = run_table([tmp_path / "s"])
    assert [(r["name"], r["overrides"], r["seeds"]) for r in table.rows] == [
        ("lr=0.001", "train.lr=0.001", 2), ("lr=0.003", "train.lr=0.003", 2)
    ]  # fmt: skip
    assert table.rows[0]["best_val_loss"] == (2.7, 0.0)
    per_run = run_table([tmp_path / "s"], sort="train.lr", per_run=True)
    assert per_run.rows[0]["overrides"] == "train.lr=0.001 train.seed=1" and len(per_run.rows) == 4
    assert without_seed("lr=0.001,seed=12") == "lr=0.001" and without_seed("seeds=3") == ""


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda p: run_table([p / "nope"]), DataError, "does not exist; give run folders"),
        (lambda p: run_table([p / "empty"]), DataError, "holds no run folder"),
        (lambda p: format_table(run_table([p / "r"]), "html"), ConfigError, "--format 'html' is not known"),
        (lambda p: run_table([p / "r"], sort="speed"), ConfigError, "--sort 'speed' is not a column nor a config key"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, call, error, message):
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "r", ["training", OLD_DONE], OLD_METRICS)
    with pytest.raises(error, match=message):
        call(tmp_path)


def test_slm_runs_prints_the_table(tmp_path, capsys):
    write_run(tmp_path / "a", ["training", OLD_DONE], OLD_METRICS)
    assert main(["runs", str(tmp_path / "a"), "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| run | overrides | params") and lines[2].startswith("| a |  | - | 20 |")


def test_tensorboard_hparams_hold_the_config_and_the_final_metrics(tmp_path, tiny_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from slmkit.config import load_recipe
    from slmkit.runs import TENSORBOARD
    from slmkit.train import train

    overrides = {**tiny_overrides, "train.tensorboard": True, "train.max_steps": 10, "train.lr": 2e-3}
    result = train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "run", progress_bar=False)
    events = EventAccumulator(str(tmp_path / "run" / TENSORBOARD))
    events.Reload()
    for name, value in [("best_val_loss", result.best_val_loss), ("steps", 10)]:
        assert [e.value for e in events.Scalars(f"hparams/{name}")] == [pytest.approx(value)]
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["train.lr"].number_value == 2e-3 and start.hparams["model.n_layer"].number_value == 2
    assert start.hparams["tokenizer.kind"].string_value == "char" and "sample.prompt" not in start.hparams and "train.threads" not in start.hparams
    assert [e.value for e in events.Scalars("val_loss")]  # the training's own scalars are still there
