"""The toy transformer of `live.compute: torch` (engines/live/torch_model.py) alone: prefill and decode
step times, and the bit-exactness check (a second round over stored KV equals the recomputed reference),
on CUDA when torch sees a GPU, else on one CPU thread.

    .venv/bin/python benchmarks/bench_torch.py [--contexts 1024,4096] [--block 64] [--gen 32]

Prints one table and a SUMMARY line (exit 1 when the check fails).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engines.costmodel import model_spec  # noqa: E402
from engines.live.torch_model import TinyDecoder, shape_for  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "scenarios" / "live" / "torch-tiny.model.yaml"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generate(m: TinyDecoder, tokens: list[int], gen: int, kv: np.ndarray, start: int = 0):
    t0 = time.perf_counter()
    run = m.prefill(tokens, kv, start)
    for i in range(m.s.layers):
        run.layer(i)
    _sync()
    prefill_s = time.perf_counter() - t0
    out = [run.first_token]
    t0 = time.perf_counter()
    while len(out) < gen:
        out.append(m.decode(out[-1], len(tokens) + len(out) - 1, kv))
    _sync()
    return out, prefill_s, (time.perf_counter() - t0) / max(1, gen - 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="1024,4096")
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--gen", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = TinyDecoder(shape_for(model_spec(str(MODEL)), args.block), device=device)
    bpt = m.s.bytes_per_token_layer
    rng = np.random.default_rng(0)
    ok = True
    print(f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'one thread'})")
    print(f"{'context':>8} {'prefill s':>10} {'decode step ms':>15} {'2nd round == reference':>23}")
    for n in (int(c) for c in args.contexts.split(",")):
        first = rng.integers(1000, 30000, n // 2).tolist()
        kv1 = np.zeros((m.s.layers, (len(first) + args.gen) * bpt), np.uint8)
        out1, _, _ = generate(m, first, args.gen, kv1)
        ctx = first + out1 + rng.integers(1000, 30000, n - len(first) - args.gen).tolist()
        ref_kv = np.zeros((m.s.layers, (len(ctx) + args.gen) * bpt), np.uint8)
        ref, prefill_s, step_s = generate(m, ctx, args.gen, ref_kv)
        stored = (len(first) + args.gen - 1) // args.block * args.block
        kv2 = np.zeros_like(ref_kv)
        kv2[:, :stored * bpt] = kv1[:, :stored * bpt]
        same = generate(m, ctx, args.gen, kv2, stored)[0] == ref
        ok &= same
        print(f"{len(ctx):>8} {prefill_s:>10.3f} {1e3 * step_s:>15.2f} {str(same):>23}")
    print(f"\nSUMMARY device {device}: bit-exact second rounds {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
