"""Fit and encode speed of every tokenizer kind on the built-in KJV corpus (31,103 verses, 4.3 MB).

    python -P benchmarks/tokenizer_speed.py [--vocab-size 8000]
"""

from __future__ import annotations

import argparse
import time

from slmkit.config import TokenizerConfig
from slmkit.data.sources.kjv import read_kjv
from slmkit.tokenizer import fit_tokenizer, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8000, help="for word, bpe and wordpiece")
    args = parser.parse_args()
    docs = read_kjv()
    megabytes = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    print(f"{'kind':10s} {'vocab':>6s} {'fit s':>6s} {'encode MB/s':>12s} {'encode_batch MB/s':>18s} {'tokens/byte':>12s}")
    for kind in kinds():
        cfg = TokenizerConfig(kind=kind, vocab_size=args.vocab_size if kind in ("word", "bpe", "wordpiece") else 0)
        t0 = time.perf_counter()
        tok = fit_tokenizer(cfg, docs)
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        one_by_one = [tok.encode(d) for d in docs]
        loop = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched = tok.encode_batch(docs)
        batch = time.perf_counter() - t0
        assert batched == one_by_one
        tokens = sum(map(len, batched))
        print(
            f"{kind:10s} {tok.vocab_size:6d} {fit:6.2f} {megabytes / loop:12.2f} {megabytes / batch:18.2f} "
            f"{tokens / (megabytes * 1e6):12.3f}"
        )


if __name__ == "__main__":
    main()
