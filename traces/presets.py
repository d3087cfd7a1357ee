"""The paper's evaluation datasets (reference/paper.md §5.2, Table 2) as generator presets, and `smoke`.

Each preset states Table 2's turns, append and gen means as targets (the generator realises them) and
its maximum context length; the shape parameters are the defaults of `SynthParams`, shared by all three
presets: `full_fraction` and `first_append_mean` fitted once so that Table 2's total and context means
come out as well; `turns_max_ratio`, the tail of turns, set per preset from one share fitted on the
simulator's calibration point (TURN_BUDGET_SHARE below; README, "Calibration"). `TABLE2` keeps all five published means for the checks.
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

# The turn tail (README "Calibration"): a rollout's turn limit is a share of the rounds a full context holds
# at the mean generation length (max_context / gen_mean), so a dataset with a longer context also lets its
# agents run longer. [fitted] once, at the calibration point (Oracle, DS 660B 64K, 512 agents: turn limit 251,
# as the earlier rule of 1.6 x turns_mean gave there); 32K and 48K follow (149 and 193 turns).
TURN_BUDGET_SHARE = 0.674


def turn_limit_ratio(max_context: int, turns_mean: float, gen_mean: float, share: float = TURN_BUDGET_SHARE) -> float:
    """`turns_max_ratio` that makes the turn limit round(share x max_context / gen_mean)."""
    return max(1.0, round(share * max_context / gen_mean) / turns_mean)


PRESETS = {
    name: SynthParams(max_context=MAX_CONTEXT[name], turns_mean=t[0], append_mean=t[1], gen_mean=t[2],
                      turns_max_ratio=turn_limit_ratio(MAX_CONTEXT[name], t[0], t[2]))
    for name, t in TABLE2.items()
}
# For CI and laptops: a small local model serves it in seconds (agents of ~1,200 tokens, at most 4K).
PRESETS["smoke"] = SynthParams(max_context=4096, turns_mean=4, append_mean=200, gen_mean=64)


def preset(name: str) -> SynthParams:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r} (allowed: {', '.join(PRESETS)})", field="--preset") from None
