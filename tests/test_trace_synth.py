"""`dualpath trace synth`: the paper presets, parameter overrides, determinism, Mooncake round trips."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import leftovers, write_lines
from traces.io import read_trace
from traces.mooncake import import_mooncake
from traces.presets import MAX_CONTEXT, PRESETS, TABLE2
from traces.stats import trace_stats

TABLE2_KEYS = ("turns_mean", "append_mean", "gen_mean", "total_mean", "context_mean")
MIN_HIT_RATE = {"paper-32k": 0.95, "paper-48k": 0.97, "paper-64k": 0.98}
SEEDS = (1, 2, 3)


def final_context(trace) -> np.ndarray:
    """Each round's context after it ends (its prompt plus its generation)."""
    return trace.context_before() + trace.col("append_tokens") + trace.col("gen_tokens")


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def synth(cli, tmp_path, *args, name="t.parquet"):
    """Run `trace synth ... --json -o FILE`; return (stats printed, the trace read back)."""
    out = tmp_path / name
    res = cli("trace", "synth", *args, "-o", out, "--json")
    assert res.rc == 0, res.err
    return res.json(), read_trace(out)


# ----- the paper presets --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(TABLE2))
def test_preset_matches_table2(cli, tmp_path, name, seed):
    stats, trace = synth(cli, tmp_path, "--preset", name, "--agents", 500, "--seed", seed)
    assert stats["agents"] == 500
    for key, paper in zip(TABLE2_KEYS, TABLE2[name]):
        assert stats[key] == pytest.approx(paper, rel=0.05), f"{name} seed {seed}: {key}"
    assert stats["hit_rate"] >= MIN_HIT_RATE[name]
    # the file holds what was reported, and no agent outgrows the preset's context
    assert trace_stats(trace) == {k: v for k, v in stats.items() if k not in ("output", "seconds")}
    assert final_context(trace).max() <= MAX_CONTEXT[name]
    assert trace.meta["source"] == f"synth:{name}"
    assert trace.meta["seed"] == seed and isinstance(trace.meta["seed"], int)


def test_preset_text_output_compares_with_paper(cli, tmp_path):
    res = cli("trace", "synth", "--preset", "paper-48k", "--agents", 50, "-o", tmp_path / "t.parquet")
    assert res.rc == 0
    lines = {line.split()[0]: line for line in res.out.splitlines()}
    assert "paper  42,607" in lines["total_mean"]
    assert "paper     106" in lines["turns_mean"]
    assert "paper" not in lines["hit_rate"]
    assert res.err.startswith("wrote ") and len(res.err_lines) == 1


# ----- overrides ----------------------------------------------------------------------------------
# The issue promises Table 2 within 5 % at 500 agents for the presets only. An override moves the solver's
# targets, and at 500 agents some overrides vary by a few percent between seeds (paper-32k --gen-mean 300:
# append_mean 576-613 over seeds 1-5), so the override tests draw 2000 agents (same time: the solver's
# pilot dominates) and keep the 5 % tolerance.
OVERRIDE_AGENTS = 2000


def assert_means(stats, **targets):
    for key, want in targets.items():
        assert stats[key] == pytest.approx(want, rel=0.05), key


def test_append_mean_flag(cli, tmp_path):
    stats, trace = synth(cli, tmp_path, "--preset", "paper-64k", "--agents", OVERRIDE_AGENTS,
                         "--append-mean", 600)
    assert_means(stats, append_mean=600, turns_mean=157, gen_mean=176)
    assert trace.meta["params"]["append_mean"] == 600
    assert final_context(trace).max() <= 65_536


def test_turns_mean_flag(cli, tmp_path):
    stats, _ = synth(cli, tmp_path, "--preset", "paper-32k", "--agents", OVERRIDE_AGENTS, "--turns-mean", 50)
    assert_means(stats, turns_mean=50, append_mean=608, gen_mean=148)


def test_gen_mean_flag(cli, tmp_path):
    stats, _ = synth(cli, tmp_path, "--preset", "paper-32k", "--agents", OVERRIDE_AGENTS, "--gen-mean", 300)
    assert_means(stats, gen_mean=300, turns_mean=60, append_mean=608)


def test_max_context_flag(cli, tmp_path):
    stats, trace = synth(cli, tmp_path, "--preset", "paper-48k", "--agents", OVERRIDE_AGENTS,
                         "--max-context", 40_000)
    assert_means(stats, turns_mean=106, append_mean=474, gen_mean=172)
    ctx = final_context(trace)
    assert ctx.max() <= 40_000
    assert ctx.max() > 39_000  # agents that run to the budget do fill it
    assert trace.meta["params"]["max_context"] == 40_000


def test_tool_latency_flag(cli, tmp_path):
    _, trace = synth(cli, tmp_path, "--preset", "paper-32k", "--agents", OVERRIDE_AGENTS,
                     "--tool-latency-mean", 2.5)
    lat, rnd = trace.col("tool_latency_s"), trace.col("round")
    assert (lat[rnd == 0] == 0).all()
    later = lat[rnd > 0]
    assert (later > 0).all()
    assert later.mean() == pytest.approx(2.5, rel=0.05)


def test_paper_presets_have_no_tool_latency(cli, tmp_path):
    _, trace = synth(cli, tmp_path, "--preset", "paper-32k", "--agents", 50)
    assert (trace.col("tool_latency_s") == 0).all()


def test_block_size_flag(cli, tmp_path):
    _, trace = synth(cli, tmp_path, "--preset", "paper-32k", "--agents", 20, "--block-size", 64)
    assert trace.block_size == 64
    out = tmp_path / "m.jsonl"
    assert cli("trace", "export", tmp_path / "t.parquet", "-o", out).rc == 0  # the trace's block size
    rows = read_jsonl(out)
    assert all(len(r["hash_ids"]) == math.ceil(r["input_length"] / 64) for r in rows)


def test_set_overrides_any_parameter(cli, tmp_path):
    stats, trace = synth(cli, tmp_path, "--preset", "paper-32k", "--agents", OVERRIDE_AGENTS,
                         "--set", "gen_mean=250", "--set", "full_fraction=1.0", "--set", "tool_latency_mean=0.5")
    assert_means(stats, gen_mean=250, turns_mean=60, append_mean=608)
    params = trace.meta["params"]
    assert params["gen_mean"] == 250 and params["full_fraction"] == 1.0
    assert trace.col("tool_latency_s")[trace.col("round") > 0].mean() == pytest.approx(0.5, rel=0.05)


def test_set_max_context_and_block_size_are_integers(cli, tmp_path):
    _, trace = synth(cli, tmp_path, "--preset", "paper-32k", "--agents", 50,
                     "--set", "max_context=30000", "--set", "block_size=128")
    assert trace.meta["params"]["max_context"] == 30_000
    assert trace.block_size == 128
    assert final_context(trace).max() <= 30_000


def test_no_preset_needs_all_four_targets(cli, tmp_path):
    stats, trace = synth(cli, tmp_path, "--agents", OVERRIDE_AGENTS, "--max-context", 16_384, "--turns-mean", 50,
                         "--append-mean", 300, "--gen-mean", 100)
    assert_means(stats, turns_mean=50, append_mean=300, gen_mean=100)
    assert final_context(trace).max() <= 16_384
    res = cli("trace", "synth", "--agents", 5, "--max-context", 16_384, "--turns-mean", 50, "-o",
              tmp_path / "x.parquet")
    assert res.rc == 2
    assert res.err_lines == ["--preset: without --preset, give --append-mean, --gen-mean"]


@pytest.mark.parametrize("turns", [41, 25])
def test_fewer_turns_within_reach(cli, tmp_path, turns):
    """Fewer turns than agents that fill their context would take (paper-32k: ~60): agents fill only part."""
    stats, trace = synth(cli, tmp_path, "--preset", "paper-32k", "--agents", OVERRIDE_AGENTS,
                         "--turns-mean", turns)
    assert_means(stats, turns_mean=turns, append_mean=608, gen_mean=148)
    assert final_context(trace).max() <= 32_768


UNREACHABLE = [  # (arguments, start of the one stderr line)
    (["--agents", 5, "--max-context", 16_384, "--turns-mean", 1000, "--append-mean", 300, "--gen-mean", 100],
     "turns_mean: 1000 turns of 100 generated tokens each cannot fit in max_context 16384 (at most ~"),
    (["--preset", "paper-32k", "--agents", 5, "--turns-mean", 1000],
     "turns_mean: 1000 turns of 148 generated tokens each cannot fit in max_context 32768 (at most ~"),
    (["--preset", "paper-32k", "--agents", 5, "--set", "turns_max_ratio=1000"],
     "turns_mean: turn limit 60000 (turns_max_ratio x turns_mean) is above "),
    (["--preset", "paper-64k", "--agents", 5, "--turns-mean", 300],  # below the cheap bound (~478)
     "turns_mean: 300 turns of 429 appended + 176 generated tokens (181,500 tokens for the mean agent) are out of "
     "reach in max_context 65,536 (closest: turns "),
    (["--preset", "paper-48k", "--agents", 5, "--append-mean", 5000],
     "turns_mean: 106 turns of 5000 appended + 172 generated tokens (548,232 tokens for the mean agent) are out of "
     "reach in max_context 49,152 (closest: turns "),
]


@pytest.mark.timeout(60)  # a guard against a solver that never gives up; a refusal takes about a second
@pytest.mark.parametrize("args,message", UNREACHABLE,
                         ids=["bound-no-preset", "bound-preset", "turn-cap", "solver-many-turns",
                              "solver-long-rounds"])
def test_unreachable_targets_are_one_line(cli, tmp_path, args, message):
    res = cli("trace", "synth", *args, "-o", tmp_path / "x.parquet")
    assert res.rc == 2
    assert res.out == ""
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith(message), res.err
    assert leftovers(tmp_path) == []  # no output, no temporary file


def test_few_turns_of_a_preset_are_reached(cli, tmp_path):
    """5 turns of paper-32k's rounds fit (5 x 756 tokens): round 0's task prompt shrinks to a quarter of an
    agent's appended tokens, so append_mean stays 608 (this was refused before)."""
    stats, trace = synth(cli, tmp_path, "--preset", "paper-32k", "--agents", OVERRIDE_AGENTS, "--turns-mean", 5)
    assert_means(stats, turns_mean=5, append_mean=608, gen_mean=148)


# ----- determinism --------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_same_seed_same_bytes(cli, tmp_path, ext):
    paths = [tmp_path / f"{n}.{ext}" for n in ("a", "b", "c")]
    for path, seed in zip(paths, (7, 7, 8)):
        assert cli("trace", "synth", "--preset", "paper-48k", "--agents", 100, "--seed", seed, "-o", path).rc == 0
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b
    assert a != c
    ta, tc = read_trace(paths[0]), read_trace(paths[2])
    assert ta.num_rounds != tc.num_rounds or not np.array_equal(ta.col("append_tokens"), tc.col("append_tokens"))


def test_export_is_deterministic(cli, tmp_path):
    src = tmp_path / "t.parquet"
    assert cli("trace", "synth", "--preset", "paper-32k", "--agents", 30, "-o", src).rc == 0
    for name in ("a.jsonl", "b.jsonl"):
        assert cli("trace", "export", src, "-o", tmp_path / name).rc == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_parquet_and_jsonl_hold_the_same_trace(cli, tmp_path):
    for ext in ("parquet", "jsonl"):
        assert cli("trace", "synth", "--preset", "paper-64k", "--agents", 40, "--seed", 5,
                   "--tool-latency-mean", 1.5, "-o", tmp_path / f"t.{ext}").rc == 0
    p, j = read_trace(tmp_path / "t.parquet"), read_trace(tmp_path / "t.jsonl")
    assert p.table.equals(j.table)
    assert p.block_size == j.block_size == 512
    assert {k: p.meta[k] for k in ("source", "generator", "agents", "params")} == \
        {k: j.meta[k] for k in ("source", "generator", "agents", "params")}


def test_metadata_types_do_not_depend_on_format(cli, tmp_path):
    for ext in ("parquet", "jsonl"):
        assert cli("trace", "synth", "--preset", "paper-32k", "--agents", 5, "--seed", 5, "--block-size", 256,
                   "-o", tmp_path / f"t.{ext}").rc == 0
    p, j = read_trace(tmp_path / "t.parquet").meta, read_trace(tmp_path / "t.jsonl").meta
    assert p == j
    for meta in (p, j):
        assert (meta["seed"], meta["block_size"]) == (5, 256)
        assert type(meta["seed"]) is int and type(meta["block_size"]) is int


# ----- synth -> export mooncake -> import -> stats -------------------------------------------------
@pytest.fixture(scope="module")
def synth_trace(tmp_path_factory):
    """A small synthetic trace with tool latency, written as Parquet."""
    from harness.cli import main

    path = tmp_path_factory.mktemp("synth") / "t.parquet"
    assert main(["trace", "synth", "--preset", "paper-32k", "--agents", "40", "--seed", "11",
                 "--tool-latency-mean", "2.0", "-o", str(path)]) == 0
    return path


@pytest.mark.parametrize("block_size", [None, 64])
def test_export_import_round_trip(cli, tmp_path, synth_trace, block_size):
    bs_args = [] if block_size is None else ["--block-size", block_size]
    bs = block_size or 512
    exported, imported = tmp_path / "m.jsonl", tmp_path / "back.parquet"
    assert cli("trace", "export", synth_trace, "-o", exported, *bs_args).rc == 0
    rows = read_jsonl(exported)
    orig = read_trace(synth_trace)
    assert len(rows) == orig.num_rounds
    for r in rows:
        assert len(r["hash_ids"]) == math.ceil(r["input_length"] / bs), r
    # known agents: every row names its session and round
    assert [(r["session_id"], r["round"]) for r in rows] == list(zip(orig.col("agent_id"), orig.col("round")))

    res = cli("trace", "import", exported, "-o", imported, "--json", *bs_args)
    assert res.rc == 0, res.err
    back = read_trace(imported)
    assert back.block_size == bs
    for col in ("agent_id", "round", "append_tokens", "gen_tokens"):
        assert np.array_equal(back.col(col), orig.col(col)), col
    assert np.array_equal(back.prompt_tokens(), orig.prompt_tokens())
    assert np.allclose(back.col("tool_latency_s"), orig.col("tool_latency_s"), rtol=0, atol=1e-6)
    assert np.array_equal(back.expected_cached_tokens(), orig.expected_cached_tokens())

    want = trace_stats(orig)
    shown = res.json()
    direct = cli("trace", "stats", exported, "--json", *bs_args)  # format detected as mooncake
    assert direct.rc == 0, direct.err
    for stats in (shown, direct.json(), trace_stats(back)):
        for key in ("agents", "requests", "turns_mean", "append_mean", "gen_mean", "context_mean",
                    "total_mean", "output_mean"):
            assert stats[key] == pytest.approx(want[key], rel=1e-12), key
        assert stats["hit_rate"] == pytest.approx(want["hit_rate"], abs=1e-12)


@pytest.mark.parametrize("block_size", [512, 64])
def test_exported_hash_ids_are_prefix_hashes(synth_trace, block_size):
    """A full block keeps its id in every later round of its agent; agents share no ids."""
    from traces.mooncake import export_hash_ids

    trace = read_trace(synth_trace)
    offsets, values = export_hash_ids(trace, block_size)
    prompt, agent = trace.prompt_tokens(), trace.col("agent_id")
    ids = [values[offsets[i]:offsets[i + 1]].tolist() for i in range(trace.num_rounds)]
    owner: dict[int, str] = {}
    for i, row in enumerate(ids):
        assert len(row) == math.ceil(prompt[i] / block_size)
        for h in row:
            assert owner.setdefault(h, agent[i]) == agent[i]
        if i + 1 < len(ids) and agent[i + 1] == agent[i]:
            full = prompt[i] // block_size
            assert ids[i + 1][:full] == row[:full]
            if prompt[i] % block_size:  # the partial block is rewritten by the next round
                assert ids[i + 1][full] != row[full]


def test_plain_rows_infer_the_same_agents(tmp_path, synth_trace):
    """Without session_id/round, import chains the exported rows back into the original agents."""
    from traces.mooncake import export_mooncake

    orig = read_trace(synth_trace)
    export_mooncake(orig, str(tmp_path / "m.jsonl"))
    plain = [{k: r[k] for k in ("timestamp", "input_length", "output_length", "hash_ids")}
             for r in read_jsonl(tmp_path / "m.jsonl")]
    back = import_mooncake(write_lines(tmp_path / "plain.jsonl", plain))
    assert back.meta["agents"] == "inferred"
    for col in ("round", "append_tokens", "gen_tokens"):
        assert np.array_equal(back.col(col), orig.col(col)), col
    assert np.array_equal(back.agent_index(), orig.agent_index())
    # hits now come from the hash ids: whole blocks of the previous prompt, never more than the context
    hits = back.expected_cached_tokens()
    ctx = orig.context_before()
    assert (hits <= ctx).all()
    assert (hits[orig.col("round") > 0] > 0).all()


def test_preset_names_are_the_table():
    assert set(PRESETS) - {"smoke"} == set(TABLE2) == set(MAX_CONTEXT)
