"""Generation speed: tokens/s with the KV cache against recomputing the whole window at every step.

    python -P benchmarks/generate.py [--tokens 500] [--repeats 5] [--run runs/kjv-char]

The model is the default recipe's shape (recipes/kjv-char.yaml: 4 layers, 4 heads, 128 wide,
block 128, 65 characters); the trained run's weights when the run folder exists, random weights
otherwise (speed does not depend on them). 500 new tokens > block 128, so the window slides.
Both ways run interleaved, `repeats` times each, greedy decoding; the table gives medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from slmkit.config import load_recipe
from slmkit.generate import sample_ids
from slmkit.model import GPT


def build_model(run: Path) -> tuple[GPT, str]:
    """The trained default model if `run` holds one, else the same shape with random weights."""
    from slmkit.runs import BEST, load_run

    if (run / BEST).is_file():

        return load_run(run).model, f"trained weights from {run}"
    cfg = load_recipe("kjv-char").model
    cfg.vocab_size = 65
    torch.manual_seed(0)
    return GPT(cfg).eval(), "random weights"


def tokens_per_second(model: GPT, new_tokens: int, use_cache: bool) -> float:
    """Greedy-generate `new_tokens` after one newline id; tokens per second of wall time."""
    t0 = time.perf_counter()
    n = sum(1 for _ in sample_ids(model, [0], max_new_tokens=new_tokens, temperature=0, use_cache=use_cache))
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--run", default="runs/kjv-char")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, origin = build_model(Path(args.run))
    c = model.config
    print(f"model: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, block {c.block_size}, "
          f"vocab {c.vocab_size}, {model.num_parameters():,} parameters ({origin}); torch threads {torch.get_num_threads()}")
    tokens_per_second(model, 50, True)  # warm up both paths
    tokens_per_second(model, 50, False)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for use_cache in (True, False):
            rates[use_cache].append(tokens_per_second(model, args.tokens, use_cache))
    cached, uncached = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"\n{args.tokens} new tokens, median of {args.repeats} interleaved runs")
    print("| decoding | tokens/s |")
    print("|---|---|")
    print(f"| recompute the window each step (use_cache=False) | {uncached:,.0f} |")
    print(f"| KV cache (use_cache=True) | {cached:,.0f} |")
    print(f"| ratio | {cached / uncached:.1f}x |")


if __name__ == "__main__":
    main()
