"""fp32 vs dynamic int8 (`slm quantize`) on a trained run: file size, CPU generation speed, val perplexity.

    python -P benchmarks/quantize.py --run runs/kjv-10m [--threads 1] [--repeats 5] [--eval-tokens 0]

Generation speed: greedy decoding of --new-tokens tokens from the same prompt, fp32 and int8
interleaved in each repeat (the machine is shared), medians reported. Perplexity: both models
over the run's val split (the first --eval-tokens tokens of it when given, 0 = all).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from slmkit.evaluate import mean_loss, report, split_tokens
from slmkit.generate import sample_ids
from slmkit.runs import load_run, quantize_run


def tokens_per_second(model, prompt: list[int], new_tokens: int) -> float:
    start = time.perf_counter()
    n = sum(1 for _ in sample_ids(model, prompt, max_new_tokens=new_tokens, temperature=0))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--eval-tokens", type=int, default=0, help="evaluate this many val tokens (0 = all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run)

    sizes = quantize_run(run_dir)
    run = load_run(run_dir)
    fp32, int8 = run.model, load_run(run_dir, int8=True).model
    n_params = fp32.num_parameters()
    size_fp32, size_int8 = sizes.bytes_fp32, sizes.bytes_int8

    prompt = run.tokenizer.encode("And God said")
    speeds: dict[str, list[float]] = {"fp32": [], "int8": []}
    tokens_per_second(fp32, prompt, 10), tokens_per_second(int8, prompt, 10)  # warm-up
    for _ in range(args.repeats):
        speeds["fp32"].append(tokens_per_second(fp32, prompt, args.new_tokens))
        speeds["int8"].append(tokens_per_second(int8, prompt, args.new_tokens))
    same_greedy = list(sample_ids(fp32, prompt, max_new_tokens=50, temperature=0)) == list(sample_ids(int8, prompt, max_new_tokens=50, temperature=0))

    tokens, text_bytes = split_tokens(run.config, "val")
    if args.eval_tokens:
        text_bytes = round(text_bytes * min(args.eval_tokens, len(tokens)) / len(tokens))  # proportional share
        tokens = tokens[: args.eval_tokens + 1]
    ppl = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        ppl[name] = report(mean_loss(model, tokens, batch_size=16), len(tokens) - 1, text_bytes)["perplexity"]

    med = {k: statistics.median(v) for k, v in speeds.items()}
    print(f"run {run_dir}: {n_params / 1e6:.2f}M parameters, torch {torch.__version__}, {args.threads} thread(s)")
    print("| | fp32 | int8 | ratio |")
    print("|---|---|---|---|")
    print(f"| file size (MB) | {size_fp32 / 1e6:.2f} | {size_int8 / 1e6:.2f} | {size_fp32 / size_int8:.2f}x smaller |")
    print(
        f"| greedy generation, tokens/s (median of {args.repeats}, {args.new_tokens} tokens) | {med['fp32']:.1f} | "
        f"{med['int8']:.1f} | {med['int8'] / med['fp32']:.2f}x faster |"
    )
    print(
        f"| val perplexity ({len(tokens) - 1:,} tokens) | {ppl['fp32']:.4f} | {ppl['int8']:.4f} | "
        f"{100 * (ppl['int8'] / ppl['fp32'] - 1):+.2f}% |"
    )
    print(f"all speeds fp32 {[round(s, 1) for s in speeds['fp32']]}, int8 {[round(s, 1) for s in speeds['int8']]}")
    print(f"same 50 greedy tokens: {same_greedy}")


if __name__ == "__main__":
    main()
