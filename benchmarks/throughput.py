"""Training-step throughput at three shapes (issue 18): slm's GPT and optimizers against nanoGPT's model.py.

Shapes: nanoGPT's CPU speedrun (4 x 128, block 64, vocab 65), ~10M parameters (6 x 384, block 256,
vocab 65) and seed 001's 51M (8 x 512, block 256, GPT-2's 50,257 tokens, biases, dropout 0.1).
Every measurement is its own process (so peak RSS is its own): random windows of random tokens,
forward, backward, clip at 1.0, the optimizer step, zero_grad: the same loop around each engine's
model and optimizer (ours: slmkit.model.GPT with nanoGPT's exact GELU + slmkit.optim.make_optimizers,
fused AdamW; nanoGPT's: its GPT + its configure_optimizers, from a temporary copy of
../shared/peers/nanoGPT, run as an outside program). Rounds alternate the order. With --compile, slm's
model also runs under torch.compile; its compile time (the first steps) is printed apart from the steady
ms/step. Beside the wall ms/step, the CPU ms/step (the process's user + system time per step): on a
loaded machine a process waits for a core, which adds to its wall but not to its CPU time, so the CPU
ratio is the steadier comparison there (with --threads 1). MFU: the model's FLOPs per CPU second over a
1024 x 1024 fp32 torch.mm's, measured at the end.

    python -P benchmarks/throughput.py --threads 1 --rounds 2
    python -P benchmarks/throughput.py --threads 1 --rounds 1 --quick --shapes cpu 10m
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# name: (n_layer, n_head, n_embd, block_size, vocab_size, bias, dropout, batch_size)
SHAPES = {
    "cpu": (4, 4, 128, 64, 65, False, 0.0, 12),
    "10m": (6, 6, 384, 256, 65, False, 0.0, 8),
    "51m": (8, 8, 512, 256, 50257, True, 0.1, 4),
}
# One measurement, in its own process: argv = engine, shape json, steps, warmup, threads, compile
STEP = r"""
import json, resource, statistics, sys, time
import torch
engine, shape, steps, warmup, threads, compile_ = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:7])
torch.set_num_threads(threads)
torch.manual_seed(1337)
L, H, C, T, V, bias, dropout, B = shape
if engine == "nanogpt":
    from model import GPT, GPTConfig  # nanoGPT's own model.py (the copy is the working directory)
    model = GPT(GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V, bias=bias, dropout=dropout))
    optimizers = [model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")]
else:
    from slmkit.config import ModelConfig, TrainConfig
    from slmkit.model import GPT
    from slmkit.optim import make_optimizers
    cfg = ModelConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V, bias=bias, dropout=dropout,
                      pos_embedding="learned", norm="layernorm", mlp="gelu_exact", tie_embeddings=True)
    model = GPT(cfg)
    optimizers = make_optimizers(model, TrainConfig(lr=1e-3, decay_embeddings=True), torch.device("cpu"))
flops = 6 * (sum(p.numel() for p in model.parameters()) - T * C) + 12 * L * C * T  # per token, PaLM's
step_model = torch.compile(model) if compile_ else model
data = torch.randint(V, (1_000_000,))
times, cpu_times = [], []
for i in range(warmup + steps):
    t, cpu = time.perf_counter(), time.process_time()
    ix = torch.randint(len(data) - T - 1, (B,))
    x = torch.stack([data[j : j + T] for j in ix])
    y = torch.stack([data[j + 1 : j + 1 + T] for j in ix])
    _, loss = step_model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    for o in optimizers:
        o.step()
        o.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t)
    cpu_times.append(time.process_time() - cpu)
print(json.dumps({"ms": 1000 * statistics.median(times[warmup:]), "first_s": sum(times[:warmup]),
                  "cpu_ms": 1000 * statistics.median(cpu_times[warmup:]),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "flops": flops,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def matmul_peak(threads: int) -> tuple[float, float]:
    """GFLOP/s of a 1024 x 1024 fp32 torch.mm on `threads` threads (in a process of its own): per wall second
    and per CPU second (medians of 20), the latter steady under load."""
    code = (
        "import statistics, time, torch\n"
        f"torch.set_num_threads({threads}); a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)\n"
        "[torch.mm(a, b) for _ in range(3)]\nts, cs = [], []\n"
        "for _ in range(20):\n    t, c = time.perf_counter(), time.process_time(); torch.mm(a, b)\n"
        "    ts.append(time.perf_counter() - t); cs.append(time.process_time() - c)\n"
        "print(2 * 1024**3 / statistics.median(ts) / 1e9, 2 * 1024**3 / statistics.median(cs) / 1e9)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def measure(engine: str, shape: tuple, steps: int, warmup: int, threads: int, compile_: bool, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    args = [engine, json.dumps(shape), str(steps), str(warmup), str(threads), str(int(compile_))]
    done = subprocess.run([sys.executable, "-c", STEP, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} at {shape} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared folder (peers/nanoGPT)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--quick", action="store_true", help="5 timed steps instead of 30")
    parser.add_argument("--compile", action="store_true", help="also slm's model under torch.compile")
    args = parser.parse_args()
    steps, warmup = (5, 2) if args.quick else (30, 5)
    peer = Path(args.shared) / "peers" / "nanoGPT"
    work = Path(tempfile.mkdtemp(prefix="slm-throughput-"))
    engines = ["slm"] + (["slm+compile"] if args.compile else [])
    if peer.is_dir():
        shutil.copytree(peer, work / "nanogpt")
        engines.insert(0, "nanogpt")
    else:
        print(f"note: {peer} is absent: the nanoGPT rows are skipped")
    cwd = work / "nanogpt" if peer.is_dir() else work
    print("fp32 matmul peak, {} threads: {:.1f} GFLOP/s per wall second, {:.1f} per CPU second; load {}".format(
        args.threads, *matmul_peak(args.threads), os.getloadavg()))
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for name in args.shapes:
            for engine in engines if r % 2 == 0 else engines[::-1]:
                got = measure(engine.split("+")[0], SHAPES[name], steps, warmup, args.threads, "+" in engine, cwd)
                results.setdefault((name, engine), []).append(got)
                print(f"round {r + 1} {name} {engine}: {got['ms']:.1f} ms/step, {got['cpu_ms']:.1f} CPU ms/step, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    peak, cpu_peak = matmul_peak(args.threads)
    print(f"\nfp32 matmul peak after: {peak:.1f} GFLOP/s per wall second, {cpu_peak:.1f} per CPU second (MFU below: "
          f"model FLOPs per CPU second over the latter); load {os.getloadavg()}")
    print("| shape | engine | params | ms/step (median of rounds) | tokens/s | vs nanoGPT | CPU ms/step | vs nanoGPT (CPU) "
          "| MFU | peak RSS | first steps |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.shapes:
        L, H, C, T, V, bias, dropout, B = SHAPES[name]
        base = results.get((name, "nanogpt"))
        for engine in engines:
            got = results[(name, engine)]
            ms = statistics.median(g["ms"] for g in got)
            tps = B * T / ms * 1000
            ratio = f"{statistics.median(g['ms'] for g in base) / ms:.3f}" if base else "—"
            cpu_ms = statistics.median(g["cpu_ms"] for g in got)
            cpu_ratio = f"{statistics.median(g['cpu_ms'] for g in base) / cpu_ms:.3f}" if base else "—"
            print(f"| {L}x{C}, block {T}, vocab {V}, batch {B} | {engine} | {got[0]['params'] / 1e6:.2f}M | {ms:.1f} | "
                  f"{tps:,.0f} | {ratio} | {cpu_ms:.1f} | {cpu_ratio} | {got[0]['flops'] * B * T / cpu_ms * 1000 / cpu_peak / 1e9:.1%} | "
                  f"{max(g['rss_mb'] for g in got):.0f} MB | {statistics.median(g['first_s'] for g in got):.1f} s |")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
