"""The scenario's keys, stated once: names, kinds and bounds (DESIGN.md "Scenario")."""
from __future__ import annotations

from pathlib import Path

from engines.contract import BACKENDS, PLANNED_BACKENDS as UNAVAILABLE_BACKENDS
from engines.live.transport import TRANSPORTS
from traces.io import FORMATS
from traces.presets import PRESETS
from traces.synth import MAX_AGENTS, SynthParams

from harness.scenario.kinds import (Bool, FreeMapping, Int, ListOf, Mapping, Number, ScalarMapping, Str,
                                    _Kind)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SYSTEMS = {"sim": ["basic", "dualpath"], "live": ["basic", "dualpath"], "http": ["external"]}
ARRIVAL_MODES = ("offline", "poisson", "gamma", "constant", "trace")
RATE_MODES = ("poisson", "gamma", "constant")
SET_SOURCE = "--set"
MIN_WINDOW_S = 1e-3  # telemetry windows: every window is a row per link, so 1e-7 s would never end
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
NAME_DOC = "letters, digits, '.', '_', '-'"
URL_PATTERN = r"https?://\S+"
URL_DOC = "an http:// or https:// URL"
ENDPOINT_APIS = ("completions", "chat")  # POST {url}/v1/completions | {url}/v1/chat/completions
PROMPT_FORMS = ("token_ids", "text")

# Bounds on counts, sizes, rates and times: checked before anything runs, named in every message.
MAX_NODES = 1_024            # per role: 8,192 GPUs of 8-GPU nodes (the paper's largest run is 48P96D)
MAX_SEED = 2**32 - 1           # numpy seeds
MAX_RATE_APS = 1e6           # agents per second
MAX_TIME_S = 1e7             # any time in a scenario (~116 days)
MAX_DRAM_GB = 1e5            # a node's staging buffer
MAX_BLOCK_TOKENS = 1 << 20
MAX_CONCURRENCY = 1_000_000
MAX_PROBES = 1_000
# `sim:` constants whose extreme values make a run unbounded (a rate of 1e-300) or meaningless: (low, high),
# inclusive; a suffix rule covers every constant of that kind (engines/costmodel/constants.py).
SIM_BOUNDS = {"_efficiency": (1e-3, 100.0), "_mfu": (1e-3, 1.0), "_s": (0.0, 3_600.0),
              "_gb": (0.0, 10_000.0), "_bytes_s": (1e6, 1e15), "read_parallelism": (1, 4_096),
              "kv_block_tokens": (1, MAX_BLOCK_TOKENS), "de_z_factor": (1e-3, 1e3)}
SIM_MIN_POSITIVE_S = 1e-6    # a time the model divides by (compute_quota_s, ...) is at least 1 us


def sim_bounds(name: str) -> tuple[float, float] | None:
    """The (low, high) bound of a simulator constant, or None when it has none."""
    if name in SIM_BOUNDS:
        return SIM_BOUNDS[name]
    return next((b for suffix, b in SIM_BOUNDS.items() if suffix.startswith("_") and name.endswith(suffix)), None)


def _synth_fields() -> dict[str, _Kind]:
    fields: dict[str, _Kind] = {"preset": Str(choices=tuple(PRESETS)), "agents": Int(1, MAX_AGENTS),
                               "seed": Int(0, MAX_SEED)}
    for f in SynthParams.__dataclass_fields__.values():
        fields[f.name] = Number(integer=f.type in ("int", int))
    return fields


SCHEMA = Mapping({
    "name": Str(pattern=NAME_PATTERN, pattern_doc=f"a name of {NAME_DOC}"),
    "description": Str(),
    "backend": Str(choices=BACKENDS, unavailable=UNAVAILABLE_BACKENDS),
    "trace": Mapping({
        "synth": Mapping(_synth_fields(), required=("preset", "agents")),
        "path": Str(),
        "format": Str(choices=FORMATS),
        "block_size": Int(1, MAX_BLOCK_TOKENS),
        "agents": Int(1, MAX_AGENTS),
    }),
    "model": Str(),
    "hardware": Str(),
    "cluster": Mapping({"prefill_nodes": Int(1, MAX_NODES), "decode_nodes": Int(1, MAX_NODES),
                        "prefill_group_nodes": Int(1, MAX_NODES), "decode_group_nodes": Int(1, MAX_NODES),
                        "dram_buffer_gb": Number(gt=0, le=MAX_DRAM_GB)}),
    "systems": ListOf(Str(pattern=NAME_PATTERN, pattern_doc=f"a system name of {NAME_DOC}")),
    "arrival": Mapping({"mode": Str(choices=ARRIVAL_MODES), "rate_aps": Number(gt=0, le=MAX_RATE_APS),
                        "shape": Number(ge=1e-3, le=1e3), "time_scale": Number(ge=1e-6, le=1e6),
                        "seed": Int(0, MAX_SEED)}),
    "slo": Mapping({"ttft_s": Number(gt=0, le=MAX_TIME_S), "tpot_s": Number(gt=0, le=MAX_TIME_S),
                    "e2e_s": Number(gt=0, le=MAX_TIME_S), "percentile": Number(gt=0, lt=100)}),
    "telemetry": Mapping({"window_s": Number(ge=MIN_WINDOW_S, le=MAX_TIME_S)}),
    "seed": Int(0, MAX_SEED),
    "sim": ScalarMapping(),
    "endpoint": Mapping({"url": Str(pattern=URL_PATTERN, pattern_doc=URL_DOC), "model": Str(),
                         "api_key_env": Str(), "reset_url": Str(pattern=URL_PATTERN, pattern_doc=URL_DOC),
                         "timeout_s": Number(gt=0, le=MAX_TIME_S), "ignore_eos": Bool(), "token_ids": Bool(),
                         "prometheus": ListOf(Str(pattern=URL_PATTERN, pattern_doc=URL_DOC)),
                         "api": Str(choices=ENDPOINT_APIS), "prompt": Str(choices=PROMPT_FORMS),
                         "tokenizer": Str(), "headers": ScalarMapping(), "extra_body": FreeMapping(),
                         "stall_timeout_s": Number(gt=0, le=MAX_TIME_S)},
                        required=("url",)),
    "max_concurrency": Int(1, MAX_CONCURRENCY),
    "abort": Mapping({"max_consecutive_failures": Int(1, MAX_AGENTS), "window_requests": Int(1, MAX_AGENTS),
                      "max_failure_share": Number(gt=0), "min_ok_share": Number(ge=0)}),
    # the live cluster (backend live; the simulator accepts and ignores it)
    "live": Mapping({"transport": Str(choices=TRANSPORTS), "compute": Str(choices=("modeled", "torch")),
                     "time_scale": Number(gt=0, le=1e6), "storage_dir": Str(),
                     "kv_cache": Bool(),  # issue 17: false (YAML off) is the reference, every prompt recomputed
                     # line rates the live cluster paces (Gbps; x the sim's efficiencies, as a profile's are):
                     # from 125 kB/s (slower never ends a run) to 100 Gbps (beyond what one host moves)
                     "snic_gbps": Number(ge=1e-3, le=100), "cnic_gbps": Number(ge=1e-3, le=100)}),
    "capacity": Mapping({"rate_aps_start": Number(gt=0, le=MAX_RATE_APS), "rate_aps_max": Number(gt=0, le=MAX_RATE_APS),
                         "tolerance": Number(gt=0, le=1e3), "warmup_s": Number(ge=0, le=MAX_TIME_S),
                         "window_s": Number(ge=MIN_WINDOW_S, le=MAX_TIME_S), "max_probes": Int(1, MAX_PROBES),
                         "horizon_s": Number(gt=0, le=MAX_TIME_S), "lookback_s": Number(gt=0, le=MAX_TIME_S),
                         "max_horizon_s": Number(gt=0, le=MAX_TIME_S)}),
}, required=("name", "trace"))

