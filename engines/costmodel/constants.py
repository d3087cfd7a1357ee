"""Constants of the cost model and the scheduler, each with its source.

Sources: [paper] stated in the paper; [spec] a spec sheet or published figure; [prior] a common
value from reference/cost-model.md (BLIS, AIConfigurator, Mooncake, 3FS); [fitted] fitted on the
calibration points only (Oracle and Basic JCT, DS 660B, 64K, 2P4D, 512 and 4,096 agents; see
README "Calibration" and benchmarks/calibrate.py); [assumed] our choice where nothing is published.
A scenario's `sim:` mapping overrides any of them by name.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from engines.policy import constants as policy
from traces.errors import InputError


# Constants that may be 0 (latencies, overheads, reserves); every other one is a rate, a share or a
# count the model divides by, and must be > 0.
MAY_BE_ZERO = frozenset({"prefill_batch_gain", "read_overhead_s", "copy_submit_s", "prefill_layer_overhead_s", "prefill_step_overhead_s",
                         "prefill_activation_gb", "decode_step_overhead_s", "decode_per_seq_s", "ep_layer_latency_s",
                         "decode_activation_gb"})


@dataclass(frozen=True)
class SimConstants:
    # ----- storage and links -----
    snic_efficiency: float = 0.557       # [fitted] share of SNIC line rate a KV read achieves (basic, 4,096)
    read_overhead_s: float = 0.002       # [prior] fixed latency of a request's read (fit needs ~0.3 s: README)
    read_parallelism: int = 8            # [assumed] concurrent reads per node sharing its SNIC
    cnic_efficiency: float = 0.8         # [prior] cost-model.md 2.4: eta_CNIC 0.8
    copy_submit_s: float = 6e-6          # [paper] 5.2: a cudaMemcpyAsync submission takes 5-7 us; whole-request
                                         # prefill submits one per KV block per layer before computing (0: off)
    # ----- prefill compute (fractions of peak) -----
    prefill_efficiency: float = 1.0      # [prior] scales the three MFUs below together (1 = the priors)
    linear_mfu: float = 0.7              # [prior] FP8 GEMM MFU for >= 512-token batches (AIC/BLIS 0.6-0.75)
    attention_mfu: float = 0.5           # [prior] BF16 attention kernels (FlashMLA) at long context
    indexer_mfu: float = 0.5             # [prior] FP8 indexer scoring kernels
    prefill_layer_overhead_s: float = 30e-6   # [prior] BLIS t_layer ~30 us
    prefill_step_overhead_s: float = 0.2e-3   # [prior] BLIS t_step 0.1-0.2 ms
    prefill_activation_gb: float = 6.0   # [assumed] HBM a prefill engine keeps for activations
    prefill_batch_gain: float = 1.0      # [paper] 1.5, Fig. 3: the share of a batch's speed-up over a batch of
                                         # one that applies (CostModel.batch_speed); 0: every request computes
                                         # at a batch of one's speed, as the live torch PE runs them one by one
    # ----- decode compute -----
    decode_weight_bw_efficiency: float = 0.8   # [prior] cost-model.md 2.2: HBM eta 0.8
    decode_kv_bw_efficiency: float = 0.5       # [prior] BLIS beta2b ~1.9: KV reads at ~half of peak
    decode_mfu: float = 0.3                    # [prior] BLIS MFU_dc ~0.3
    decode_step_overhead_s: float = 0.2e-3     # [prior] BLIS t_step
    decode_per_seq_s: float = 4e-6             # [prior] BLIS t_req ~4 us
    ep_a2a_bytes_s: float = 10.0e9             # [fitted] decode expert-parallel all-to-all rate per GPU (oracle, 4,096)
    ep_layer_latency_s: float = 0.25e-3        # [spec] DeepEP low-latency dispatch+combine per MoE layer
    decode_activation_gb: float = 4.0          # [assumed]
    # ----- scheduler (reference/paper.md 4) -----
    compute_quota_s: float = policy.COMPUTE_QUOTA_S    # engines/policy/constants.py (with their sources)
    alpha_read_s: float = policy.ALPHA_READ_S
    beta_compute_s: float = policy.BETA_COMPUTE_S
    de_z_factor: float = policy.DE_Z_FACTOR
    kv_block_tokens: int = 64            # [paper] persistence granularity ("e.g., 64 tokens")
    hit_granularity_tokens: int = 1      # [assumed] a round's hit rounded down to a multiple of this: 1 = the
                                         # trace's context, token-exact; the live cluster's store keeps whole
                                         # Full Blocks only, so its scenarios set kv_block_tokens (64)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_overrides(self, overrides: dict | None) -> "SimConstants":
        if not overrides:
            return self
        clean = {}
        types = {f.name: f.type for f in fields(self)}
        for key, value in overrides.items():
            if key not in types:
                raise InputError(f"unknown simulator constant (allowed: {', '.join(types)})", field=f"sim.{key}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"expected a number, got {value!r}", field=f"sim.{key}")
            if key in MAY_BE_ZERO:
                if value < 0:
                    raise InputError(f"expected a number >= 0, got {value!r}", field=f"sim.{key}")
            elif value <= 0:
                raise InputError(f"expected a number > 0, got {value!r}", field=f"sim.{key}")
            if types[key] == "int" and value != int(value):
                raise InputError(f"expected a whole number, got {value!r}", field=f"sim.{key}")
            clean[key] = int(value) if types[key] == "int" else float(value)
        return replace(self, **clean)

    def as_dict(self) -> dict:
        return asdict(self)
