"""The default job (issue 21): the GPT-2-style reference and the re-tuned default, side by side in one run.

Each recipe trains to the same time budget, alternating (--rounds), and reports: steps, tokens/s
(median over log windows without an evaluation), the best weights' bits per byte on the whole val
split, and beside each run the load average and the fp32 matmul peak measured just before it (the
budget is wall time, so the machine's speed is part of the result). Then xz -9e and bzip2 -9 on the
same val split: the last 10% of the verses given the first 90% (compress train+val and train alone;
the difference is val's cost).

    python -P benchmarks/default_job.py                        # 2 x (5 minutes + ~15 s), then ~30 s
    python -P benchmarks/default_job.py --minutes 1 --rounds 2 # a quick look
BENCHMARKS.md records the results.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import lzma
import math
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))  # after the stdlib: benchmarks/tokenize.py

from slmkit.config import load_recipe  # noqa: E402
from slmkit.data.sources import Corpus  # noqa: E402
from slmkit.train import train  # noqa: E402
from speedrun import matmul_peak  # noqa: E402

RECIPES = (ROOT / "recipes" / "kjv-char-gpt2.yaml", ROOT / "recipes" / "kjv-bpe.yaml")
COMPRESSORS = {
    "xz -9e": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
    "bzip2 -9": lambda data: bz2.compress(data, 9),
}


def compressor_bits_per_byte(recipe: Path) -> dict[str, float]:
    """Bits per byte of each compressor on the recipe's val split given its train split.

    The compressed text is each verse followed by a newline (the separator the models predict too);
    bytes are counted without the separators, as slmkit's bits per byte counts them."""
    corpus = Corpus(load_recipe(str(recipe)).data)
    train_docs, val_docs = (list(corpus.documents(split)) for split in ("train", "val"))
    train_text, val_text = ("".join(doc + "\n" for doc in docs).encode() for docs in (train_docs, val_docs))
    val_bytes = sum(len(doc.encode()) for doc in val_docs)
    return {
        name: 8 * (len(compress(train_text + val_text)) - len(compress(train_text))) / val_bytes
        for name, compress in COMPRESSORS.items()
    }


def run(recipe: Path, minutes: float, threads: int, out: Path) -> dict:
    """Train `recipe` to a `minutes` budget; the figures of one side-by-side row."""
    cfg = load_recipe(str(recipe), {"train.max_minutes": minutes, "train.threads": threads})
    load, peak = os.getloadavg()[0], matmul_peak(threads)
    result = train(cfg, out=out, progress_bar=False)
    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        windows = [r for r in csv.DictReader(f) if not r["val_loss"]]
    return {
        "recipe": recipe.stem,
        "load": load,
        "peak": peak,
        "steps": result.steps,
        "tokens": result.tokens,
        "tokens_per_s": statistics.median(float(r["tokens_per_second"]) for r in windows),
        "bits_per_byte": result.final_val.metrics["bits_per_byte"],
        "sample": result.sample,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="the time budget of every run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the two recipes")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="slm-default-job-"))
    os.chdir(work)  # shards/ and runs go here
    results = [
        run(recipe, args.minutes, args.threads, work / f"{recipe.stem}-{i}")
        for i in range(args.rounds)
        for recipe in RECIPES
    ]
    print(f"\n| recipe | load (1 min) | matmul peak, GFLOP/s | steps in {args.minutes:g} min | tokens | tokens/s "
          "| val (full), bits/byte | nats/byte |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        bpb = r["bits_per_byte"]
        print(
            f"| {r['recipe']} | {r['load']:.1f} | {r['peak']:.0f} | {r['steps']:,} | {r['tokens'] / 1e6:.2f} M "
            f"| {r['tokens_per_s']:,.0f} | {bpb:.4f} | {bpb * math.log(2):.4f} |"
        )
    for name, bpb in compressor_bits_per_byte(RECIPES[-1]).items():
        print(f"| {name} (val given train) | | | | | | {bpb:.4f} | {bpb * math.log(2):.4f} |")
    for r in results:
        print(f"\nsample, {r['recipe']}:\n{r['sample']}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
