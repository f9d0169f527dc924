"""The speedrun recipes (issue 7): they load, build the intended model, and train a few steps."""

import csv
import math

import pytest

from slmkit.config import load_recipe
from slmkit.model import GPT
from slmkit.optim import lr_multiplier, warmup_progress
from slmkit.runs import METRICS, STATE, load_run, load_state
from slmkit.train import train


@pytest.mark.parametrize("name", ["speedrun-baseline", "speedrun-cpu", "speedrun-cpu-long"])
def test_speedrun_recipe_builds_its_model_and_trains(name, tiny_corpus, tmp_path):
    cfg = load_recipe(name)
    assert cfg.data.source == "tinyshakespeare" and cfg.tokenizer.kind == "char"
    assert (cfg.model.n_head, cfg.model.n_embd, cfg.train.seq_len or cfg.model.block_size) == (4, 128, 64)  # 64-token windows
    cfg.model.vocab_size = 65  # Tiny Shakespeare's characters
    n = GPT(cfg.model).num_parameters()
    # nanoGPT's baby model (4 layers): 0.80M parameters; our fast ones have 2 of its layers: 0.40M
    assert (0.7e6 < n < 0.9e6) if name == "speedrun-baseline" else (0.35e6 < n < 0.45e6), n
    overrides = {
        "data.source": str(tiny_corpus),
        "data.shard_dir": str(tmp_path / "shards"),
        "train.max_steps": 10,
        "train.max_minutes": 0,
        "train.warmup_steps": 5,
        "train.batch_size": 8,
        "train.eval_interval": 10,
        "train.log_interval": 5,
        "train.threads": 1,
        "train.stop_at_val_loss": 0.0,
        "sample.max_new_tokens": 5,
    }
    result = train(load_recipe(name, overrides), out=tmp_path / "run", progress_bar=False)
    assert result.steps == 10
    with open(tmp_path / "run" / METRICS, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [5, 10]
    # it learns: a fresh model predicts the corpus's 31 characters about uniformly (ln 31 = 3.43 nats)
    assert result.final_val.metrics["loss"] < math.log(31) - 0.5
    # with the recipe's optimizer: Muon (momentum for every block matrix) beside AdamW, or AdamW alone
    optimizers = load_state(tmp_path / "run" / STATE)["optimizers"]
    block_matrices = [p for n, p in load_run(tmp_path / "run").model.named_parameters() if ".h." in n and p.dim() == 2]
    if cfg.train.optimizer == "muon":
        assert len(optimizers) == 2 and len(optimizers[1]["state"]) == len(block_matrices)
        if cfg.train.muon_beta2:  # NorMuon: each matrix's row second moments are in the resume state
            state = optimizers[1]["state"]  # keyed by the parameter's index in the group
            assert [tuple(state[i]["row_second_moment"].shape) for i in range(len(block_matrices))] == [
                (p.shape[0], 1) for p in block_matrices
            ]
    else:
        assert len(optimizers) == 1 and cfg.train.optimizer == "adamw"


def test_baseline_is_nanogpts_recipe():
    cfg = load_recipe("speedrun-baseline")
    m, t = cfg.model, cfg.train
    assert (m.block_size, m.pos_embedding, m.norm, m.mlp, m.tie_embeddings, m.dropout) == (
        64, "learned", "layernorm", "gelu_exact", True, 0.0,
    )  # fmt: skip
    assert (t.batch_size, t.optimizer, t.lr, t.min_lr, t.warmup_steps, t.max_steps, t.beta2, t.weight_decay) == (
        12, "adamw", 1e-3, 1e-4, 101, 2000, 0.99, 0.1,
    )  # fmt: skip
    assert t.beta1 == 0.9


def test_baseline_lr_schedule_is_nanogpts():
    """nanoGPT's get_lr at every step: warmup lr * (s + 1) / 101, then a cosine from step 100 (not 0) down to min_lr
    at 2000."""
    t = load_recipe("speedrun-baseline").train
    for step in range(t.max_steps):
        warmup = warmup_progress(t, step, (step + 1) / t.max_steps, time_budget=False)
        ours = t.lr * lr_multiplier(t, warmup, step / t.max_steps, 0, 1.0)
        if step < 100:
            theirs = t.lr * (step + 1) / 101
        else:
            theirs = t.min_lr + 0.5 * (1 + math.cos(math.pi * (step - 100) / 1900)) * (t.lr - t.min_lr)
        assert ours == pytest.approx(theirs, rel=1e-9), step
    assert (t.schedule, t.grad_clip, t.eval_batches) == ("cosine", 1.0, 20)  # nanoGPT's eval_iters
    assert t.decay_embeddings  # nanoGPT's AdamW decays every 2-D tensor
