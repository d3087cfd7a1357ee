"""The fidelity pass's mechanisms (issue 18): the copy-engine submission cost of whole-request prefill,
a dense model's FFN per GPU, Qwen2.5-32B's FP8 weights, and the fidelity benchmark's arithmetic."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from engines.costmodel import CostModel, SimConstants, hardware_spec, model_spec
from tests.test_sim_engine import make_trace, run

ROOT = Path(__file__).resolve().parents[1]
DS = model_spec("deepseek-v3.2-660b")
QWEN = model_spec("qwen2.5-32b")
HW = hardware_spec("hopper-paper")
CLUSTER = {"prefill_nodes": 2, "decode_nodes": 2}
ONE_AGENT = {"solo": [(4000, 8, 0.0), (700, 8, 0.0), (300, 4, 0.0)]}


def _prefill_s(system: str, copy_submit_s: float, model=DS, cluster=CLUSTER, rounds=ONE_AGENT):
    _, f = run(make_trace(rounds), system, model=model, cluster=cluster,
               constants=SimConstants(copy_submit_s=copy_submit_s))
    return f["requests"].sort_values("round")


def test_whole_request_prefill_pays_one_copy_submission_per_block_and_layer():
    """basic: a round with a cache hit computes ceil(hit / 64) x 61 layers x copy_submit_s longer than
    with the cost off (one agent, so nothing else moves); round 0, with no hit, pays nothing."""
    on, off = _prefill_s("basic", 6e-6), _prefill_s("basic", 0.0)
    extra = on.prefill_s.to_numpy() - off.prefill_s.to_numpy()
    for row, dt in zip(on.itertuples(), extra):
        blocks = math.ceil(row.cached_tokens / 64)
        assert dt == pytest.approx(blocks * DS.layers * 6e-6, abs=1e-9), row.round
    assert on.cached_tokens.iloc[0] == 0 and on.cached_tokens.iloc[1] > 4000
    assert extra[1] > 0.005  # ~63 blocks x 61 layers x 6 us = 23 ms


@pytest.mark.parametrize("system", ["layerwise", "dualpath", "oracle"])
def test_layerwise_prefill_hides_the_copy_submissions(system):
    on, off = _prefill_s(system, 6e-6), _prefill_s(system, 0.0)
    assert on.prefill_s.tolist() == off.prefill_s.tolist()
    assert on.t_done.tolist() == off.t_done.tolist()


def test_a_dense_model_runs_each_gpus_ffn_on_that_gpu():
    """Qwen (no experts): eight agents arriving together land on the eight prefill GPUs of one group; the
    first step starts with the first request, the next one computes the other seven, one per GPU. Each GPU
    runs its own tokens' FFN, so that step takes what the first took (the seven requests' FFN charged to
    one step, as before the fix, made it ~2.2x longer)."""
    cluster = {"prefill_nodes": 1, "decode_nodes": 1}
    one = _prefill_s("oracle", 0.0, QWEN, cluster, {"a": [(6000, 4, 0.0)]}).prefill_s.iloc[0]
    many = _prefill_s("oracle", 0.0, QWEN, cluster, {f"a{i}": [(6000, 4, 0.0)] for i in range(8)})
    assert many.pe.nunique() == 8
    assert many.prefill_s.max() == pytest.approx(2 * one, rel=1e-9)
    cost = CostModel(QWEN, HW, SimConstants(), prefill_ep=1, decode_ep=1)
    assert one >= cost.prefill_ffn_s(6000, 1)  # the FFN is in the step, once


def test_qwen_runs_fp8_weights_and_holds_a_64k_context_on_a_prefill_gpu():
    cost = CostModel(QWEN, HW, SimConstants(), prefill_ep=1, decode_ep=1)
    assert QWEN.weight_bytes_per_param == 1.0
    assert cost.prefill_kv_capacity_bytes() > 65_536 * QWEN.kv_bytes_per_token
    assert cost.decode_kv_capacity_bytes() > 65_536 * QWEN.kv_bytes_per_token


def test_copy_submit_cost_is_switchable_and_checked():
    from traces.errors import InputError
    assert SimConstants().with_overrides({"copy_submit_s": 0}).copy_submit_s == 0.0
    with pytest.raises(InputError) as info:
        SimConstants().with_overrides({"copy_submit_s": -1e-6})
    assert info.value.field == "sim.copy_submit_s"


# ----- benchmarks/bench_fidelity.py --------------------------------------------------------------------------
def _bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_fidelity
    finally:
        sys.path.pop(0)
    return bench_fidelity


def test_fidelity_error_leaves_out_the_calibration_points(capsys):
    b = _bench()
    rows = [
        {"scenario": "fig7-ds660b", "preset": "paper-64k", "agents": 512, "system": "oracle", "ours": 2100.0,
         "paper": 2000.0, "error": 0.05, "calibration": True},
        {"scenario": "fig7-ds660b", "preset": "paper-32k", "agents": 512, "system": "oracle", "ours": 800.0,
         "paper": 1000.0, "error": -0.2, "calibration": False},
        {"scenario": "fig7-ds27b", "preset": "paper-32k", "agents": 512, "system": "basic", "ours": 1100.0,
         "paper": 1000.0, "error": 0.1, "calibration": False},
    ]
    b.report(rows, None)
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "out of sample" in ln)
    assert " 2 cells:" in line and line.endswith("15.0 %")
    assert "calibration points within 5 %: yes" in out
    assert b.mae(rows[1:]) == pytest.approx(0.15)


def test_fidelity_benchmark_refuses_bad_options_in_one_line(tmp_path):
    for args, word in ((["--agents", "0"], "--agents"), (["--models", "gpt"], "unknown model"),
                       (["--agents", "333", "--no-ablation", "--models", "ds660b"], "no point matches")):
        p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_fidelity.py"), *args, "--report-only",
                            "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        assert word in p.stderr and "Traceback" not in p.stderr
        assert not (tmp_path / "out").exists()
