"""Chat fine-tuning's capability by steps and seeds, the long version of tests/integration/test_chat_capability.py.

    python -P benchmarks/chat.py [--steps 200,400,600,1000] [--seeds 0,1,2] [--optimizer muon]
                                 [--examples 3000] [--max-number 49] [--held-out 400] [--threads 1]

The test's setting: a generated instruction set (additions of numbers up to --max-number, reversals
of 3-5 letters, --examples training records), a 2-layer, 64-wide rotary char model pretrained 30 steps
on plain text holding the same characters (per seed), then chat-fine-tuned for each --steps budget
(the cosine runs to that budget). Prints the greedy exact-match accuracy on --held-out questions none of
which is in the training set, per kind, and the CPU seconds of each fine-tune (the machine is shared:
CPU time, not wall time).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from slmkit.chat import arithmetic_reversal_set
from slmkit.finetune import finetune

# The test's setting, from the test itself, so the two cannot drift apart.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from test_chat_capability import CHAT, accuracy, pretrain  # noqa: E402

def chat_finetune(base: Path, data: Path, out: Path, steps: int, seed: int, optimizer: str) -> float:
    """Fine-tune as the test does, for `steps` steps; the CPU seconds it took."""
    cpu = time.process_time()
    finetune(base, {
        **CHAT, "data.source": str(data), "train.max_steps": steps, "train.optimizer": optimizer,
        "train.eval_interval": max(steps // 3, 1), "train.seed": seed, "data.shard_dir": str(base.parent / "chat-shards"),
    }, out=out, progress_bar=False)  # fmt: skip
    return time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="200,400,600,1000", help="fine-tuning budgets, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="train.seed of both stages, comma-separated")
    parser.add_argument("--optimizer", default="muon", choices=("muon", "adamw"))
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--max-number", type=int, default=49)
    parser.add_argument("--held-out", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="slm-chat-bench."))
    train_set = arithmetic_reversal_set(args.examples, seed=0, max_number=args.max_number)
    held_out = arithmetic_reversal_set(args.held_out, seed=1, max_number=args.max_number,
                                       exclude=frozenset(r["prompt"] for r in train_set))  # fmt: skip
    with open(folder / "chat.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in train_set)
    rows = []
    for seed in map(int, args.seeds.split(",")):
        base = pretrain(folder / f"seed{seed}", seed)
        rows.append(("pretrained, question as text", seed, None, accuracy(base, held_out)))
        for steps in map(int, args.steps.split(",")):
            out = folder / f"seed{seed}" / f"chat-{steps}"
            cpu = chat_finetune(base, folder / "chat.jsonl", out, steps, seed, args.optimizer)
            rows.append((f"chat-fine-tuned {steps} steps ({args.optimizer})", seed, cpu, accuracy(out, held_out)))
            print(f"seed {seed}, {steps} steps: {rows[-1][3]} in {cpu:.0f} CPU s", flush=True)
    print("\n| model | seed | fine-tune CPU s | held-out plus | held-out reverse | held-out all |\n|---|---|---|---|---|---|")
    for name, seed, cpu, acc in rows:
        cpu_text = f"{cpu:.0f}" if cpu is not None else ""
        print(f"| {name} | {seed} | {cpu_text} | {acc['plus']:.1%} | {acc['reverse']:.1%} | {acc['all']:.1%} |")
    print(f"(run folders in {folder})")


if __name__ == "__main__":
    main()
