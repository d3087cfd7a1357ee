"""The paper's evaluation datasets (reference/paper.md §5.2, Table 2) as generator presets, and `smoke`.

Each preset states Table 2's turns, append and gen means as targets (the generator realises them) and
its maximum context length; the shape parameters are the defaults of `SynthParams`, shared by all three
presets: `full_fraction` and `first_append_mean` fitted once so that Table 2's total and context means
come out as well; `turns_max_ratio`, the tail of turns, fitted on the simulator's calibration point
(README, "Calibration"). `TABLE2` keeps all five published means for the checks.
"""
from __future__ import annotations

from traces.errors import InputError
from traces.synth import SynthParams

TABLE2 = {  # turns, append, gen, total, context
    "paper-32k": (60, 608, 148, 28_639, 17_183),
    "paper-48k": (106, 474, 172, 42_607, 25_120),
    "paper-64k": (157, 429, 176, 55_958, 32_721),
}
MAX_CONTEXT = {"paper-32k": 32_768, "paper-48k": 49_152, "paper-64k": 65_536}

PRESETS = {
    name: SynthParams(max_context=MAX_CONTEXT[name], turns_mean=t[0], append_mean=t[1], gen_mean=t[2])
    for name, t in TABLE2.items()
}
# For CI and laptops: a small local model serves it in seconds (agents of ~1,200 tokens, at most 4K).
PRESETS["smoke"] = SynthParams(max_context=4096, turns_mean=4, append_mean=200, gen_mean=64)


def preset(name: str) -> SynthParams:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r} (allowed: {', '.join(PRESETS)})", field="--preset") from None
