"""Issue 16.6: chat fine-tuning teaches a capability, not only the plumbing.

A generated instruction set ("What is 17 plus 25?" -> "42", "Reverse: abc" -> "cba"), a small model
pretrained briefly on plain text, then chat-fine-tuned for a bounded number of steps on the CPU:
its greedy answers to held-out questions of the same kinds (none of them in the training set) are
right at least 90% of the time; the pretrained model's are not. What makes it learn within the
budget is Muon on the hidden matrices (AdamW alone: 1% after 600 steps, 54% after 1,200). BENCHMARKS.md has the
accuracy by step and seed; benchmarks/chat.py is the longer version.
"""

import json
import random

import torch

from slmkit.chat import LETTERS, arithmetic_reversal_set
from slmkit.config import load_recipe
from slmkit.finetune import finetune
from slmkit.generate import generate
from slmkit.runs import load_run
from slmkit.train import train

MAX_NUMBER = 49
MODEL = {"model.n_layer": 2, "model.n_head": 4, "model.n_embd": 64, "model.block_size": 32, "model.pos_embedding": "rotary"}
CHAT = {"data.format": "chat", "train.max_steps": 600, "train.optimizer": "muon", "train.muon_lr": 0.02,
        "train.lr": 3e-3, "train.min_lr": 3e-4, "train.warmup_steps": 30, "train.batch_size": 64,
        "train.eval_interval": 200, "train.eval_batches": 2, "train.early_stop_patience": 0, "data.num_workers": 1}  # fmt: skip


def plain_text(n_words: int = 4000) -> str:
    """Text with every character of the instruction set, but no instruction and no answer."""
    rng = random.Random(1)
    words = ["what", "is", "the", "plus", "reverse", "of", "a", "word", "number"]
    pieces = [rng.choice(words + [str(rng.randint(0, 99)), "".join(rng.choices(LETTERS, k=4))]) for _ in range(n_words)]
    return "What is it? Reverse: " + LETTERS + " 0123456789\n" + " ".join(pieces) + "\n"


def accuracy(run_dir, questions) -> dict[str, float]:
    """Greedy exact-match accuracy per kind (plus, reverse) and over all questions ("all")."""
    run = load_run(run_dir)
    right: dict[str, list[bool]] = {"plus": [], "reverse": []}
    for q in questions:
        messages = [{"role": "user", "content": q["prompt"]}]
        if hasattr(run.tokenizer, "encode_chat"):
            answer = generate(run.model, run.tokenizer, messages=messages, max_new_tokens=8, temperature=0)
        else:  # the pretrained run has no chat template: the question as text
            answer = generate(run.model, run.tokenizer, q["prompt"] + "\n", max_new_tokens=8, temperature=0, stop="\n")
        right["plus" if q["prompt"].startswith("What") else "reverse"].append(answer.strip() == q["completion"])
    every = right["plus"] + right["reverse"]
    return {**{kind: sum(v) / len(v) for kind, v in right.items()}, "all": sum(every) / len(every)}


def pretrain(folder, seed: int):
    """The base run: 30 steps on plain text (train.seed `seed`) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plain.txt").write_text(plain_text(), encoding="utf-8")
    base = {**MODEL, "data.source": str(folder / "plain.txt"), "data.shard_dir": str(folder / "shards"),
            "train.max_steps": 30, "train.max_minutes": 0, "train.eval_interval": 30, "train.eval_batches": 2,
            "train.batch_size": 32, "train.lr": 3e-3, "train.warmup_steps": 5, "sample.max_new_tokens": 5,
            "train.seed": seed}  # fmt: skip
    train(load_recipe("kjv-char-gpt2", base), out=folder / "base", progress_bar=False)
    return folder / "base"


def held_out_accuracy(folder, seed: int = 0) -> tuple[float, float]:
    """Pretrain, chat-fine-tune (train.seed `seed`) in `folder`; the held-out accuracy before and after."""
    train_set = arithmetic_reversal_set(3000, seed=0, max_number=MAX_NUMBER)
    held_out = arithmetic_reversal_set(200, seed=1, max_number=MAX_NUMBER, exclude=frozenset(r["prompt"] for r in train_set))
    with open(folder / "chat.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in train_set)
    base = pretrain(folder, seed)
    chat = {**CHAT, "data.source": str(folder / "chat.jsonl"), "train.seed": seed}
    finetune(base, chat, out=folder / "chat", progress_bar=False)
    return accuracy(base, held_out)["all"], accuracy(folder / "chat", held_out)["all"]


def test_chat_finetune_learns_held_out_arithmetic_and_reversal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    before, after = held_out_accuracy(tmp_path)
    assert before < 0.1
    assert after >= 0.9  # seeds 0, 1, 2 measured in BENCHMARKS.md (CPU training is deterministic)
