"""Fit the simulator's numbers for this host running the toy model of `live.compute: torch` on one CPU
thread (or on CUDA where torch sees a GPU), so `--set backend=sim` can predict a torch live run.

    .venv/bin/python benchmarks/profile_torch_host.py [--repeats 7] [--block 64]

The calibration points are microbenchmarks of the engine's compute path alone (the engines' own
`TorchCompute`: compute thread -> compute process -> the new K/V back into the engine's buffer), never a
run's JCT: prefill of one request at (cached, new) = (0, 128), (0, 512), (1024, 128), (1024, 512),
layer by layer as the PE runs it, and decode steps of (sequences x context) = 4 x 256, 4 x 1024,
4 x 2048, 1 x 256, 1 x 2048, each sequence its own KV buffer as the DE steps its batch (each point's
median over --repeats rounds of all the points in turn). Fitted, least squares with coefficients >= 0
(a term that would come out negative is dropped):

    prefill_s = A + B new + D new (cached + new / 2)      decode_step_s = O + E n + G n ctx

and mapped onto the cost model (engines/costmodel/cost.py), prefill for a batch of one, as the live torch
PE computes (one request at a time; the simulator charges a batch of one at batch_speed(1) = 1/3):
- B -> peak FLOP/s: 3 x (projection + FFN FLOPs a token) / B / linear_mfu (0.7, the prior);
- D -> `attention_mfu`: 3 x attention FLOPs a key pair / D / peak;
- A -> `prefill_layer_overhead_s`: (A - prefill_step_overhead_s) / layers (a layer's call and its K/V
  coming back);
- G -> `decode_mfu`: attention FLOPs per context token / G / peak; E -> `decode_per_seq_s`: E less a
  sequence's linear layers at that rate (each sequence is its own model call); O ->
  `decode_step_overhead_s` (a step's trip to the compute process and back);
  HBM bandwidth is set high enough that the memory term never binds.

Prints the measurements, the fit's worst residual, the cost model's times at the calibration points with
the fitted numbers (the mapping's check), and the YAML for a hardware profile and the
scenario's `sim:` constants.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engines.costmodel import CostModel, SimConstants, hardware_spec, model_spec  # noqa: E402
from engines.costmodel.profiles import GpuSpec  # noqa: E402
from engines.live.compute import ComputeThread  # noqa: E402
from engines.live.torch_compute import TorchCompute  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "scenarios" / "live" / "torch-tiny.model.yaml"
HARDWARE = MODEL.with_name("torch-host.hardware.yaml")
PREFILL = [(0, 128), (0, 512), (1024, 128), (1024, 512)]
DECODE = [(4, 256), (4, 1024), (4, 2048), (1, 256), (1, 2048)]  # (sequences in the step, context)


async def time_prefill(tc: TorchCompute, layers: int, cached: int, new: int) -> float:
    """One prefill through the engine's compute path (compute thread -> compute process -> the layer's
    new K/V back into the engine's buffer), layer by layer as the PE runs it."""
    rng = np.random.default_rng(cached + new)
    tokens = rng.integers(1000, 30000, cached + new).tolist()
    kv = np.zeros((layers, (cached + new) * tc.bpt), np.uint8)
    if cached:
        run = tc.prefill(tokens[:cached], kv, 0)
        for i in range(layers):
            await run.layer(i)
    t0 = time.perf_counter()
    run = tc.prefill(tokens, kv, cached)
    for i in range(layers):
        await run.layer(i)
    return time.perf_counter() - t0


async def time_decode(tc: TorchCompute, layers: int, ctx: int, batch: int) -> float:
    """One decode step over `batch` sequences at context `ctx`, each its own KV buffer, through the
    engine's compute path as the DE steps its batch (the step that hands the buffers over is not timed)."""
    tokens = np.random.default_rng(ctx).integers(1000, 30000, ctx).tolist()
    slots = []
    for _ in range(batch):
        kv = np.zeros((layers, ctx * tc.bpt), np.uint8)
        run = tc.prefill(tokens, kv, 0)
        for i in range(layers):
            await run.layer(i)
        slots.append({"last": run.first_token, "ctx": ctx, "kv": tc.grow(kv, ctx + 1), "left": 1 << 30})
    await tc.step(slots)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        await tc.step(slots)
        times.append(time.perf_counter() - t0)
    for s in slots:
        tc.forget(s)
    return float(np.median(times))


def nonneg_lstsq(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0: drop the most negative term and refit until none is."""
    keep = list(range(X.shape[1]))
    while True:
        coef, *_ = np.linalg.lstsq(X[:, keep], y, rcond=None)
        if (coef >= 0).all():
            out = np.zeros(X.shape[1])
            out[keep] = coef
            return out
        keep.pop(int(np.argmin(coef)))


def measure(repeats: int, block: int) -> tuple[list, list]:
    """The calibration points on this host now: [(cached, new, s)], [(batch, ctx, s)]. The points in turn,
    `repeats` rounds (a slow spell of this shared host spreads over every point instead of bending the
    fit), each point's median over its rounds."""
    spec = model_spec(str(MODEL))
    layers = spec.layers

    async def run():
        thread = ComputeThread(1.0)
        tc = TorchCompute({"model": str(MODEL), "block_tokens": block,
                           "bytes_per_token_layer": spec.kv_bytes_per_token_layer}, thread)
        try:
            await asyncio.wrap_future(tc.loaded)
            if tc.error:
                raise RuntimeError(tc.error)
            pre_t, dec_t = {p: [] for p in PREFILL}, {p: [] for p in DECODE}
            for _ in range(repeats):
                for c, n in PREFILL:
                    pre_t[c, n].append(await time_prefill(tc, layers, c, n))
                for b, ctx in DECODE:
                    dec_t[b, ctx].append(await time_decode(tc, layers, ctx, b))
            return pre_t, dec_t
        finally:
            thread.close()
            tc.close()
    pre_t, dec_t = asyncio.run(run())
    return ([(c, n, float(np.median(pre_t[c, n]))) for c, n in PREFILL],
            [(b, ctx, float(np.median(dec_t[b, ctx]))) for b, ctx in DECODE])


def fit(pre: list, dec: list) -> tuple[float, dict, float]:
    """(peak FLOP/s, the scenario's sim: constants, the worst residual) from the measurements;
    ValueError when a fitted term is not positive (too noisy a host)."""
    spec = model_spec(str(MODEL))
    X = np.array([[1.0, n, n * (c + n / 2)] for c, n, _ in pre])
    y = np.array([t for _, _, t in pre])
    a, b, d = nonneg_lstsq(X, y)
    Xd = np.array([[1.0, n, n * ctx] for n, ctx, _ in dec])
    yd = np.array([t for *_, t in dec])
    o, e, g = nonneg_lstsq(Xd, yd)
    worst = max(np.max(np.abs(X @ [a, b, d] / y - 1)), np.max(np.abs(Xd @ [o, e, g] / yd - 1)))
    print(f"fit: A {1e3 * a:.2f} ms  B {1e6 * b:.2f} us/token  D {1e9 * d:.3f} ns/pair  "
          f"O {1e3 * o:.2f} ms  E {1e3 * e:.2f} ms  G {1e9 * g:.1f} ns/ctx token; worst residual {100 * worst:.1f} %")
    if min(b, d, e, g) <= 0:
        raise ValueError("a fitted term is not positive: the host is too noisy for this fit; "
                         "run again with more --repeats")
    k = SimConstants()
    L = spec.layers
    lin_flops = 2 * spec.linear_params_per_token
    pair = 4 * spec.attn_heads * spec.head_dim * L  # attention FLOPs per (query, key) pair, all layers
    peak = 3 * lin_flops / b / k.linear_mfu
    fitted = {"attention_mfu": 3 * pair / d / peak,
              "prefill_layer_overhead_s": max(0.0, (a - k.prefill_step_overhead_s) / L),
              "decode_mfu": pair / g / peak}
    per_token = lin_flops / (peak * fitted["decode_mfu"])  # a sequence's linear layers in a decode step
    fitted["decode_per_seq_s"] = max(0.0, e - per_token)
    fitted["decode_step_overhead_s"] = o
    return peak, fitted, worst


def hardware_with_peak(peak: float, hardware: Path = HARDWARE):
    return replace(hardware_spec(str(hardware)), gpu=GpuSpec(peak, peak, 1.0e13, 2.0e9))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--block", type=int, default=64)
    args = ap.parse_args()
    pre, dec = measure(args.repeats, args.block)
    print(f"device {'cuda' if torch.cuda.is_available() else 'cpu'}; prefill (cached, new) -> ms; "
          "decode step (sequences x context) -> ms")
    for c, n, t in pre:
        print(f"  prefill ({c:>5}, {n:>4})  {1e3 * t:8.2f}")
    for n, ctx, t in dec:
        print(f"  decode  {n} x {ctx:>5}      {1e3 * t:8.2f}")
    try:
        peak, fitted, _ = fit(pre, dec)
    except ValueError as exc:
        print(exc)
        return 1
    spec = model_spec(str(MODEL))
    k = SimConstants()
    cost = CostModel(spec, hardware_with_peak(peak), k.with_overrides(fitted), prefill_ep=1, decode_ep=1)
    print("\nthe cost model with these numbers at the calibration points (a batch of one):")
    for c, n, t in pre:
        model = (cost.prefill_attention_s(c, n) + cost.prefill_ffn_s(n, 1)) / cost.batch_speed(1) \
            + cost.prefill_step_overhead_s
        print(f"  prefill ({c:>5}, {n:>4})  measured {1e3 * t:8.2f} ms  model {1e3 * model:8.2f} ms")
    for n, ctx, t in dec:
        model = cost.decode_step_s(n, n * ctx, n * ctx)
        print(f"  decode  {n} x {ctx:>5}      measured {1e3 * t:8.2f} ms  model {1e3 * model:8.2f} ms")
    print("\n# hardware profile (gpu part)")
    print(f"gpu:\n  peak_flops_bf16: {peak:.3g}\n  peak_flops_fp8: {peak:.3g}\n  hbm_bw_bytes_s: 1.0e13\n  hbm_bytes: 2.0e9")
    print("# the scenario's sim: constants")
    print("sim: {" + ", ".join(f"{key}: {value:.3g}" for key, value in fitted.items()) + "}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
