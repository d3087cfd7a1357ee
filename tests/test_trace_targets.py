"""`trace synth` for any target that fits: few-turn smoke traces, the `smoke` preset, long agents, refusals
that name the largest value that fits, bounds on the trace's size, and the paper presets' bytes unchanged."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import leftovers
from traces.presets import PRESETS
from traces.stats import trace_stats
from traces.synth import SynthParams, synthesize

SMOKE_FLAGS = ("--turns-mean", 3, "--append-mean", 64, "--gen-mean", 12, "--max-context", 4096)


def assert_means(stats: dict, turns: float, append: float, gen: float, rel: float = 0.05) -> None:
    assert stats["turns_mean"] == pytest.approx(turns, rel=rel)
    assert stats["append_mean"] == pytest.approx(append, rel=rel)
    assert stats["gen_mean"] == pytest.approx(gen, rel=rel)


def final_context_max(trace) -> int:
    return int((trace.context_before() + trace.col("append_tokens") + trace.col("gen_tokens")).max())


def test_the_issue_smoke_command(cli, tmp_path):
    out = tmp_path / "t.parquet"
    res = cli("trace", "synth", "--preset", "paper-32k", "--agents", 200, "--seed", 5, *SMOKE_FLAGS, "-o", out,
              "--json")
    assert res.rc == 0, res.err
    assert_means(res.json(), 3, 64, 12)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_few_turn_targets_hold_for_any_seed(seed):
    params = SynthParams(max_context=4096, turns_mean=3, append_mean=64, gen_mean=12,
                         **{k: v for k, v in PRESETS["paper-32k"].as_dict().items()
                            if k not in ("max_context", "turns_mean", "append_mean", "gen_mean")})
    trace = synthesize(params, 200, seed)
    assert_means(trace_stats(trace), 3, 64, 12)
    assert final_context_max(trace) <= 4096


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_smoke_preset_holds_for_any_seed(seed):
    p = PRESETS["smoke"]
    trace = synthesize(p, 200, seed, source="synth:smoke")
    assert_means(trace_stats(trace), p.turns_mean, p.append_mean, p.gen_mean)
    assert final_context_max(trace) <= 4096


def test_smoke_preset_from_the_command_line(cli, tmp_path):
    res = cli("trace", "synth", "--preset", "smoke", "--agents", 20, "-o", tmp_path / "t.jsonl")
    assert res.rc == 0, res.err
    assert "paper" not in res.out  # no Table 2 to compare with
    assert "hit_rate_per_request" in res.out


FITTING = [  # (turns, append, gen, max_context): each fits a mean agent (turns x (append + gen) <= context)
    (1, 64, 12, 4096),          # single-turn requests
    (2, 10, 1, 65536),          # tiny rounds in a long context: agents fill a sliver of it
    (8, 1, 1, 4096),            # one-token rounds: the floor of one token flattens the response
    (20, 300, 100, 32768),
    (1.5, 2000, 300, 8192),
    (53, 64, 12, 4096),         # the largest whole turns that fit 64 + 12 in 4,096
]


@pytest.mark.parametrize("turns,append,gen,ctx", FITTING, ids=[str(f) for f in FITTING])
def test_any_fitting_target_is_reached(turns, append, gen, ctx):
    trace = synthesize(SynthParams(max_context=ctx, turns_mean=turns, append_mean=append, gen_mean=gen), 2000, 3)
    assert_means(trace_stats(trace), turns, append, gen)
    assert final_context_max(trace) <= ctx


@pytest.mark.slow
def test_a_long_agent(cli, tmp_path):
    res = cli("trace", "synth", "--agents", 200, "--turns-mean", 500, "--append-mean", 20, "--gen-mean", 12,
              "--max-context", 131072, "-o", tmp_path / "t.parquet", "--json")
    assert res.rc == 0, res.err
    assert_means(res.json(), 500, 20, 12)


REFUSED = [  # (flags, the one line)
    (("--turns-mean", 200, "--append-mean", 300, "--gen-mean", 100, "--max-context", 32768),
     "turns_mean: 200 turns of 300 appended + 100 generated tokens (80,000 tokens for the mean agent) are out of "
     "reach in max_context 32,768 (closest: turns "),
    (("--turns-mean", 900, "--append-mean", 64, "--gen-mean", 12, "--max-context", 4096),
     "turns_mean: 900 turns of 12 generated tokens each cannot fit in max_context 4096 (at most ~438 turns)"),
    (("--turns-mean", 3, "--append-mean", 4000, "--gen-mean", 100, "--max-context", 4096),
     "max_context: append_mean + gen_mean must be below max_context"),
    (("--turns-mean", 0.5, "--append-mean", 64, "--gen-mean", 12, "--max-context", 4096),
     "turns_mean: must be >= 1, got 0.5"),
    (("--turns-mean", 3, "--append-mean", 0.2, "--gen-mean", 12, "--max-context", 4096),
     "append_mean: must be >= 1, got 0.2"),
    (("--turns-mean", 3, "--append-mean", 64, "--gen-mean", 9000, "--max-context", 40000),
     "gen_mean: must be at most gen_max 8192 (the per-round limit; --set gen_max=N), got 9000"),
]


@pytest.mark.parametrize("flags,line", REFUSED, ids=["out-of-reach", "too-many-turns", "round-too-large",
                                                     "under-a-turn", "under-a-token", "above-gen-max"])
def test_refusals_name_what_would_fit(cli, tmp_path, flags, line):
    res = cli("trace", "synth", "--agents", 50, *flags, "-o", tmp_path / "t.parquet")
    assert res.rc == 2 and res.out == ""
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith(line), res.err
    if "out of reach" in line:
        assert res.err_lines[0].endswith("turns_mean at most 81 fits, or max_context at least 80,000")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("agents,line", [
    (10**12, "--agents: 1,000,000,000,000 agents is above the bound of 10,000,000"),
    (5_000_000, "--agents: 5,000,000 agents of 157 turns are ~785,000,000 rounds, above the bound of 100,000,000 "
                "(at most 636,942 agents for these targets)"),
])
def test_trace_size_is_bounded_before_drawing(cli, tmp_path, agents, line):
    res = cli("trace", "synth", "--preset", "paper-64k", "--agents", agents, "-o", tmp_path / "t.parquet")
    assert (res.rc, res.out, res.err_lines) == (2, "", [line])
    assert leftovers(tmp_path) == []


PRESET_JSONL_SHA256 = {  # 300 agents, `trace synth ... -o t.jsonl`, before the generator reached any target
    ("paper-32k", 7): "d522378c3f8a8d3e302b7218348af55bef98b5682514aadcfca73a1386ffb574",
    ("paper-48k", 42): "3e35b5cf431c4f3114ec6d30d8e67e950b9b9aff2d0f1be5124ea97c88b23e7d",
    ("paper-64k", 1): "f263214455e9bea7b52ad4bbd1ae3332072f9d3e0a7bda2fecfe41874f33db77",
}


@pytest.mark.parametrize("preset,seed", list(PRESET_JSONL_SHA256), ids=[f"{p}-{s}" for p, s in PRESET_JSONL_SHA256])
def test_paper_presets_keep_their_bytes(cli, tmp_path, preset, seed):
    out = tmp_path / "t.jsonl"
    assert cli("trace", "synth", "--preset", preset, "--agents", 300, "--seed", seed, "-o", out).rc == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == PRESET_JSONL_SHA256[(preset, seed)]
