"""Chat fine-tuning's capability, the long version of tests/integration/test_chat_capability.py.

    python -P benchmarks/chat.py [--steps 3000] [--examples 6000] [--max-number 99] [--n-embd 128] [--threads 1]

A generated instruction set (additions of numbers up to --max-number, reversals of 3-5 letters),
a model pretrained for 100 steps on plain text holding the same characters, then chat-fine-tuned
for --steps steps; prints the greedy accuracy on 400 held-out questions per kind, before and
after, and the CPU seconds each stage took (the machine is shared: CPU time, not wall time).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from slmkit.chat import LETTERS, arithmetic_reversal_set
from slmkit.config import load_recipe
from slmkit.finetune import finetune
from slmkit.generate import generate
from slmkit.runs import load_run
from slmkit.train import train


def plain_text(n_words: int = 20000) -> str:
    rng = random.Random(1)
    words = ["what", "is", "the", "plus", "reverse", "of", "a", "word", "number"]
    pieces = [rng.choice(words + [str(rng.randint(0, 99)), "".join(rng.choices(LETTERS, k=4))]) for _ in range(n_words)]
    return "What is it? Reverse: " + LETTERS + " 0123456789\n" + " ".join(pieces) + "\n"


def accuracy(run_dir: Path, questions: list[dict]) -> dict[str, float]:
    run = load_run(run_dir)
    right: dict[str, list[bool]] = {"plus": [], "reverse": []}
    for q in questions:
        messages = [{"role": "user", "content": q["prompt"]}]
        if hasattr(run.tokenizer, "encode_chat"):
            answer = generate(run.model, run.tokenizer, messages=messages, max_new_tokens=8, temperature=0)
        else:
            answer = generate(run.model, run.tokenizer, q["prompt"] + "\n", max_new_tokens=8, temperature=0, stop="\n")
        right["plus" if q["prompt"].startswith("What") else "reverse"].append(answer.strip() == q["completion"])
    return {kind: sum(v) / len(v) for kind, v in right.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--examples", type=int, default=6000)
    parser.add_argument("--max-number", type=int, default=99)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="slm-chat-bench."))
    (folder / "plain.txt").write_text(plain_text(), encoding="utf-8")
    train_set = arithmetic_reversal_set(args.examples, seed=0, max_number=args.max_number)
    held_out = arithmetic_reversal_set(800, seed=1, max_number=args.max_number,
                                       exclude=frozenset(r["prompt"] for r in train_set))  # fmt: skip
    with open(folder / "chat.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in train_set)
    model = {"model.n_layer": 2, "model.n_head": 4, "model.n_embd": args.n_embd, "model.block_size": 32,
             "model.pos_embedding": "rotary"}  # fmt: skip
    cpu = time.process_time()
    train(load_recipe("kjv-char-gpt2", {**model, "data.source": str(folder / "plain.txt"), "data.shard_dir": str(folder / "shards"),
          "train.max_steps": 100, "train.max_minutes": 0, "train.eval_interval": 100, "train.batch_size": 32,
          "train.lr": 3e-3, "train.warmup_steps": 10}), out=folder / "base", progress_bar=False)  # fmt: skip
    pretrain = time.process_time() - cpu
    result = finetune(folder / "base", {
        "data.format": "chat", "data.source": str(folder / "chat.jsonl"), "data.shard_dir": str(folder / "chat-shards"),
        "train.max_steps": args.steps, "train.lr": 3e-3, "train.min_lr": 3e-4, "train.warmup_steps": 30,
        "train.batch_size": 64, "train.eval_interval": max(args.steps // 6, 1), "train.eval_batches": 4,
        "train.early_stop_patience": 0,
    }, out=folder / "chat", progress_bar=False)  # fmt: skip
    tuned = time.process_time() - cpu - pretrain
    before, after = accuracy(folder / "base", held_out), accuracy(folder / "chat", held_out)
    print(f"\n| stage | CPU s | held-out plus | held-out reverse |\n|---|---|---|---|")
    print(f"| pretrained (100 steps) | {pretrain:.0f} | {before['plus']:.1%} | {before['reverse']:.1%} |")
    print(f"| chat-fine-tuned ({args.steps} steps, masked val loss {result.final_val.metrics['loss']:.3f}) | "
          f"{tuned:.0f} | {after['plus']:.1%} | {after['reverse']:.1%} |")  # fmt: skip
    print(f"(run folders in {folder})")


if __name__ == "__main__":
    main()
