"""The training engine: schedules, optimizer groups, early stopping, accumulation, non-finite steps, checkpoints."""

import csv
import importlib
import math
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tqdm import tqdm

from slmkit import progress
from slmkit.config import ModelConfig, TrainConfig, load_recipe
from slmkit.errors import ConfigError, TrainingError
from slmkit.model import GPT
from slmkit.optim import Muon, early_stop_update, lr_multiplier, make_optimizers, plateau_update, warmup_progress
from slmkit.runs import CHECKPOINTS, CONFIG, LAST, LOG, METRICS, STATE, TENSORBOARD, load_state, resume_config
from slmkit.train import TrainState, resolve_precision, train


def tiny_model() -> GPT:
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50))


def metrics(run_dir) -> list[dict]:
    with open(run_dir / METRICS, newline="") as f:
        return list(csv.DictReader(f))


# --- schedules -------------------------------------------------------------------------------------------


def test_warmup_then_cosine_exact_values():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="cosine")
    warm = lambda step: warmup_progress(cfg, step, 0.0, time_budget=False)  # noqa: E731
    assert lr_multiplier(cfg, warm(0), 0.0, 0, 1.0) == pytest.approx(0.1)
    assert lr_multiplier(cfg, warm(9), 0.0, 0, 1.0) == pytest.approx(1.0)
    assert lr_multiplier(cfg, warm(10), 0.0, 0, 1.0) == pytest.approx(1.0)
    assert lr_multiplier(cfg, warm(50), 0.5, 0, 1.0) == pytest.approx(0.55)  # halfway between 1 and min_lr/lr
    assert lr_multiplier(cfg, warm(99), 1.0, 0, 1.0) == pytest.approx(0.1)
    assert lr_multiplier(cfg, warm(99), 1.7, 0, 1.0) == pytest.approx(0.1)  # progress is clamped


def test_cooldown_fraction_is_constant_then_cosine():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, schedule="cosine", cooldown_fraction=0.3)
    at = lambda fraction: lr_multiplier(cfg, 1.0, fraction, 0, 1.0)  # noqa: E731
    assert [at(f) for f in (0.0, 0.35, 0.7)] == [1.0, 1.0, 1.0]  # stable until the last 30%
    assert at(0.85) == pytest.approx(0.55) and at(1.0) == pytest.approx(0.1)  # then the cosine to min_lr
    whole = TrainConfig(lr=1e-3, min_lr=1e-4, schedule="cosine", cooldown_fraction=1.0)
    assert lr_multiplier(whole, 1.0, 0.5, 0, 1.0) == pytest.approx(0.55)  # 1.0: the cosine over the whole run


def test_warmup_fraction_and_the_time_budget_cap():
    by_fraction = TrainConfig(warmup_steps=100, warmup_fraction=0.2)
    assert warmup_progress(by_fraction, 0, 0.1, time_budget=True) == pytest.approx(0.5)  # warmup_steps ignored
    assert warmup_progress(by_fraction, 500, 0.1, time_budget=False) == pytest.approx(0.5)
    steps = TrainConfig(warmup_steps=100)
    assert warmup_progress(steps, 9, 0.5, time_budget=False) == pytest.approx(0.1)  # a step budget: warmup_steps
    # a time budget: warmup ends at warmup_steps or 10% of the budget, whichever comes first
    assert warmup_progress(steps, 9, 0.05, time_budget=True) == pytest.approx(0.5)
    assert warmup_progress(steps, 9, 0.1, time_budget=True) == pytest.approx(1.0)
    assert warmup_progress(steps, 99, 0.01, time_budget=True) == pytest.approx(1.0)


def test_plateau_halves_after_patience_evaluations_without_improvement():
    cfg = TrainConfig(plateau_factor=0.5, plateau_patience=2)
    state = TrainState()
    scales = []
    for loss in [3.0, 2.0, 2.5, 2.1, 2.2, 1.9, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]:
        plateau_update(state, loss, cfg)
        scales.append(state.plateau_scale)
    # bad evals after 2.0: 2.5, 2.1 (patience), 2.2 -> halve; 1.9 improves; then three bad -> halve, three -> halve
    assert scales == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]


def test_early_stopping_counts_evaluations_without_min_delta_improvement():
    cfg = TrainConfig(early_stop_patience=2, early_stop_min_delta=0.1)
    state = TrainState()
    stops = [early_stop_update(state, loss, cfg) for loss in [3.0, 2.5, 2.45, 2.3, 2.35, 2.39]]
    # 2.45 is not 0.1 better than 2.5 (bad 1); 2.3 is (reset); 2.35, 2.39 bad -> stop
    assert stops == [False, False, False, False, False, True]
    off = TrainConfig(early_stop_patience=0)
    state = TrainState(early_stop_best=1.0)
    assert not any(early_stop_update(state, 5.0, off) for _ in range(10))


# --- optimizers ------------------------------------------------------------------------------------------


def test_adamw_decays_matrices_only():
    model = tiny_model()
    [opt] = make_optimizers(model, TrainConfig(optimizer="adamw", weight_decay=0.1), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith(".weight") and p.dim() == 2 for p in decay["params"])
    decayed = {names[id(p)] for p in decay["params"]}
    assert "transformer.wte.weight" not in decayed and "transformer.wpe.weight" not in decayed
    assert {n for n in names.values() if "ln_" in n or n.endswith(".bias")} <= {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_adam_and_muon_groups():
    model = tiny_model()
    [adam] = make_optimizers(model, TrainConfig(optimizer="adam"), torch.device("cpu"))
    # torch's Adam (a subclass whose step skips the torch._dynamo wrapper: see optim._EagerStep), not AdamW
    assert isinstance(adam, torch.optim.Adam) and not isinstance(adam, torch.optim.AdamW)
    adamw, muon = make_optimizers(model, TrainConfig(optimizer="muon", muon_lr=0.03, muon_momentum=0.9), torch.device("cpu"))
    assert isinstance(muon, Muon) and muon.param_groups[0]["lr"] == 0.03 and muon.param_groups[0]["momentum"] == 0.9
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = {names[id(p)] for p in muon.param_groups[0]["params"]}
    assert hidden == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    rest = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert "transformer.wte.weight" in rest and "transformer.ln_f.weight" in rest and not hidden & rest


def test_precision_auto_is_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_precision("fp16", torch.device("cpu")) is torch.float16


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.optimizer", "sgd", "valid: adamw, adam, muon"),
        ("train.schedule", "linear", "valid: constant, cosine"),
        ("train.precision", "fp8", "valid: auto, fp32"),
        ("train.gamma", 1.5, "must be in (0, 1]"),
        ("train.grad_accum_steps", 0, "positive integer"),
        ("train.seq_len", 64, "exceeds model.block_size"),
        ("train.full_context_fraction", 1.5, "train.full_context_fraction=1.5 must be in"),
        ("train.muon_beta2", 1.0, "train.muon_beta2=1.0 must be in"),
    ],
)
def test_bad_train_keys(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        load_recipe("kjv-char-gpt2", {"model.block_size": 32, key: value})


# --- the loop, end to end on the tiny corpus -------------------------------------------------------------


def test_accumulation_equals_a_bigger_batch(tmp_path, tiny_overrides):
    one = dict(tiny_overrides, **{"train.max_steps": 3, "train.warmup_steps": 0, "train.grad_clip": 0})
    big = train(load_recipe("kjv-char-gpt2", dict(one, **{"train.batch_size": 16})), out=tmp_path / "big", progress_bar=False)
    acc = train(
        load_recipe("kjv-char-gpt2", dict(one, **{"train.batch_size": 8, "train.grad_accum_steps": 2})),
        out=tmp_path / "acc",
        progress_bar=False,
    )
    assert big.tokens == acc.tokens == 3 * 16 * 32
    a, b = load_file(tmp_path / "big" / LAST), load_file(tmp_path / "acc" / LAST)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_epochs_seq_len_and_exponential_decay(tmp_path, tiny_overrides):
    overrides = dict(
        tiny_overrides,
        **{"train.max_steps": 0, "train.max_epochs": 2, "train.seq_len": 16, "train.batch_size": 32, "train.schedule": "exponential",
           "train.gamma": 0.5, "train.warmup_steps": 0, "train.log_interval": 1, "train.lr": 1e-3},
    )  # fmt: skip
    result = train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "run", progress_bar=False)
    rows = metrics(tmp_path / "run")
    per_epoch = len(rows) // 2
    assert result.steps == 2 * per_epoch and float(rows[-1]["epoch"]) == pytest.approx(2.0)
    assert result.tokens == result.steps * 32 * 16  # seq_len 16 windows, not block_size 32
    assert {float(r["lr"]) for r in rows[:per_epoch]} == {1e-3}
    assert {float(r["lr"]) for r in rows[per_epoch:]} == {5e-4}


def test_full_context_fraction_trains_block_size_windows_late_at_the_same_tokens(tmp_path, tiny_overrides, monkeypatch):
    from slmkit.data.sampler import WindowSampler

    shapes, original = [], WindowSampler.next

    def recorded(self):
        x, y = original(self)
        shapes.append(tuple(x.shape))
        return x, y

    monkeypatch.setattr(WindowSampler, "next", recorded)
    overrides = dict(tiny_overrides, **{"train.max_steps": 8, "train.seq_len": 8, "train.full_context_fraction": 0.25,
                                        "train.eval_batches": 0})  # whole-split evaluations: no sampled val batches
    result = train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "run", progress_bar=False)
    assert shapes == [(8, 8)] * 6 + [(2, 32)] * 2  # the last quarter: block_size 32 windows, 8 * 8 / 32 of them
    assert result.tokens == 8 * 64
    with pytest.raises(ConfigError, match="multiple of model.block_size=32"):
        load_recipe("kjv-char-gpt2", dict(overrides, **{"train.batch_size": 3}))
    for seq_len in (0, 32):  # windows already block_size long: the option would silently do nothing
        with pytest.raises(ConfigError, match="needs train.seq_len below model.block_size=32"):
            load_recipe("kjv-char-gpt2", dict(overrides, **{"train.seq_len": seq_len}))


def test_early_stop_and_stop_at_val_loss(tmp_path, tiny_overrides):
    overrides = dict(tiny_overrides, **{"train.max_steps": 200, "train.eval_interval": 2, "train.lr": 1e-6})
    stopped = train(
        load_recipe("kjv-char-gpt2", dict(overrides, **{"train.early_stop_patience": 2, "train.early_stop_min_delta": 1.0})),
        out=tmp_path / "early",
        progress_bar=False,
    )
    # no evaluation improves by 1 nat at lr 1e-6: the first sets the best, the next two are bad
    assert stopped.stopped == "early_stop" and stopped.steps == 6
    assert metrics(tmp_path / "early")[-1]["event"] == "early_stop"

    reached = train(
        load_recipe("kjv-char-gpt2", dict(overrides, **{"train.lr": 3e-3, "train.stop_at_val_loss": 3.5})),
        out=tmp_path / "reached",
        progress_bar=False,
    )
    assert reached.stopped == "reached" and reached.steps < 200
    row = metrics(tmp_path / "reached")[-1]
    assert row["event"] == "reached" and float(row["val_loss"]) <= 3.5
    assert reached.reached["step"] == reached.steps == int(row["step"]) and reached.reached["tokens"] == int(row["tokens"])


def test_nonfinite_steps_are_skipped_then_the_run_stops(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    train(load_recipe("kjv-char-gpt2", tiny_overrides), out=run, progress_bar=False)
    good = load_file(run / LAST)
    config = yaml.safe_load((run / CONFIG).read_text())
    config["train"]["lr"] = 1e30  # absurd: the first update makes every later loss NaN
    (run / CONFIG).write_text(yaml.safe_dump(config))
    with pytest.raises(TrainingError, match="5 steps in a row had a NaN/inf loss") as err:
        train(resume_config(run, {"train.max_steps": 40}), resume=run, progress_bar=False)
    assert "\n" not in str(err.value)
    after = load_file(run / LAST)  # the step-20 checkpoint is intact
    assert all(good[k].equal(after[k]) for k in good)
    assert "non-finite loss or gradient norm, step skipped" in (run / LOG).read_text()


def test_keep_last_k(tmp_path, tiny_overrides):
    overrides = dict(tiny_overrides, **{"train.eval_interval": 5, "train.keep_last_k": 2})
    train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "run", progress_bar=False)
    kept = sorted(p.name for p in (tmp_path / "run" / CHECKPOINTS).iterdir())
    assert kept == [
        "step-0000015.safetensors", "step-0000015.state.pt", "step-0000020.safetensors", "step-0000020.state.pt",
    ]  # fmt: skip
    a, b = load_file(tmp_path / "run" / LAST), load_file(tmp_path / "run" / CHECKPOINTS / kept[2])
    assert all(a[k].equal(b[k]) for k in a)


def test_muon_adam_full_eval_and_samples_train(tmp_path, tiny_overrides):
    overrides = dict(
        tiny_overrides,
        **{"train.optimizer": "muon", "train.eval_batches": 0, "train.sample_interval": 10, "model.dropout": 0.1,
           "sample.prompt": "And"},
    )  # fmt: skip
    result = train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "muon", progress_bar=False)
    rows = metrics(tmp_path / "muon")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    # eval_batches=0: evaluations use the whole val split, as the final report does (same best weights)
    assert result.best_val_loss == result.final_val.metrics["loss"]  # reused: no second pass over the split
    assert (tmp_path / "muon" / LOG).read_text().count("sample at step") == 2


def test_compile_trains_like_eager(tmp_path, tiny_overrides):
    """train.compile runs the real torch.compile; its weights match eager training and save under plain names."""
    overrides = dict(tiny_overrides, **{"train.max_steps": 3, "train.eval_interval": 3})
    eager = train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "eager", progress_bar=False)
    compiled = train(load_recipe("kjv-char-gpt2", dict(overrides, **{"train.compile": True})), out=tmp_path / "compiled",
                     progress_bar=False)  # fmt: skip
    a, b = load_file(tmp_path / "eager" / LAST), load_file(tmp_path / "compiled" / LAST)
    assert a.keys() == b.keys()  # no "_orig_mod." prefixes
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert compiled.best_val_loss == pytest.approx(eager.best_val_loss, abs=1e-4)


def test_plateau_halves_the_lr_when_the_val_loss_stalls(tmp_path, tiny_overrides):
    # lr 1e-12 moves no fp32 weight, so the val loss stays put: each evaluation after the first is a bad one
    overrides = dict(
        tiny_overrides,
        **{"train.optimizer": "adam", "train.lr": 1e-12, "train.min_lr": 0, "train.warmup_steps": 0,
           "train.schedule": "plateau", "train.plateau_patience": 0, "train.eval_interval": 5, "train.max_steps": 15},
    )  # fmt: skip
    train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "run", progress_bar=False)
    rows = metrics(tmp_path / "run")
    assert [(r["step"], float(r["lr"]), r["event"]) for r in rows] == [
        ("5", 1e-12, ""), ("10", 1e-12, "lr_reduced"), ("15", 5e-13, "lr_reduced"),
    ]  # fmt: skip


def test_fp16_uses_a_grad_scaler_whose_state_is_checkpointed(tmp_path, tiny_overrides):
    overrides = dict(tiny_overrides, **{"train.precision": "fp16", "train.max_steps": 4, "train.eval_interval": 4})
    result = train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "run", progress_bar=False)
    assert math.isfinite(result.best_val_loss)
    scaler = load_state(tmp_path / "run" / STATE)["scaler"]
    assert scaler["scale"] == 65536.0 and scaler["_growth_tracker"] == 4  # four steps without overflow


# --- budgets, resume and TensorBoard (issue 23) -------------------------------------------------------


engine = importlib.import_module("slmkit.train")  # the module; slmkit.train is the function


def kill_before_step(monkeypatch, step: int) -> None:
    """Make the next training run stop with a KeyboardInterrupt (a Ctrl-C) once it has made `step` steps."""
    original = engine._train_step

    def step_or_kill(run, state, log):
        if state.step == step:
            raise KeyboardInterrupt
        return original(run, state, log)

    monkeypatch.setattr(engine, "_train_step", step_or_kill)


def fake_clock(monkeypatch, seconds_per_step: float) -> None:
    """A training clock on which each optimizer step takes `seconds_per_step` (and nothing else takes time)."""
    now = [0.0]
    original = engine._train_step

    def timed_step(run, state, log):
        now[0] += seconds_per_step
        return original(run, state, log)

    monkeypatch.setattr(engine, "_train_step", timed_step)
    monkeypatch.setattr(engine, "_now", lambda: now[0])


def test_a_resumed_run_logs_each_step_once(tmp_path, tiny_overrides, monkeypatch, capsys):
    """Killed after logging step 15 (its checkpoint is step 10), resumed: metrics.csv as if never killed."""
    full = train(load_recipe("kjv-char-gpt2", tiny_overrides), out=tmp_path / "full", progress_bar=False)
    kill_before_step(monkeypatch, 15)
    monkeypatch.setattr(progress, "on_terminal", lambda: True)  # a real bar, as on a terminal
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe("kjv-char-gpt2", tiny_overrides), out=tmp_path / "killed", progress_bar=True)
    assert "training: " in capsys.readouterr().err  # the bar was drawn
    assert not tqdm._instances  # teardown ran in `finally`: the progress bar (and the log files) closed
    assert [r["step"] for r in metrics(tmp_path / "killed")] == ["5", "10", "15"]
    monkeypatch.undo()
    resumed = train(resume=tmp_path / "killed", progress_bar=False)
    assert resumed.steps == full.steps == 20
    key = lambda rows: [(r["step"], r["lr"], r["train_loss"], r["val_loss"], r["event"]) for r in rows]  # noqa: E731
    assert key(metrics(tmp_path / "killed")) == key(metrics(tmp_path / "full"))  # step 15 once, not twice


def test_tensorboard_holds_the_logged_scalars_once_per_step(tmp_path, tiny_overrides, monkeypatch):
    overrides = dict(tiny_overrides, **{"train.tensorboard": True})
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        with pytest.raises(ConfigError, match="pip install tensorboard"):
            train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "run", progress_bar=False)
        return
    kill_before_step(monkeypatch, 15)
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "run", progress_bar=False)
    monkeypatch.undo()
    train(resume=tmp_path / "run", progress_bar=False)
    events = EventAccumulator(str(tmp_path / "run" / TENSORBOARD))
    events.Reload()
    rows = metrics(tmp_path / "run")
    for tag in ("lr", "train_loss", "val_loss", "perplexity"):
        logged = [(r["step"], float(r[tag])) for r in rows if r[tag]]
        # the killed run's step-15 scalars are purged: the resumed run logged them again
        assert [(str(e.step), e.value) for e in events.Scalars(tag)] == [(s, pytest.approx(v)) for s, v in logged], tag
    assert [e.step for e in events.Scalars("val_loss")] == [10, 20]


@pytest.mark.parametrize(
    "seconds_per_step, extra",
    [
        (2.0, {}),  # a slow run: 15 steps in the 30-second budget, far fewer than warmup_steps
        (0.25, {}),  # a fast one: 120 steps
        (2.0, {"train.max_steps": 1000}),  # both budgets: the time limit ends the run, so the lr follows it
        (0.25, {"train.warmup_fraction": 0.2, "train.cooldown_fraction": 0.3}),  # warmup, stable, decay
    ],
)
def test_a_time_budget_reaches_its_peak_lr_and_decays_whatever_its_speed(
    tmp_path, tiny_overrides, monkeypatch, seconds_per_step, extra
):
    overrides = {
        **tiny_overrides, "train.max_steps": 0, "train.max_minutes": 0.5, "train.warmup_steps": 100, "train.lr": 1e-3,
        "train.min_lr": 1e-4, "train.schedule": "cosine", "train.log_interval": 1, "train.eval_interval": 1000, **extra,
    }  # fmt: skip
    fake_clock(monkeypatch, seconds_per_step)
    result = train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "run", progress_bar=False)
    assert result.steps == 30 / seconds_per_step
    lrs = [float(r["lr"]) for r in metrics(tmp_path / "run")]
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(1e-3, rel=0.02)  # warmed up fully...
    assert peak <= 0.2 * len(lrs)  # ...early (10% of the budget, or warmup_fraction)
    assert lrs[-1] < 1.2e-4  # and decayed to about min_lr by the end of the budget
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :]))
    if "train.cooldown_fraction" in extra:  # constant at the peak until the last 30% of the budget
        assert lrs[int(0.2 * len(lrs)) : int(0.7 * len(lrs))] == [1e-3] * (int(0.7 * len(lrs)) - int(0.2 * len(lrs)))


def whole_split_passes(monkeypatch) -> list[int]:
    """The token counts of every pass over a whole split (training evaluations and the final report)."""
    passes = []
    import slmkit.evaluate

    for module in (engine, slmkit.evaluate):
        original = module.mean_loss

        def counted(model, tokens, *args, original=original, **kwargs):
            passes.append(len(tokens))
            return original(model, tokens, *args, **kwargs)

        monkeypatch.setattr(module, "mean_loss", counted)
    return passes


def test_an_evaluation_bigger_than_the_split_covers_it_once(tmp_path, tiny_overrides, monkeypatch):
    # 20 batches x 8 x 32 = 5,120 tokens: more than the 785-token val split holds
    overrides = dict(tiny_overrides, **{"train.eval_batches": 20})
    passes = whole_split_passes(monkeypatch)
    result = train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "run", progress_bar=False)
    val_tokens = result.final_val.tokens + 1
    assert passes == [val_tokens, val_tokens]  # the evaluations at steps 10 and 20, and no pass after them
    assert result.final_val.metrics["loss"] == result.best_val_loss
    log = (tmp_path / "run" / LOG).read_text()
    assert f"evaluated on the whole val split ({val_tokens:,} tokens)" in log
    assert f"step 20: end of the budget, final evaluation on the whole val split ({val_tokens:,} tokens)" in log


def test_sampled_evaluations_are_followed_by_one_whole_split_pass(tmp_path, tiny_overrides, monkeypatch):
    passes = whole_split_passes(monkeypatch)  # tiny_overrides: 2 fixed batches of 8 x 32 tokens
    result = train(load_recipe("kjv-char-gpt2", tiny_overrides), out=tmp_path / "run", progress_bar=False)
    assert passes == [result.final_val.tokens + 1]
    log = (tmp_path / "run" / LOG).read_text()
    assert "step 20: end of the budget, final evaluation on 2 fixed val batches" in log
    assert f"final evaluation: the best weights on the whole val split ({passes[0]:,} tokens)" in log


def test_a_state_file_of_the_previous_version_still_resumes(tmp_path, tiny_overrides):
    """state.pt files written before TrainState had epoch and best_step resume as the new ones do."""
    overrides = dict(tiny_overrides, **{"train.schedule": "constant"})
    train(load_recipe("kjv-char-gpt2", overrides), out=tmp_path / "new", progress_bar=False)
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    state = load_state(tmp_path / "old" / STATE)
    assert {"epoch", "best_step"} <= state.keys()
    torch.save({k: v for k, v in state.items() if k not in ("epoch", "best_step")}, tmp_path / "old" / STATE)
    for name in ("new", "old"):
        assert train(resume_config(tmp_path / name, {"train.max_steps": 30}), resume=tmp_path / name,
                     progress_bar=False).steps == 30  # fmt: skip
    a, b = load_file(tmp_path / "new" / LAST), load_file(tmp_path / "old" / LAST)
    assert all(a[k].equal(b[k]) for k in a)
    assert load_state(tmp_path / "old" / STATE)["epoch"] == load_state(tmp_path / "new" / STATE)["epoch"]
