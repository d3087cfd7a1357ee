"""The scenario's keys, stated once: names, kinds and bounds (DESIGN.md "Scenario")."""
from __future__ import annotations

from pathlib import Path

from engines.contract import BACKENDS, PLANNED_BACKENDS as UNAVAILABLE_BACKENDS
from traces.io import FORMATS
from traces.presets import PRESETS
from traces.synth import SynthParams

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


def _synth_fields() -> dict[str, _Kind]:
    fields: dict[str, _Kind] = {"preset": Str(choices=tuple(PRESETS)), "agents": Int(1), "seed": Int(0)}
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
        "block_size": Int(1),
        "agents": Int(1),
    }),
    "model": Str(),
    "hardware": Str(),
    "cluster": Mapping({"prefill_nodes": Int(1), "decode_nodes": Int(1), "prefill_group_nodes": Int(1),
                        "decode_group_nodes": Int(1), "dram_buffer_gb": Number(gt=0)}),
    "systems": ListOf(Str(pattern=NAME_PATTERN, pattern_doc=f"a system name of {NAME_DOC}")),
    "arrival": Mapping({"mode": Str(choices=ARRIVAL_MODES), "rate_aps": Number(gt=0), "shape": Number(gt=0),
                        "time_scale": Number(gt=0), "seed": Int(0)}),
    "slo": Mapping({"ttft_s": Number(gt=0), "tpot_s": Number(gt=0), "e2e_s": Number(gt=0),
                    "percentile": Number(gt=0, lt=100)}),
    "telemetry": Mapping({"window_s": Number(ge=MIN_WINDOW_S)}),
    "seed": Int(0),
    "sim": ScalarMapping(),
    "endpoint": Mapping({"url": Str(pattern=URL_PATTERN, pattern_doc=URL_DOC), "model": Str(),
                         "api_key_env": Str(), "reset_url": Str(pattern=URL_PATTERN, pattern_doc=URL_DOC),
                         "timeout_s": Number(gt=0), "ignore_eos": Bool(), "token_ids": Bool(),
                         "prometheus": ListOf(Str(pattern=URL_PATTERN, pattern_doc=URL_DOC)),
                         "api": Str(choices=ENDPOINT_APIS), "prompt": Str(choices=PROMPT_FORMS),
                         "tokenizer": Str(), "headers": ScalarMapping(), "extra_body": FreeMapping(),
                         "stall_timeout_s": Number(gt=0)},
                        required=("url",)),
    "max_concurrency": Int(1),
    "abort": Mapping({"max_consecutive_failures": Int(1), "window_requests": Int(1),
                      "max_failure_share": Number(gt=0), "min_ok_share": Number(ge=0)}),
    "capacity": Mapping({"rate_aps_start": Number(gt=0), "rate_aps_max": Number(gt=0),
                         "tolerance": Number(gt=0), "warmup_s": Number(ge=0), "window_s": Number(gt=0),
                         "max_probes": Int(1), "horizon_s": Number(gt=0), "lookback_s": Number(gt=0),
                         "max_horizon_s": Number(gt=0)}),
}, required=("name", "trace"))

