"""Text -> shards throughput, peak memory and BPE training time, against the raw libraries.

On a text made by repeating the KJV (--mb megabytes, default 200):
  1. `slm prepare` with gpt2 (our streaming, parallel writer) vs raw tiktoken
     `encode_ordinary_batch` over the same text with the same number of processes;
  2. peak RSS of `slm prepare` (largest process: the parent or one worker) on a smaller
     corpus (--small-mb, default 50) and on the big one: it must not grow with the corpus;
  3. `bpe` training through slmkit (fit_tokenizer on the streamed corpus) vs raw HF
     `tokenizers` training on the same file.
Each side runs in a fresh process; --repeats N interleaves them and reports medians.

    python -P benchmarks/tokenize.py [--mb 200] [--small-mb 50] [--workers 2] [--repeats 1]
"""

from __future__ import annotations

import sys

# This file's name shadows the standard library's `tokenize` module: keep its folder off the path.
sys.path[:] = [p for p in sys.path if p not in ("", __file__.rpartition("/")[0] or ".")]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

OURS_PREPARE = """
import json, resource, sys, time
from slmkit.config import load_recipe
from slmkit.data.prepare import prepare
from slmkit.data.shards import read_manifest
cfg = load_recipe(None, {"data.source": sys.argv[1], "data.shard_dir": sys.argv[2], "tokenizer.kind": "gpt2",
                         "data.num_workers": int(sys.argv[3])})
t0 = time.perf_counter()
prepare(cfg, force=True, log=lambda *_: None, progress=False)
seconds = time.perf_counter() - t0
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
tokens = sum(s["tokens"] for s in read_manifest(sys.argv[2])["splits"].values())
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "tokens": tokens}))
"""

RAW_TIKTOKEN = """
import json, multiprocessing, sys, time
from slmkit.tokenizer.gpt2 import gpt2_encoding
t0 = time.perf_counter()  # building the encoding counts, as in slm prepare
enc = gpt2_encoding()  # a plain tiktoken.Encoding (GPT-2's files, offline)

def count(batch):
    return sum(map(len, enc.encode_ordinary_batch(batch)))

def batches(path, piece=1 << 20, per_batch=4):
    with open(path, encoding="utf-8") as f:
        batch = []
        while True:
            text = f.read(piece) + f.readline()
            if not text:
                break
            batch.append(text)
            if len(batch) == per_batch:
                yield batch
                batch = []
        if batch:
            yield batch

with multiprocessing.get_context("fork").Pool(int(sys.argv[2])) as pool:
    tokens = sum(pool.imap(count, batches(sys.argv[1])))
print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": tokens}))
"""

OURS_BPE = """
import json, sys, time
from slmkit.config import DataConfig, TokenizerConfig
from slmkit.data.sources import Corpus
from slmkit.tokenizer import fit_tokenizer
t0 = time.perf_counter()
tok = fit_tokenizer(TokenizerConfig(kind="bpe", vocab_size=30000), Corpus(DataConfig(source=sys.argv[1])).texts())
print(json.dumps({"seconds": time.perf_counter() - t0, "vocab": tok.vocab_size}))
"""

RAW_BPE = """
import json, sys, time
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
t0 = time.perf_counter()
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=30000, min_frequency=2, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train([sys.argv[1]], trainer)
print(json.dumps({"seconds": time.perf_counter() - t0, "vocab": tok.get_vocab_size()}))
"""


def run(script: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="true")
    result = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"benchmark step failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_corpus(path: Path, megabytes: int) -> int:
    """KJV verses, one per line, repeated until the file has `megabytes` MB; returns its size."""
    sys.path.insert(0, str(REPO))
    from slmkit.data.sources import read_kjv

    text = ("\n".join(read_kjv()) + "\n").encode("utf-8")
    with open(path, "wb") as f:
        for _ in range(-(-megabytes * 10**6 // len(text))):
            f.write(text)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--small-mb", type=int, default=50)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-bpe", action="store_true", help="only the gpt2 throughput and memory rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slm-tokenize-") as tmp:
        work = Path(tmp)
        big, small = work / "big.txt", work / "small.txt"
        big_mb = make_corpus(big, args.mb) / 1e6
        small_mb = make_corpus(small, args.small_mb) / 1e6
        print(f"corpora: {big_mb:.1f} MB and {small_mb:.1f} MB of repeated KJV; {args.workers} processes", flush=True)

        ours, raw, small_runs, bpe_ours, bpe_raw = [], [], [], [], []
        for _ in range(args.repeats):
            raw.append(run(RAW_TIKTOKEN, str(big), str(args.workers)))
            ours.append(run(OURS_PREPARE, str(big), str(work / "shards-big"), str(args.workers)))
            small_runs.append(run(OURS_PREPARE, str(small), str(work / "shards-small"), str(args.workers)))
            print(f"  gpt2: raw {raw[-1]['seconds']:.1f}s, ours {ours[-1]['seconds']:.1f}s", flush=True)
        for _ in range(0 if args.skip_bpe else args.repeats):
            bpe_raw.append(run(RAW_BPE, str(big)))
            bpe_ours.append(run(OURS_BPE, str(big)))
            print(f"  bpe: raw {bpe_raw[-1]['seconds']:.1f}s, ours {bpe_ours[-1]['seconds']:.1f}s", flush=True)

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    raw_s, ours_s = median(raw, "seconds"), median(ours, "seconds")
    print()
    print("| measure | raw library | slmkit | ratio (slmkit / raw speed) | target |")
    print("|---|---|---|---|---|")
    print(
        f"| gpt2 text → shards, {big_mb:.0f} MB, {args.workers} processes | {big_mb / raw_s:.2f} MB/s "
        f"(tiktoken encode_ordinary_batch, {raw_s:.1f} s) | {big_mb / ours_s:.2f} MB/s ({ours_s:.1f} s) "
        f"| {raw_s / ours_s:.2f}× | ≥ 0.85× |"
    )
    if bpe_raw:
        bpe_raw_s, bpe_ours_s = median(bpe_raw, "seconds"), median(bpe_ours, "seconds")
        print(
            f"| bpe training (vocab 30,000), {big_mb:.0f} MB | {bpe_raw_s:.1f} s (tokenizers train on the file) "
            f"| {bpe_ours_s:.1f} s (streamed corpus) | {bpe_raw_s / bpe_ours_s:.2f}× | ≥ 0.9× |"
        )
    print()
    print("| corpus | peak RSS of `slm prepare` (largest process) | target |")
    print("|---|---|---|")
    print(f"| {small_mb:.0f} MB | {median(small_runs, 'peak_mb'):.0f} MB | ≤ 400 MB |")
    print(f"| {big_mb:.0f} MB | {median(ours, 'peak_mb'):.0f} MB | ≤ 400 MB, same as the small one |")
    print(
        f"\nmedians of {args.repeats} run(s); tokens: raw tiktoken {raw[0]['tokens']:,}, "
        f"slmkit shards {ours[0]['tokens']:,} (with one end-of-text per split)"
    )


if __name__ == "__main__":
    main()
