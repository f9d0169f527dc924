"""ONNX greedy decoding with onnxruntime: the KV-cache graph (`slm export --format onnx --kv-cache`)
against the logits graph recomputing the whole sequence at every step.

    python -P benchmarks/onnx_cache.py [--tokens 120] [--repeats 5] [--threads 1]

The model is the default recipe's shape (recipes/kjv-bpe.yaml: 4 layers, 4 heads, 128 wide, block
128, rotary, RMSNorm, SwiGLU 344, QK-norm; a 1,024-token vocabulary) with random weights (speed does
not depend on them). Both graphs decode `tokens`
new tokens after one token (below the block: no sliding), interleaved, `repeats` times each, with
onnxruntime's CPU provider on `threads` threads, beside slmkit's own greedy decoding (torch, KV
cache) for scale; the table gives medians and checks every row emits the same ids.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from slmkit.config import DEFAULT_RECIPE, RunConfig, load_recipe
from slmkit.export_onnx import export_onnx
from slmkit.generate import sample_ids
from slmkit.model import GPT
from slmkit.runs import BEST, save_weights, write_run_files
from slmkit.tokenizer import CharTokenizer

VOCAB = 1024  # the default recipe's BPE vocabulary (a char tokenizer of as many ids stands in: speed is the same)


def default_run(folder: Path) -> GPT:
    """A run folder with the default recipe's shape and random weights."""
    cfg: RunConfig = load_recipe(DEFAULT_RECIPE)
    tokenizer = CharTokenizer([chr(0x100 + i) for i in range(VOCAB - 1)] + ["\n"])
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    write_run_files(folder, cfg, tokenizer)
    save_weights(model, folder / BEST)
    return model


def decode_full(session, first: int, n: int) -> list[int]:
    ids = [first]
    for _ in range(n):
        logits = session.run(["logits"], {"input_ids": np.array([ids])})[0]
        ids.append(int(logits[0, -1].argmax()))
    return ids[1:]


def decode_cached(session, first: int, n: int, cfg) -> list[int]:
    keys = np.zeros((cfg.n_layer, 1, cfg.kv_heads, 0, cfg.head_size), dtype=np.float32)
    values, ids, out = keys.copy(), [first], []
    for _ in range(n):
        logits, keys, values = session.run(None, {"input_ids": np.array([ids]), "past_keys": keys, "past_values": values})
        out.append(int(logits[0, -1].argmax()))
        ids = out[-1:]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = default_run(root / "run")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        sessions = {name: ort.InferenceSession(str(export_onnx(root / "run", root / f"{name}.onnx", kv_cache=cached)),
                                               options, providers=["CPUExecutionProvider"])
                    for name, cached in (("full", False), ("cached", True))}
        expected = list(sample_ids(model, [0], max_new_tokens=args.tokens, temperature=0))
        runs = {"slmkit (torch, KV cache)": lambda: list(sample_ids(model, [0], max_new_tokens=args.tokens, temperature=0)),
                "full": lambda: decode_full(sessions["full"], 0, args.tokens),
                "cached": lambda: decode_cached(sessions["cached"], 0, args.tokens, model.config)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                ids = run()
                times[name].append(time.perf_counter() - start)
                assert ids == expected, f"{name} decodes other ids than slmkit"
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f}; {args.tokens} tokens, {args.threads} thread(s)")
    speed = {name: args.tokens / statistics.median(t) for name, t in times.items()}
    for name, tps in speed.items():
        label = name if name.startswith("slmkit") else f"onnxruntime, {'KV-cache' if name == 'cached' else 'logits'} graph"
        print(f"| {label:<28} | {tps:8.0f} tokens/s |")
    print(f"KV-cache graph / logits graph: {speed['cached'] / speed['full']:.2f}x")


if __name__ == "__main__":
    main()
