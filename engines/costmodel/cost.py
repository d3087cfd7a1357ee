"""The cost model (reference/cost-model.md 2): KV bytes, FLOPs and times of prefill and decode.

Prefill on a GPU runs data-parallel attention (the attention-layer part: projections, sparse or dense
attention, the DSA indexer) and expert-parallel FFN shared by the engine group; a group step takes the
slowest GPU's attention plus the shared FFN. Decode is a roofline per GPU (weights and KV reads vs
compute) plus per-layer expert-parallel all-to-all latency.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from engines.costmodel.constants import SimConstants
from engines.costmodel.profiles import HardwareSpec, ModelSpec


BATCH_SPEEDUP = ((1, 1.0), (2, 1.7), (3, 2.1), (5, 2.6), (10, 2.9), (20, 3.0))


def _sum_min(cached: int, new: int, cap: int) -> float:
    """sum over q = 1..new of min(cached + q, cap): keys a query attends to under top-k selection."""
    if new <= 0:
        return 0.0
    m = min(new, max(0, cap - cached))
    return m * cached + m * (m + 1) / 2 + (new - m) * cap


@functools.lru_cache(maxsize=4096)
def _batch_speed(requests: float) -> float:
    """CostModel.batch_speed, memoised (a handful of distinct batch sizes, asked several times a step)."""
    n = max(1.0, requests)
    pts = BATCH_SPEEDUP
    if n >= pts[-1][0]:
        return 1.0
    for (n0, s0), (n1, s1) in zip(pts, pts[1:]):
        if n <= n1:
            return (s0 + (s1 - s0) * (n - n0) / (n1 - n0)) / pts[-1][1]
    return 1.0


def _sum_ctx(cached: int, new: int) -> float:
    """sum over q = 1..new of (cached + q): causal attention pairs of a chunk."""
    return new * cached + new * (new + 1) / 2


@dataclass(frozen=True, eq=False)
class CostModel:
    model: ModelSpec
    hw: HardwareSpec
    k: SimConstants
    prefill_ep: int   # GPUs sharing the experts in a prefill engine group (1: no expert parallelism)
    decode_ep: int

    # ----- sizes -------------------------------------------------------------------------------
    @property
    def kv_bytes_per_token(self) -> int:
        return self.model.kv_bytes_per_token

    def kv_bytes(self, tokens: float) -> float:
        return tokens * self.model.kv_bytes_per_token

    @property
    def is_moe(self) -> bool:
        return self.model.moe_layers > 0 and self.model.expert_params > 0

    def weight_bytes_per_gpu(self, ep: int) -> float:
        m = self.model
        experts = m.expert_params / max(1, ep) if self.is_moe else 0.0
        return (m.shared_params + experts) * m.weight_bytes_per_param

    def prefill_kv_capacity_bytes(self) -> float:
        return max(0.0, self.hw.gpu.hbm_bytes - self.weight_bytes_per_gpu(self.prefill_ep)
                   - self.k.prefill_activation_gb * 1e9)

    def decode_kv_capacity_bytes(self) -> float:
        return max(0.0, self.hw.gpu.hbm_bytes - self.weight_bytes_per_gpu(self.decode_ep)
                   - self.k.decode_activation_gb * 1e9)

    # ----- FLOP rates ---------------------------------------------------------------------------
    @property
    def _linear_peak(self) -> float:
        g = self.hw.gpu
        return g.peak_flops_fp8 if self.model.weight_bytes_per_param <= 1.0 else g.peak_flops_bf16

    def _rate(self, peak: float, mfu: float) -> float:
        return peak * mfu * self.k.prefill_efficiency

    # ----- prefill ------------------------------------------------------------------------------
    def attention_flops(self, cached: int, new: int) -> tuple[float, float]:
        """(attention FLOPs, indexer FLOPs) of a chunk of `new` tokens on top of `cached`."""
        m = self.model
        if m.attention == "sparse-mla":
            pair = 2 * m.attn_heads * (m.attn_qk_dim + m.attn_v_dim) * m.layers
            idx_pair = 2 * m.indexer_heads * m.indexer_dim * m.layers
            return pair * _sum_min(cached, new, m.sparse_topk), idx_pair * _sum_ctx(cached, new)
        if m.attention == "mla":
            pair = 2 * m.attn_heads * (m.attn_qk_dim + m.attn_v_dim) * m.layers
            return pair * _sum_ctx(cached, new), 0.0
        pair = 4 * m.attn_heads * m.head_dim * m.layers  # GQA/MHA: QK^T and PV
        return pair * _sum_ctx(cached, new), 0.0

    @functools.cached_property
    def _prefill_attention_terms(self) -> tuple:
        """prefill_attention_s's constants, computed once: (top-k cap or None, attention FLOPs per key pair,
        indexer FLOPs per key pair, projection FLOPs per token, and the three rates they run at)."""
        m, g, k = self.model, self.hw.gpu, self.k
        if m.attention == "sparse-mla":
            cap = m.sparse_topk
            pair = 2 * m.attn_heads * (m.attn_qk_dim + m.attn_v_dim) * m.layers
            idx_pair = 2 * m.indexer_heads * m.indexer_dim * m.layers
        else:
            cap = None
            pair = (2 * m.attn_heads * (m.attn_qk_dim + m.attn_v_dim) * m.layers if m.attention == "mla"
                    else 4 * m.attn_heads * m.head_dim * m.layers)
            idx_pair = 0
        proj = 2 * m.proj_params_per_layer * m.layers
        return (cap, pair, idx_pair, proj, self._rate(g.peak_flops_bf16, k.attention_mfu),
                self._rate(g.peak_flops_fp8, k.indexer_mfu), self._rate(self._linear_peak, k.linear_mfu))

    def prefill_attention_s(self, cached: int, new: int) -> float:
        """Per-GPU attention-layer time of one chunk (projections + attention + indexer).

        `_sum_ctx` and `_sum_min` written inline, with the same arithmetic (so the same bits): this runs
        several times per PE per prefill step."""
        if new <= 0:
            return 0.0
        cap, pair, idx_pair, proj, r_attn, r_idx, r_lin = self._prefill_attention_terms
        ctx = new * cached + new * (new + 1) / 2
        if cap is None:
            return pair * ctx / r_attn + 0.0 / r_idx + proj * new / r_lin
        m = cap - cached
        if m < 0:
            m = 0
        if new < m:
            m = new
        return pair * (m * cached + m * (m + 1) / 2 + (new - m) * cap) / r_attn + idx_pair * ctx / r_idx \
            + proj * new / r_lin

    @property
    def ffn_flops_per_token(self) -> float:
        m = self.model
        return 2 * (m.moe_layers * m.ffn_active_params_per_moe_layer + m.dense_layers * m.ffn_params_per_dense_layer)

    def prefill_ffn_s(self, tokens: float, gpus: int) -> float:
        """FFN time of `tokens` spread over `gpus` GPUs (the expert-parallel group, or 1)."""
        return tokens * self.ffn_flops_per_token / (max(1, gpus) * self._rate(self._linear_peak, self.k.linear_mfu))

    @property
    def prefill_step_overhead_s(self) -> float:
        return self.model.layers * self.k.prefill_layer_overhead_s + self.k.prefill_step_overhead_s

    def batch_speed(self, requests: float) -> float:
        """Relative prefill throughput of a batch of this many requests (1.0 at saturation).

        reference/paper.md 1.5, Fig. 3 right (30K context + 300 appended tokens): bs 1, 2, 3, 5, 10, 20
        give 1.0, 1.7, 2.1, 2.6, 2.9, 3.0x the token throughput of bs 1; linear in between. Only the share
        `prefill_batch_gain` of the gain over a batch of one applies (1: all of it; 0: none)."""
        gain = self.k.prefill_batch_gain
        if gain == 1.0:
            return _batch_speed(requests)
        one = _batch_speed(1.0)
        return one + gain * (_batch_speed(requests) - one)

    def max_chunk(self, cached: int, new: int, budget_s: float) -> int:
        """Largest chunk (<= new tokens) whose attention time fits in budget_s.

        The time is a quadratic in the chunk on each side of the top-k cap, so the root of the right
        piece lands within a token or two of the answer; the answer itself is settled by
        prefill_attention_s (monotone in the chunk), as a binary search over it would settle it."""
        f = self.prefill_attention_s
        if new <= 0 or f(cached, 1) > budget_s:
            return 0
        if f(cached, new) <= budget_s:
            return new
        n = min(new - 1, max(1, self._chunk_estimate(cached, budget_s)))
        for _ in range(64):  # the estimate is off by float rounding only; the bound is a safety net
            if f(cached, n) > budget_s:
                n -= 1
            elif f(cached, n + 1) <= budget_s:
                n += 1
            else:
                return n
        lo, hi = 1, new - 1  # not reached in practice: fall back to bisection over [1, new - 1]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if f(cached, mid) <= budget_s:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _chunk_estimate(self, cached: int, budget_s: float) -> int:
        """Real root n of attention time(cached, n) = budget_s, with the time written as a n^2 + b n + c."""
        cap, pair, idx_pair, proj, r_attn, r_idx, r_lin = self._prefill_attention_terms
        A, B, P = pair / r_attn, idx_pair / r_idx, proj / r_lin
        half = cached + 0.5  # sum_ctx(cached, n) = n^2 / 2 + n (cached + 1/2)
        if cap is None:
            a, b, c = A / 2, A * half + P, 0.0
        else:
            m = max(0, cap - cached)  # chunk tokens before the cap binds
            if m > 0 and self.prefill_attention_s(cached, m) > budget_s:
                a, b, c = (A + B) / 2, (A + B) * half + P, 0.0
            else:  # sum_min = m cached + m (m + 1) / 2 + (n - m) cap
                a, b, c = B / 2, A * cap + B * half + P, A * (m * cached + m * (m + 1) / 2 - m * cap)
        rhs = budget_s - c
        if a <= 0:
            return int(rhs / b) if b > 0 else 0
        return int((-b + (b * b + 4 * a * rhs) ** 0.5) / (2 * a))

    def gpu_prompt_tokens_per_s(self, cached: float, new: float) -> float:
        """Prompt tokens (hit included) one GPU processes per second on requests of this shape, in
        saturated batches."""
        t = self.prefill_attention_s(int(cached), max(1, int(new))) + self.prefill_ffn_s(max(1.0, new), 1)
        return (cached + new) / t

    # ----- decode -------------------------------------------------------------------------------
    def decode_kv_read_bytes(self, ctx: float, min_ctx_topk: float) -> float:
        """KV bytes one decode step reads for sequences with total context ctx (sum over the batch).

        `min_ctx_topk` is the batch's sum of min(ctx_i, top-k) (sparse attention reads only the
        selected keys; the indexer scans every key)."""
        m = self.model
        if m.attention == "sparse-mla":
            idx_bytes = m.indexer_dim + 4
            return m.layers * ((m.kv_bytes_per_token_layer - idx_bytes) * min_ctx_topk + idx_bytes * ctx)
        return m.layers * m.kv_bytes_per_token_layer * ctx

    def decode_step_s(self, batch: int, ctx: float, min_ctx_topk: float) -> float:
        """Time of one decode iteration on a GPU holding `batch` sequences (roofline, see module doc)."""
        if batch <= 0:
            return 0.0
        c = self._decode_coefficients
        memory = c[0] + c[1] * min_ctx_topk + c[2] * ctx
        compute = c[3] * batch + c[4] * min_ctx_topk + c[5] * ctx
        return max(memory, compute) + c[6] + batch * c[7]

    @functools.cached_property
    def _decode_coefficients(self) -> tuple[float, ...]:
        """decode_step_s as linear terms in (batch, sum of min(ctx, top-k), sum of ctx), computed once."""
        m, g, k = self.model, self.hw.gpu, self.k
        w_rate, kv_rate = g.hbm_bw_bytes_s * k.decode_weight_bw_efficiency, g.hbm_bw_bytes_s * k.decode_kv_bw_efficiency
        kv_min = self.decode_kv_read_bytes(0.0, 1.0)
        kv_ctx = self.decode_kv_read_bytes(1.0, 0.0)
        attn_min, attn_ctx = self._decode_attention_flops(0.0, 1.0), self._decode_attention_flops(1.0, 0.0)
        peak = self._linear_peak * k.decode_mfu
        expert_parallel = self.is_moe and self.decode_ep > 1
        ep = m.moe_layers * k.ep_layer_latency_s if expert_parallel else 0.0
        per_seq = k.decode_per_seq_s + (self.a2a_bytes_per_token / k.ep_a2a_bytes_s if expert_parallel else 0.0)
        return (self.weight_bytes_per_gpu(self.decode_ep) / w_rate, kv_min / kv_rate, kv_ctx / kv_rate,
                2 * m.linear_params_per_token / peak, sum(attn_min) / peak, sum(attn_ctx) / peak,
                ep + k.decode_step_overhead_s, per_seq)

    @property
    def a2a_bytes_per_token(self) -> float:
        """Expert-parallel all-to-all bytes one token moves per step: to each of its routed experts,
        dispatch (FP8, 1 B) and combine (BF16, 2 B) of the hidden state, in every MoE layer."""
        m = self.model
        return m.moe_layers * m.hidden_size * 3 * m.experts_per_token

    def _decode_attention_flops(self, ctx: float, min_ctx_topk: float) -> tuple[float, float]:
        m = self.model
        if m.attention == "sparse-mla":
            return (2 * m.attn_heads * (m.attn_qk_dim + m.attn_v_dim) * m.layers * min_ctx_topk,
                    2 * m.indexer_heads * m.indexer_dim * m.layers * ctx)
        if m.attention == "mla":
            return 2 * m.attn_heads * (m.attn_qk_dim + m.attn_v_dim) * m.layers * ctx, 0.0
        return 4 * m.attn_heads * m.head_dim * m.layers * ctx, 0.0

    def min_ctx_topk(self, ctx: float) -> float:
        return min(ctx, self.model.sparse_topk) if self.model.attention == "sparse-mla" else ctx

    # ----- links --------------------------------------------------------------------------------
    @property
    def snic_rate(self) -> float:
        return self.hw.snic_bytes_s * self.k.snic_efficiency

    @property
    def cnic_rate(self) -> float:
        return self.hw.cnic_bytes_s * self.k.cnic_efficiency

    def alpha_tokens(self) -> float:
        """The scheduler's alpha: tokens one node reads from storage in alpha_read_s."""
        return self.snic_rate * self.k.alpha_read_s / self.kv_bytes_per_token

    def beta_tokens(self, cached_mean: float, new_mean: float) -> float:
        """The scheduler's beta: tokens one GPU processes in beta_compute_s (requests of the mean shape)."""
        return self.gpu_prompt_tokens_per_s(cached_mean, new_mean) * self.k.beta_compute_s
