"""engines/costmodel: profiles, constants and the cost model, against the figures of reference/cost-model.md
and the paper (reference/paper.md 1.6, 6), and the model's monotonicity and limits."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings, strategies as st

from engines.costmodel import CostModel, SimConstants, hardware_spec, model_spec
from engines.costmodel.profiles import REPO_ROOT
from traces.errors import InputError

DS = "deepseek-v3.2-660b"
DS27 = "deepseek-27b"
QWEN = "qwen2.5-32b"


@pytest.fixture(scope="module")
def ds():
    """DS 660B on the paper's nodes, 2P4D: prefill EP 16, decode EP 32."""
    return CostModel(model_spec(DS), hardware_spec("hopper-paper"), SimConstants(), prefill_ep=16, decode_ep=32)


@pytest.fixture(scope="module")
def qwen():
    return CostModel(model_spec(QWEN), hardware_spec("hopper-paper"), SimConstants(), prefill_ep=1, decode_ep=1)


@pytest.fixture(scope="module")
def ds27():
    return CostModel(model_spec(DS27), hardware_spec("hopper-paper"), SimConstants(), prefill_ep=8, decode_ep=8)


# ----- profiles ----------------------------------------------------------------------------------------------
def test_every_profile_in_the_repository_loads():
    models = sorted(p.stem for p in (REPO_ROOT / "scenarios" / "models").glob("*.yaml"))
    hardware = sorted(p.stem for p in (REPO_ROOT / "scenarios" / "hardware").glob("*.yaml"))
    assert {DS, DS27, QWEN} <= set(models)
    assert "hopper-paper" in hardware
    for name in models:
        assert model_spec(name).name == name
    for name in hardware:
        assert hardware_spec(name).name == name


def test_profile_by_path_equals_profile_by_name():
    path = REPO_ROOT / "scenarios" / "models" / f"{DS}.yaml"
    assert model_spec(str(path)) == model_spec(DS)


def test_unknown_profile_names_the_available_ones():
    with pytest.raises(InputError) as info:
        model_spec("deepseek-v4")
    assert info.value.field == "model"
    assert DS in str(info.value)
    with pytest.raises(InputError) as info:
        hardware_spec("tpu")
    assert "hopper-paper" in str(info.value)


def test_profile_with_unknown_key_names_it(tmp_path):
    text = (REPO_ROOT / "scenarios" / "hardware" / "hopper-paper.yaml").read_text() + "snic_gpbs: 400\n"
    path = tmp_path / "hw.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        hardware_spec(str(path))
    assert info.value.field == "snic_gpbs" and info.value.path == str(path)


def test_paper_hardware():
    hw = hardware_spec("hopper-paper")
    assert hw.gpus_per_node == 8
    assert hw.snic_bytes_s == pytest.approx(50e9)   # one 400 Gbps storage NIC per node
    assert hw.cnic_bytes_s == pytest.approx(50e9)   # one 400 Gbps compute NIC per GPU
    assert hardware_spec("hopper-2snic").snic_bytes_s == pytest.approx(100e9)


# ----- KV bytes ----------------------------------------------------------------------------------------------
def test_kv_bytes_per_token_known_figures():
    assert model_spec(DS).kv_bytes_per_token == 61 * 788 == 48_068   # FP8 MLA 656 + indexer 132 per layer
    assert model_spec(QWEN).kv_bytes_per_token == 2 * 64 * 8 * 128 * 2 == 262_144
    assert model_spec(DS27).kv_bytes_per_token == 30 * 724


def test_kv_bytes_is_linear(ds):
    assert ds.kv_bytes_per_token == 48_068
    assert ds.kv_bytes(0) == 0
    assert ds.kv_bytes(1000) == 1000 * 48_068


# ----- FLOPs -------------------------------------------------------------------------------------------------
def test_linear_flops_per_token_ds():
    m = model_spec(DS)
    assert 2 * m.linear_params_per_token / 1e9 == pytest.approx(73.1, rel=0.01)  # incl. indexer projections


def test_linear_flops_per_token_qwen():
    # reference/cost-model.md 2.2: N_act = 31.2 B (LM head not counted): 62.4 GFLOP per token
    assert 2 * model_spec(QWEN).linear_params_per_token / 1e9 == pytest.approx(62.4, rel=0.02)


def test_sparse_attention_and_indexer_flops_at_32k(ds):
    attn, idx = ds.attention_flops(32_700, 1)
    assert attn / 1e9 == pytest.approx(34.8, rel=0.005)   # 2 x 128 x (576 + 512) x 61 x 2048
    assert idx / 1e9 == pytest.approx(32.7, rel=0.005)    # 2 x 64 x 128 x 61 x 32.7K


def test_gqa_attention_flops_are_exact_causal_pairs(qwen):
    per_pair = 4 * 40 * 128 * 64   # 1.31 MFLOP per q.k pair
    for cached, new in [(0, 1), (0, 100), (5000, 429), (30000, 1)]:
        attn, idx = qwen.attention_flops(cached, new)
        assert idx == 0
        assert attn == pytest.approx(per_pair * (new * cached + new * (new + 1) / 2))


def test_sparse_attention_stops_growing_after_top_k_while_the_indexer_keeps_growing(ds):
    topk = model_spec(DS).sparse_topk
    assert topk == 2048
    below = [ds.attention_flops(c, 1)[0] for c in (0, 1000, 2000)]
    assert below[0] < below[1] < below[2]
    after = [ds.attention_flops(c, 1) for c in (topk, 4000, 32_000, 64_000)]
    assert len({a for a, _ in after}) == 1                      # attention per token is flat after top-k
    idx = [i for _, i in after]
    assert all(a < b for a, b in zip(idx, idx[1:]))             # the indexer scans every key
    assert idx[-1] / idx[1] == pytest.approx(64_001 / 4001)


@pytest.mark.parametrize("name", [DS, DS27, QWEN])
def test_attention_flops_add_up_over_chunks(name, ds, ds27, qwen):
    """Chunked prefill costs what one pass costs: F(c, a + b) = F(c, a) + F(c + a, b)."""
    cost = {DS: ds, DS27: ds27, QWEN: qwen}[name]
    for cached, a, b in [(0, 100, 200), (1000, 500, 3000), (2040, 5, 20), (30000, 429, 1)]:
        whole = cost.attention_flops(cached, a + b)
        parts = [x + y for x, y in zip(cost.attention_flops(cached, a), cost.attention_flops(cached + a, b))]
        assert whole == pytest.approx(parts, rel=1e-12)


# ----- prefill times -----------------------------------------------------------------------------------------
CACHED = (0, 1000, 2048, 8000, 32_000, 64_000)
NEW = (1, 10, 100, 429, 2000, 8000)


@pytest.mark.parametrize("name", [DS, DS27, QWEN])
def test_prefill_attention_time_is_monotone(name, ds, ds27, qwen):
    cost = {DS: ds, DS27: ds27, QWEN: qwen}[name]
    for new in NEW:
        times = [cost.prefill_attention_s(c, new) for c in CACHED]
        assert all(a <= b for a, b in zip(times, times[1:])), (new, times)
    for cached in CACHED:
        times = [cost.prefill_attention_s(cached, n) for n in NEW]
        assert all(a < b for a, b in zip(times, times[1:])), (cached, times)
    assert cost.prefill_attention_s(5000, 0) == 0


def test_more_context_costs_more_per_new_token_even_after_top_k(ds):
    """The indexer keeps growing: at 64K a new token costs more than at 32K (strictly)."""
    assert ds.prefill_attention_s(64_000, 429) > ds.prefill_attention_s(32_000, 429)


def test_prefill_ffn_time_linear_in_tokens_inverse_in_gpus(ds):
    t = ds.prefill_ffn_s(1000, 16)
    assert t > 0
    assert ds.prefill_ffn_s(2000, 16) == pytest.approx(2 * t)
    assert ds.prefill_ffn_s(1000, 8) == pytest.approx(2 * t)
    assert ds.prefill_ffn_s(1000, 0) == pytest.approx(ds.prefill_ffn_s(1000, 1))
    assert ds.prefill_ffn_s(0, 16) == 0


@pytest.mark.parametrize("cached,new,budget", [
    (0, 5000, 0.3), (32_000, 5000, 0.3), (32_000, 5000, 0.05), (64_000, 429, 0.3), (2000, 100_000, 1.0),
    (10_000, 1, 1.0), (10_000, 10, 0.0),
])
def test_max_chunk_is_the_largest_chunk_within_the_budget(ds, cached, new, budget):
    k = ds.max_chunk(cached, new, budget)
    assert 0 <= k <= new
    if k > 0:
        assert ds.prefill_attention_s(cached, k) <= budget
    if k < new:
        assert ds.prefill_attention_s(cached, k + 1) > budget


def _bisect_chunk(cost, cached, new, budget):
    lo, hi = 0, new
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost.prefill_attention_s(cached, mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from([DS, DS27, QWEN]), cached=st.integers(0, 200_000), new=st.integers(0, 200_000),
       budget=st.floats(-1.0, 30.0, allow_nan=False))
def test_max_chunk_equals_a_bisection_of_the_attention_time(model, cached, new, budget):
    """max_chunk solves the time's quadratic pieces instead of bisecting: the same chunk, to the token."""
    cost = CostModel(model_spec(model), hardware_spec("hopper-paper"), SimConstants(), prefill_ep=8, decode_ep=8)
    assert cost.max_chunk(cached, new, budget) == _bisect_chunk(cost, cached, new, budget)


def test_max_chunk_limits(ds):
    assert ds.max_chunk(32_000, 500, 1e9) == 500           # everything fits
    assert ds.max_chunk(32_000, 500, 0.0) == 0             # nothing fits
    assert ds.max_chunk(32_000, 0, 1.0) == 0
    # a bigger budget never gives a smaller chunk; more context never a bigger one
    budgets = [0.01, 0.05, 0.1, 0.3, 1.0]
    chunks = [ds.max_chunk(32_000, 50_000, b) for b in budgets]
    assert chunks == sorted(chunks) and chunks[0] < chunks[-1]
    contexts = [0, 2048, 16_000, 64_000]
    chunks = [ds.max_chunk(c, 50_000, 0.3) for c in contexts]
    assert chunks == sorted(chunks, reverse=True)


def test_batch_speed_follows_paper_fig3(ds):
    """reference/paper.md 1.5: bs 1, 2, 3, 5, 10, 20 give 1.0, 1.7, 2.1, 2.6, 2.9, 3.0x; flat after."""
    speed = ds.batch_speed
    for n, rel in [(2, 1.7), (3, 2.1), (5, 2.6), (10, 2.9), (20, 3.0)]:
        assert speed(n) / speed(1) == pytest.approx(rel, rel=1e-9)
    assert speed(20) == speed(100) == 1.0
    values = [speed(n) for n in (0, 1, 1.5, 2, 4, 7, 12, 19, 20, 50)]
    assert all(0 < v <= 1 for v in values)
    assert values == sorted(values)


@pytest.mark.parametrize("gain", [0.0, 0.5])
def test_prefill_batch_gain_keeps_that_share_of_the_speed_up(ds, gain):
    """sim.prefill_batch_gain: 0 computes every request at a batch of one's speed (the live torch PE runs
    them one by one), 0.5 keeps half of Fig. 3's gain over a batch of one."""
    other = CostModel(ds.model, ds.hw, ds.k.with_overrides({"prefill_batch_gain": gain}), prefill_ep=16, decode_ep=32)
    one = ds.batch_speed(1)
    for n in (1, 2, 5, 20, 100):
        assert other.batch_speed(n) == pytest.approx(one + gain * (ds.batch_speed(n) - one), rel=1e-12)
    assert (other.batch_speed(20) == one) == (gain == 0.0)


# ----- decode ------------------------------------------------------------------------------------------------
def test_decode_step_on_the_paper_hardware_at_low_load(ds):
    """Decode EP 32 (4 nodes), a few sequences of ~33K context: the paper's TPOT ~31 ms at low load."""
    ctx = 33_000
    for batch in (1, 2, 4):
        step = ds.decode_step_s(batch, batch * ctx, batch * ds.min_ctx_topk(ctx))
        assert 0.028 <= step <= 0.036, (batch, step)


def test_decode_step_grows_with_the_batch_as_the_paper_tpot(ds):
    """Near capacity the paper's TPOT rises to 39-49 ms (DS 660B at 0.4-0.45 APS); 16-24 sequences of ~33K
    context per DE (the HBM holds ~23) step in 40-65 ms, the per-sequence all-to-all fitted at Oracle 4,096."""
    ctx = 33_000
    for batch in (16, 24):
        step = ds.decode_step_s(batch, batch * ctx, batch * ds.min_ctx_topk(ctx))
        assert 0.040 <= step <= 0.065, (batch, step)


def test_decode_step_is_monotone(ds, qwen):
    for cost in (ds, qwen):
        prev = 0.0
        for batch in range(1, 65, 7):
            step = cost.decode_step_s(batch, batch * 20_000, batch * cost.min_ctx_topk(20_000))
            assert step > prev
            prev = step
        steps = [cost.decode_step_s(8, 8 * c, 8 * cost.min_ctx_topk(c)) for c in (1000, 2048, 10_000, 60_000)]
        assert steps == sorted(steps)
    assert ds.decode_step_s(0, 0, 0) == 0


def test_decode_step_grows_with_context_even_after_top_k(ds):
    """DSA: the indexer reads every key, so more context always costs more (memory-bound decode)."""
    a = ds.decode_step_s(64, 64 * 20_000, 64 * 2048)
    b = ds.decode_step_s(64, 64 * 60_000, 64 * 2048)
    assert b > a


def test_decode_kv_read_bytes(ds, qwen):
    # DSA: the selected keys' MLA cache (656 B) plus every key's indexer entry (132 B), per layer
    assert ds.decode_kv_read_bytes(30_000, 2048) == pytest.approx(61 * (656 * 2048 + 132 * 30_000))
    assert qwen.decode_kv_read_bytes(30_000, 30_000) == pytest.approx(262_144 * 30_000)
    assert ds.min_ctx_topk(1000) == 1000 and ds.min_ctx_topk(50_000) == 2048
    assert qwen.min_ctx_topk(50_000) == 50_000


def test_decode_fewer_experts_per_gpu_is_faster():
    m, hw = model_spec(DS), hardware_spec("hopper-paper")
    ep16 = CostModel(m, hw, SimConstants(), 16, 16).decode_step_s(4, 4 * 30_000, 4 * 2048)
    ep32 = CostModel(m, hw, SimConstants(), 16, 32).decode_step_s(4, 4 * 30_000, 4 * 2048)
    assert ep32 < ep16


# ----- capacities and scheduler constants ---------------------------------------------------------------------
def test_hbm_capacities(ds):
    m, hw, k = model_spec(DS), hardware_spec("hopper-paper"), SimConstants()
    weights32 = (m.shared_params + m.expert_params / 32) * m.weight_bytes_per_param
    assert ds.decode_kv_capacity_bytes() == pytest.approx(hw.gpu.hbm_bytes - weights32 - k.decode_activation_gb * 1e9)
    weights16 = (m.shared_params + m.expert_params / 16) * m.weight_bytes_per_param
    assert ds.prefill_kv_capacity_bytes() == pytest.approx(
        hw.gpu.hbm_bytes - weights16 - k.prefill_activation_gb * 1e9)
    assert 10e9 < ds.decode_kv_capacity_bytes() < 60e9
    # 671 B FP8 parameters do not fit on one node's 8 x 80 GB: no room for KV (clamped at 0, never negative)
    one_node = CostModel(m, hw, SimConstants(), 8, 8)
    assert one_node.decode_kv_capacity_bytes() == 0 and one_node.prefill_kv_capacity_bytes() == 0


def test_alpha_is_tokens_readable_in_three_seconds(ds):
    k = SimConstants()
    assert k.alpha_read_s == 3.0
    want = 50e9 * k.snic_efficiency * 3.0 / 48_068
    assert ds.alpha_tokens() == pytest.approx(want)
    assert ds.snic_rate == pytest.approx(50e9 * k.snic_efficiency)
    assert ds.cnic_rate == pytest.approx(50e9 * k.cnic_efficiency)


def test_beta_is_tokens_one_gpu_processes_in_five_seconds(ds):
    k = SimConstants()
    assert k.beta_compute_s == 5.0
    beta = ds.beta_tokens(32_000, 429)
    assert beta == pytest.approx(5.0 * ds.gpu_prompt_tokens_per_s(32_000, 429))
    double = CostModel(ds.model, ds.hw, k.with_overrides({"beta_compute_s": 10.0}), 16, 32)
    assert double.beta_tokens(32_000, 429) == pytest.approx(2 * beta)
    # beta counts prompt tokens (hits included): several ~32K-token requests per PE
    assert 32_429 < beta


def test_gpu_prompt_tokens_per_s_falls_with_more_new_tokens_per_prompt(ds):
    """A prompt that is mostly hits needs less compute per prompt token."""
    assert ds.gpu_prompt_tokens_per_s(32_000, 429) > ds.gpu_prompt_tokens_per_s(16_000, 16_429)


# ----- constants ---------------------------------------------------------------------------------------------
class TestSimConstants:
    def test_defaults_from_the_paper(self):
        k = SimConstants()
        assert (k.compute_quota_s, k.alpha_read_s, k.beta_compute_s, k.de_z_factor) == (0.3, 3.0, 5.0, 1.05)
        assert set(k.as_dict()) == set(SimConstants.names())

    def test_overrides(self):
        k = SimConstants().with_overrides({"snic_efficiency": 0.5, "read_parallelism": 4.0})
        assert k.snic_efficiency == 0.5
        assert k.read_parallelism == 4 and isinstance(k.read_parallelism, int)
        assert isinstance(SimConstants().with_overrides({"compute_quota_s": 1}).compute_quota_s, float)
        others = {n: v for n, v in k.as_dict().items() if n not in ("snic_efficiency", "read_parallelism")}
        assert others == {n: v for n, v in SimConstants().as_dict().items() if n in others}

    def test_no_overrides_is_the_same_object(self):
        k = SimConstants()
        assert k.with_overrides(None) is k and k.with_overrides({}) is k

    def test_frozen(self):
        with pytest.raises(dataclasses.FrozenInstanceError):
            SimConstants().snic_efficiency = 1.0

    @pytest.mark.parametrize("key,value", [("snic_eficiency", 0.5), ("", 1)])
    def test_unknown_key(self, key, value):
        with pytest.raises(InputError) as info:
            SimConstants().with_overrides({key: value})
        assert info.value.field == f"sim.{key}"
        assert "snic_efficiency" in str(info.value)  # lists what is allowed

    @pytest.mark.parametrize("value", [-0.1, "0.5", True, None, [1]])
    def test_bad_value(self, value):
        with pytest.raises(InputError) as info:
            SimConstants().with_overrides({"snic_efficiency": value})
        assert info.value.field == "sim.snic_efficiency"

    @pytest.mark.parametrize("key", ["snic_efficiency", "cnic_efficiency", "prefill_efficiency", "attention_mfu",
                                     "decode_mfu", "read_parallelism"])
    def test_zero_where_the_model_divides_is_rejected(self, key):
        with pytest.raises(InputError):
            SimConstants().with_overrides({key: 0})


def test_fractional_value_for_an_integer_constant_is_rejected():
    with pytest.raises(InputError):
        SimConstants().with_overrides({"read_parallelism": 2.5})


def test_cost_model_is_built_from_constants(ds):
    """Every constant override reaches the model (no cached values from the defaults)."""
    half = SimConstants().prefill_efficiency / 2
    slow = CostModel(ds.model, ds.hw, SimConstants().with_overrides({"prefill_efficiency": half}), 16, 32)
    for cached, new in itertools.product((0, 32_000), (1, 429)):
        assert slow.prefill_attention_s(cached, new) == pytest.approx(2 * ds.prefill_attention_s(cached, new))
    faster = CostModel(ds.model, ds.hw, SimConstants().with_overrides({"decode_step_overhead_s": 0.0}), 16, 32)
    assert faster.decode_step_s(1, 30_000, 2048) == pytest.approx(
        ds.decode_step_s(1, 30_000, 2048) - SimConstants().decode_step_overhead_s)
