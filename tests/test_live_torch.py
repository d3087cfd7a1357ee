"""`live.compute: torch` without processes: the toy transformer gives a token the same K/V bits and the
same next token whether its prompt is prefilled from scratch, after a loaded prefix, layer by layer, or
decoded one token at a time; a corrupted loaded block changes the tokens; profiles it cannot take and a
missing torch are one-line errors."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")

from engines.costmodel import model_spec  # noqa: E402
from engines.live import torch_compute  # noqa: E402
from engines.live.compute import ComputeThread  # noqa: E402
from engines.live.torch_model import TinyDecoder, shape_for  # noqa: E402

LIVE = Path(__file__).resolve().parents[1] / "scenarios" / "live"
SPEC = model_spec(str(LIVE / "torch-tiny.model.yaml"))
B = 16  # a small block: more block boundaries per token
SHAPE = shape_for(SPEC, B)
torch.set_num_threads(1)
MODEL = TinyDecoder(SHAPE)
BPT = SHAPE.bytes_per_token_layer


def generate(tokens: list[int], gen: int, kv: np.ndarray, start: int = 0) -> list[int]:
    """Prefill `tokens` over the K/V already in `kv` below `start`, then decode to `gen` tokens."""
    run = MODEL.prefill(tokens, kv, start)
    for i in range(SHAPE.layers):
        run.layer(i)
    out = [run.first_token]
    while len(out) < gen:
        out.append(MODEL.decode(out[-1], len(tokens) + len(out) - 1, kv))
    return out


def buffer(tokens: int) -> np.ndarray:
    return np.zeros((SHAPE.layers, tokens * BPT), dtype=np.uint8)


def test_the_profile_is_the_models_shape():
    assert (SHAPE.layers, SHAPE.hidden, SHAPE.heads, SHAPE.kv_heads, SHAPE.head_dim) == (2, 128, 4, 2, 32)
    assert (SHAPE.ffn, SHAPE.vocab) == (256, 1024)
    assert SHAPE.bytes_per_token_layer == SPEC.kv_bytes_per_token_layer == 512


@settings(max_examples=6, deadline=None)
@given(prompt=st.integers(1, 90), gen=st.integers(1, 12), append=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_a_second_round_over_stored_kv_equals_the_reference_bit_for_bit(prompt, gen, append, seed):
    rng = np.random.default_rng(seed)
    first = rng.integers(1000, 30000, prompt).tolist()
    kv1 = buffer(prompt + gen)
    out1 = generate(first, gen, kv1)
    assert len(out1) == gen and all(0 <= t < SHAPE.vocab for t in out1)
    ctx = first + out1 + rng.integers(1000, 30000, append).tolist()
    ref_kv = buffer(len(ctx) + gen)
    ref = generate(ctx, gen, ref_kv)
    # what a DE writes back: the blocks whose K/V are all computed (the last generated token's are not)
    stored = (prompt + gen - 1) // B
    kv2 = buffer(len(ctx) + gen)
    kv2[:, :stored * B * BPT] = kv1[:, :stored * B * BPT]
    assert generate(ctx, gen, kv2, start=stored * B) == ref
    done = (len(ctx) + gen - 1) * BPT  # every K/V computed, from decode or prefill, has the same bits
    assert np.array_equal(kv2[:, :done], ref_kv[:, :done])
    assert np.array_equal(kv1[:, :(prompt + gen - 1) * BPT], ref_kv[:, :(prompt + gen - 1) * BPT])


def test_a_whole_hit_still_computes_its_last_block():
    tokens = np.random.default_rng(3).integers(1000, 30000, 4 * B).tolist()
    ref_kv = buffer(4 * B + 4)
    ref = generate(tokens, 4, ref_kv)
    kv = ref_kv.copy()
    kv[:, 4 * B * BPT:] = 0
    assert generate(tokens, 4, kv, start=4 * B) == ref


def test_a_corrupted_loaded_block_changes_the_tokens():
    rng = np.random.default_rng(7)
    tokens = rng.integers(1000, 30000, 5 * B + 3).tolist()
    ref_kv = buffer(len(tokens) + 16)
    ref = generate(tokens, 16, ref_kv)
    kv = buffer(len(tokens) + 16)
    kv[:, :4 * B * BPT] = ref_kv[:, :4 * B * BPT]
    assert generate(tokens, 16, kv.copy(), start=4 * B) == ref
    kv[:, B * BPT:2 * B * BPT] = 0  # block 1 lost (zeros: a transfer that never happened)
    assert generate(tokens, 16, kv, start=4 * B) != ref


def test_prefill_must_start_on_a_block_boundary():
    with pytest.raises(ValueError, match="block boundary"):
        MODEL.prefill([1] * 40, buffer(40), 5)


@pytest.mark.parametrize("change, message", [
    ({"kv_bytes_per_token_layer": 1024}, "kv_bytes_per_token_layer: .* = 512, got 1024"),
    ({"kv_heads": 3}, "kv_heads: must divide attn_heads"),
    ({"head_dim": 0}, "head_dim: compute: torch needs it > 0"),
])
def test_profiles_the_toy_model_cannot_take_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        shape_for(dataclasses.replace(SPEC, **change), B)


def test_torch_missing_is_one_line(monkeypatch):
    monkeypatch.setattr(torch_compute.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"needs torch, which is not installed: pip install") as exc:
        torch_compute.check(str(LIVE / "torch-tiny.model.yaml"), B)
    assert "\n" not in str(exc.value)


def test_engine_adapter_runs_on_the_compute_thread_and_batches_decode():
    cfg = {"model": str(LIVE / "torch-tiny.model.yaml"), "block_tokens": B, "bytes_per_token_layer": BPT}
    tokens = np.random.default_rng(11).integers(1000, 30000, 2 * B + 5).tolist()
    ref = generate(tokens, 6, buffer(len(tokens) + 6))

    async def main():
        thread = ComputeThread(1.0)
        tc = torch_compute.TorchCompute(cfg, thread)
        try:
            kv = buffer(len(tokens))
            run = tc.prefill(tokens, kv, 0)
            for i in range(SHAPE.layers):
                await run.layer(i)
            kv = tc.grow(kv, len(tokens) + 6)
            slots = [{"last": run.first_token, "ctx": len(tokens), "kv": kv},
                     {"last": run.first_token, "ctx": len(tokens), "kv": kv.copy()}]  # two requests, one step
            out = [[run.first_token], [run.first_token]]
            for _ in range(5):
                for o, t in zip(out, await tc.step(slots)):
                    o.append(t)
                for s in slots:
                    s["ctx"] += 1
            return out, thread.busy_s, kv, slots[1]["kv"], tc.worker.proc
        finally:
            thread.close()
            tc.close()
    out, busy, kv_a, kv_b, proc = asyncio.run(main())
    assert out == [ref, ref] and busy > 0
    # the engine's buffers hold every K/V row the compute process wrote (they are what goes to storage)
    assert np.array_equal(kv_a, kv_b) and kv_a[:, (len(tokens) + 4) * BPT:].any()
    assert not proc.is_alive() and proc.exitcode is not None


def test_a_whole_hit_read_on_the_de_side_sends_empty_layers_the_de_takes():
    """The PE recomputes a whole hit's last block but sends no miss KV (the DE read it): empty frames."""
    from engines.live.engine import DecodeEngine

    cfg = {"node": 1, "index": 0, "layers": SHAPE.layers, "block_tokens": B, "bytes_per_token_layer": BPT,
           "cnic_bytes_s": 1e9, "model": str(LIVE / "torch-tiny.model.yaml"),
           "hardware": str(LIVE / "live-host.hardware.yaml"), "storage": {}}

    async def main():
        de = DecodeEngine(cfg)
        try:
            for layer in range(SHAPE.layers):
                await de.on_frame(None, {"op": "kv", "rid": "r", "layer": layer, "from": 2 * B * BPT,
                                         "prompt_tokens": 2 * B}, None)
            await de.on_frame(None, {"op": "kv_done", "rid": "r", "first": 5}, None)
            return de.buffers["r"].shape, de.ready["r"].is_set(), de.first_tokens["r"]
        finally:
            de.close()
    assert asyncio.run(main()) == ((SHAPE.layers, 2 * B * BPT), True, 5)


@pytest.mark.parametrize("model, status", [(str(LIVE / "torch-tiny.model.yaml"), 200), ("deepseek-27b", 503)])
def test_warm_answers_once_the_model_has_run_and_says_why_it_cannot(model, status):
    """The cluster starts a run only after every engine's /warm: 200 once the model is loaded and has
    run (no request pays torch's import), 503 naming the cause when it cannot load."""
    import json

    from engines.live.engine import DecodeEngine

    cfg = {"node": 1, "index": 0, "layers": SHAPE.layers, "block_tokens": B, "bytes_per_token_layer": BPT,
           "cnic_bytes_s": 1e9, "model": model, "compute": "torch",
           "hardware": str(LIVE / "live-host.hardware.yaml"), "storage": {}}

    async def main():
        de = DecodeEngine(cfg)
        try:
            resp = await de.warm(None)
            return resp.status, json.loads(resp.body), de.torch.error is None, de.torch.worker.proc
        finally:
            de.close()
    got_status, body, loaded, proc = asyncio.run(main())
    assert (got_status, body["ok"], loaded) == (status, status == 200, status == 200)
    assert not proc.is_alive() and proc.exitcode is not None  # the engine's close ends its compute process
    if status == 503:
        assert body["error"].startswith("compute: torch could not start: ValueError: kv_heads:")


def test_the_compute_process_ends_when_its_engine_dies_without_closing_it():
    """An engine killed outright (no close) leaves no compute process behind: the worker sees its pipe's
    end and returns."""
    import os
    import select
    import subprocess
    import sys

    code = ("import os, sys\n"
            "from engines.live.compute_worker import Worker\n"
            "w = Worker()\n"
            "print(w.proc.pid, flush=True)\n"
            "os._exit(9)\n")  # no close(), no atexit: as SIGKILL leaves it
    helper = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert helper.returncode == 9, helper.stderr
    pid = int(helper.stdout.split()[0])
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone
    try:
        ready, _, _ = select.select([fd], [], [], 30)  # readable when the process has exited
    finally:
        os.close(fd)
    assert ready, f"compute process {pid} outlived its engine"
