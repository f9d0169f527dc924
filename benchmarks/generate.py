"""Generation speed: tokens/s with the KV cache against recomputing the whole window at every step.

    python -P benchmarks/generate.py [--tokens 500] [--repeats 5] [--run runs/kjv-char-gpt2]
    python -P benchmarks/generate.py --peers [--tokens 100] [--repeats 3]

--peers: slmkit (KV cache; fp32 and int8; 1 and 2 threads) against llama.cpp (f32 and q8_0,
through llama-cpp-python's `Llama.generate`, greedy: top_k=1, n_threads = the row's threads), for
two models with random weights: the GPT-2-style reference kjv-char-gpt2 (the default job's shape) and nanoGPT's Shakespeare-char shape
(6 layers, 6 heads, 384 wide, block 256: 10.7 M). Each is written as a run folder, quantized
(`slm quantize`) and exported (`slm export --format gguf`) once; every engine then decodes
`tokens` new tokens after one token (below both blocks: no sliding), interleaved, medians.

The model is the GPT-2-style reference recipe's shape (recipes/kjv-char-gpt2.yaml, the default job's size: 4 layers, 4 heads, 128 wide,
block 128, 65 characters); the trained run's weights when the run folder exists, random weights
otherwise (speed does not depend on them). 500 new tokens > block 128, so the window slides.
Both ways run interleaved, `repeats` times each, greedy decoding; the table gives medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from slmkit.config import RunConfig, load_recipe
from slmkit.export_gguf import export_gguf
from slmkit.generate import sample_ids
from slmkit.model import GPT
from slmkit.runs import load_run, quantize_run, save_weights, write_run_files
from slmkit.tokenizer import CharTokenizer


def build_model(run: Path) -> tuple[GPT, str]:
    """The trained default model if `run` holds one, else the same shape with random weights."""
    from slmkit.runs import BEST

    if (run / BEST).is_file():

        return load_run(run).model, f"trained weights from {run}"
    cfg = load_recipe("kjv-char-gpt2").model
    cfg.vocab_size = 65
    torch.manual_seed(0)
    return GPT(cfg).eval(), "random weights"


def tokens_per_second(model: GPT, new_tokens: int, use_cache: bool) -> float:
    """Greedy-generate `new_tokens` after one newline id; tokens per second of wall time."""
    t0 = time.perf_counter()
    n = sum(1 for _ in sample_ids(model, [0], max_new_tokens=new_tokens, temperature=0, use_cache=use_cache))
    return n / (time.perf_counter() - t0)


SHAPES = {
    "kjv-char-gpt2 (default job size)": {},
    "10.7M (nanoGPT shakespeare-char)": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256},
}


def make_run(folder: Path, shape: dict) -> Path:
    """A run folder of the default recipe with `shape`'s model options and random weights."""
    cfg: RunConfig = load_recipe("kjv-char-gpt2")
    tokenizer = CharTokenizer([chr(c) for c in range(10, 10 + 65)])  # 65 characters, "\n" first
    cfg.model = dataclasses.replace(cfg.model, **shape, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    write_run_files(folder, cfg, tokenizer)
    save_weights(GPT(cfg.model).eval(), folder / "model.safetensors")
    quantize_run(folder)
    return folder


def slmkit_rate(run: Path, int8: bool, threads: int, tokens: int) -> float:
    torch.set_num_threads(threads)
    model = load_run(run, int8=int8).model
    t0 = time.perf_counter()
    n = sum(1 for _ in sample_ids(model, [0], max_new_tokens=tokens, temperature=0))
    return n / (time.perf_counter() - t0)


def llama_rate(gguf: Path, threads: int, tokens: int, block: int) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=block, n_threads=threads, n_threads_batch=threads, verbose=False)
    t0 = time.perf_counter()
    n = sum(1 for _ in islice(llm.generate([0], top_k=1, temp=0.0, reset=True), tokens))
    return n / (time.perf_counter() - t0)


def peers(tokens: int, repeats: int) -> None:
    """Print the slmkit-vs-llama.cpp table (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, shape in SHAPES.items():
            run = make_run(Path(tmp) / label.split()[0], shape)
            block = load_run(run).config.model.block_size
            files = {dt: export_gguf(run, Path(tmp) / f"{label.split()[0]}-{dt}.gguf", dt) for dt in ("f32", "q8_0")}
            engines = {}
            for threads in (1, 2):
                engines[f"slmkit fp32, {threads} thread(s)"] = lambda t=threads: slmkit_rate(run, False, t, tokens)
                engines[f"slmkit int8, {threads} thread(s)"] = lambda t=threads: slmkit_rate(run, True, t, tokens)
                for dt, path in files.items():
                    engines[f"llama.cpp {dt}, {threads} thread(s)"] = lambda p=path, t=threads: llama_rate(p, t, tokens, block)
            for run_once in engines.values():
                run_once()  # warm up
            rates: dict[str, list[float]] = {name: [] for name in engines}
            for _ in range(repeats):
                for name, run_once in engines.items():
                    rates[name].append(run_once())
            params = GPT(load_run(run).config.model).num_parameters()
            rows += [(f"{label}, {params / 1e6:.2f} M", name, statistics.median(r)) for name, r in rates.items()]
    print(f"\n{tokens} new tokens after one token, greedy, median of {repeats} interleaved runs")
    print("| model | engine | tokens/s |")
    print("|---|---|---|")
    for model, engine, rate in rows:
        print(f"| {model} | {engine} | {rate:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--run", default="runs/kjv-char-gpt2")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--peers", action="store_true", help="slmkit against llama.cpp instead (needs llama-cpp-python)")
    args = parser.parse_args()
    if args.peers:
        return peers(args.tokens, args.repeats)
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
