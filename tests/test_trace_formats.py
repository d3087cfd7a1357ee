"""Traces from the field: AIPerf's agentic sessions (Mooncake delta layout), Bailian usage traces, our own
Mooncake sessions, layouts detected per session, and what import says about our own traces.

The samples under tests/data/ were written by tests/data/make_samples.py from the formats' descriptions.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import leftovers, write_lines
from traces.bailian import import_bailian
from traces.errors import InputError
from traces.io import read_trace
from traces.mooncake import import_mooncake
from traces.stats import trace_stats

DATA = Path(__file__).resolve().parent / "data"
AGENTIC = DATA / "aiperf_agentic.jsonl"
BAILIAN = DATA / "bailian.jsonl"
SESSIONS = DATA / "mooncake_sessions.jsonl"


def rows_of(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def by_agent(trace) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, a in enumerate(trace.col("agent_id").tolist()):
        out.setdefault(a, []).append(i)
    return out


# ----- AIPerf's agentic sessions (delta layout) ---------------------------------------------------
def test_aiperf_agentic_file_imports_as_sessions():
    raw = rows_of(AGENTIC)
    assert len(raw) == 438 and len({r["session_id"] for r in raw}) == 20
    trace = import_mooncake(str(AGENTIC))
    assert trace.num_rounds == 438 and trace.meta["agents"] == "known"
    prompt = trace.prompt_tokens().tolist()
    agents = by_agent(trace)
    assert len(agents) == 20
    for sid, idx in agents.items():
        mine = [r for r in raw if r["session_id"] == sid]  # the session's rows in file order
        assert trace.col("round")[idx].tolist() == list(range(len(mine)))
        history = 0
        for k, (i, row) in enumerate(zip(idx, mine)):
            # each round's prompt: the session's earlier inputs and outputs plus its own new input
            assert prompt[i] == history + row["input_length"], (sid, k)
            assert trace.col("gen_tokens")[i] == row["output_length"]
            if k == 0:
                assert trace.col("tool_latency_s")[i] == 0.0
                assert trace.col("arrival_s")[i] == row["timestamp"] / 1000
                assert trace.table.column("hash_ids")[i].as_py() == row["hash_ids"]  # shared prefix kept
            else:
                assert trace.col("tool_latency_s")[i] == pytest.approx(row["delay"] / 1000)
                assert trace.col("arrival_s")[i] == mine[0]["timestamp"] / 1000  # not before its session
            history += row["input_length"] + row["output_length"]


def test_aiperf_agentic_round_trips_through_our_delta_export(tmp_path):
    """import, export --layout delta: the same rows but for the later rounds' (fresh) hash ids."""
    trace = import_mooncake(str(AGENTIC))
    out = tmp_path / "d.jsonl"
    from traces.mooncake import export_mooncake

    export_mooncake(trace, str(out), layout="delta")
    raw, back = rows_of(AGENTIC), rows_of(out)
    assert len(back) == len(raw)
    for a, b in zip(raw, back):
        assert (a["session_id"], a["input_length"], a["output_length"]) == (b["session_id"], b["input_length"],
                                                                         b["output_length"])
        assert a.get("timestamp") == b.get("timestamp") and a.get("delay") == b.get("delay")
        assert len(a["hash_ids"]) == len(b["hash_ids"])
        if "timestamp" in a:
            assert a["hash_ids"] == b["hash_ids"]
    later = [h for r in back if "delay" in r for h in r["hash_ids"]]
    assert len(later) == len(set(later))  # new input: never seen before
    assert not set(later) & {h for r in back if "timestamp" in r for h in r["hash_ids"]}
    again = import_mooncake(str(out))
    assert trace_stats(again) == trace_stats(trace)


def test_delta_rows_need_a_session_first_row_with_tokens(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"session_id": "s", "input_length": 0, "output_length": 3,
                                               "hash_ids": [], "timestamp": 0}])
    with pytest.raises(InputError) as exc:
        import_mooncake(str(path))
    assert str(exc.value) == f"{path}:1: input_length: a session's first request needs at least one prompt token"


def test_a_plain_row_still_needs_a_timestamp(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [{"input_length": 3, "output_length": 3, "hash_ids": [1]}])
    with pytest.raises(InputError) as exc:
        import_mooncake(str(path))
    assert str(exc.value) == f"{path}:1: timestamp: missing field"


# ----- layouts, detected per session ----------------------------------------------------------------
def test_whole_sessions_are_detected_and_kept():
    trace = import_mooncake(str(SESSIONS))
    assert trace.prompt_tokens().tolist() == [1200, 1500, 2100, 600, 700, 5000]
    assert trace.col("append_tokens").tolist() == [1200, 200, 550, 600, 70, 5000]
    assert trace.col("tool_latency_s").tolist() == [0.0, 1.5, 0.2505, 0.0, 0.0, 0.0]
    assert [h.as_py() for h in trace.table.column("hash_ids")] == [r["hash_ids"] for r in rows_of(SESSIONS)]


def test_one_file_may_mix_layouts(tmp_path):
    """Session w extends its prompts (whole), session d adds new input only (delta, no later timestamps)."""
    rows = [{"session_id": "w", "round": 0, "timestamp": 0, "input_length": 600, "output_length": 10,
             "hash_ids": [1, 2]},
            {"session_id": "w", "round": 1, "timestamp": 5, "input_length": 700, "output_length": 10,
             "hash_ids": [1, 3]},
            {"session_id": "d", "timestamp": 0, "input_length": 600, "output_length": 10, "hash_ids": [1, 4]},
            {"session_id": "d", "delay": 20, "input_length": 700, "output_length": 10, "hash_ids": [5, 6]}]
    trace = import_mooncake(str(write_lines(tmp_path / "m.jsonl", rows)))
    assert trace.prompt_tokens().tolist() == [600, 700, 600, 1310]
    ids = [h.as_py() for h in trace.table.column("hash_ids")]
    assert ids[2] == [1, 4] and ids[3][0] == 1  # the delta session's first full block starts its later prompts
    assert len(ids[3]) == 3 and min(ids[3][1:]) > 6  # its own blocks get ids after every id of the file


def test_later_rows_without_timestamp_are_delta(tmp_path):
    """Rows that could extend each other (the first has no full block to repeat) are still delta when the
    later row carries `delay` and no timestamp, as AIPerf writes them."""
    rows = [{"session_id": "s", "timestamp": 0, "input_length": 100, "output_length": 10, "hash_ids": [1]},
            {"session_id": "s", "delay": 5, "input_length": 600, "output_length": 10, "hash_ids": [2, 3]}]
    trace = import_mooncake(str(write_lines(tmp_path / "m.jsonl", rows)))
    assert trace.prompt_tokens().tolist() == [100, 710]
    rows[1]["timestamp"] = 5
    trace = import_mooncake(str(write_lines(tmp_path / "m.jsonl", rows)))
    assert trace.prompt_tokens().tolist() == [100, 600]  # with timestamps on every row: whole prompts


@pytest.mark.parametrize("layout,prompts", [("whole", [600, 700]), ("delta", [600, 1310])])
def test_layout_can_be_forced(cli, tmp_path, layout, prompts):
    rows = [{"session_id": "s", "round": 0, "timestamp": 0, "input_length": 600, "output_length": 10,
             "hash_ids": [1, 2]},
            {"session_id": "s", "round": 1, "timestamp": 0, "input_length": 700, "output_length": 10,
             "hash_ids": [1, 3]}]
    src = write_lines(tmp_path / "m.jsonl", rows)
    res = cli("trace", "import", src, "--layout", layout, "-o", tmp_path / "t.parquet")
    assert res.rc == 0, res.err
    assert read_trace(tmp_path / "t.parquet").prompt_tokens().tolist() == prompts


def test_delta_layout_of_plain_rows_is_refused(cli, tmp_path):
    src = write_lines(tmp_path / "m.jsonl", [{"timestamp": 0, "input_length": 3, "output_length": 3,
                                              "hash_ids": [1]}])
    res = cli("trace", "import", src, "--layout", "delta", "-o", tmp_path / "t.parquet")
    assert res.rc == 2 and res.err_lines == [f"{src}:1: --layout: delta rows need a session_id (these rows have "
                                             "none: they are whole prompts)"]
    assert leftovers(tmp_path) == ["m.jsonl"]


def test_round_on_some_rows_of_a_session_only(tmp_path):
    rows = [{"session_id": "s", "round": 0, "timestamp": 0, "input_length": 6, "output_length": 1, "hash_ids": [1]},
            {"session_id": "s", "delay": 1, "input_length": 6, "output_length": 1, "hash_ids": [2]}]
    with pytest.raises(InputError) as exc:
        import_mooncake(str(write_lines(tmp_path / "m.jsonl", rows)))
    assert str(exc.value).endswith(":2: round: session 's' gives round on some rows only (give it on all or none)")


# ----- Bailian ------------------------------------------------------------------------------------
# The sample's sessions, by hand (tests/data/make_samples.py): 101 -> 102 -> 103 is one agent; 104 is a second
# child of 101 (an agent of its own); 202 trims its parent's history (20 < 20 + 4 tokens), so it starts an
# agent, which 203 continues; 401's parent is not in the file.
BAILIAN_AGENTS = {"101": [0, 1, 2], "201": [0], "301": [0], "202": [0, 1], "401": [0], "104": [0]}
# Cached tokens in time order: the larger of the agent's context and the leading 16-token blocks seen before:
# 101: 0/40, 201: 0/20, 301: 32/48 (blocks 1, 2 of 101), 202: 16/20 (block 20), 203: 26/40 (context 20 + 6),
# 102: 50/70 (context), 401: 0/33, 103: 90/100 (context), 104: 32/60 (blocks 1, 2)
BAILIAN_CACHED = {101: (0, 40), 201: (0, 20), 301: (32, 48), 202: (16, 20), 203: (26, 40), 102: (50, 70),
                  401: (0, 33), 103: (90, 100), 104: (32, 60)}


def test_bailian_sessions_from_parent_links():
    trace = import_bailian(str(BAILIAN))
    assert trace.block_size == 16 and trace.meta["agents"] == "linked"
    rounds = {a: trace.col("round")[idx].tolist() for a, idx in by_agent(trace).items()}
    assert rounds == BAILIAN_AGENTS
    a101 = by_agent(trace)["101"]
    assert trace.prompt_tokens()[a101].tolist() == [40, 70, 100]
    assert trace.col("append_tokens")[a101].tolist() == [40, 20, 10]  # 70 - (40 + 10), 100 - (70 + 20)
    assert trace.col("arrival_s")[a101].tolist() == [0.0, 5.0, 9.0]


def test_bailian_hit_rates_checked_by_hand(cli):
    cached = sum(c for c, _ in BAILIAN_CACHED.values())
    prompt = sum(p for _, p in BAILIAN_CACHED.values())
    per_request = sum(c / p for c, p in BAILIAN_CACHED.values()) / len(BAILIAN_CACHED)
    assert (cached, prompt) == (246, 431)
    res = cli("trace", "stats", BAILIAN, "--json")  # the format is detected
    assert res.rc == 0, res.err
    stats = res.json()
    assert (stats["agents"], stats["requests"]) == (6, 9)
    assert stats["hit_rate"] == pytest.approx(246 / 431)
    assert stats["hit_rate_per_request"] == pytest.approx(per_request)
    assert stats["duration_s"] == 12.0


def test_bailian_import_and_export(cli, tmp_path):
    res = cli("trace", "import", BAILIAN, "--format", "bailian", "-o", tmp_path / "b.parquet")
    assert res.rc == 0, res.err
    assert "imported 9 rounds (linked agents)" in res.err
    back = read_trace(tmp_path / "b.parquet")
    assert trace_stats(back) == trace_stats(import_bailian(str(BAILIAN)))
    assert cli("trace", "export", tmp_path / "b.parquet", "-o", tmp_path / "m.jsonl").rc == 0
    rows = rows_of(tmp_path / "m.jsonl")
    assert [r["input_length"] for r in rows][:3] == [40, 70, 100]
    assert rows[0]["hash_ids"] == [1, 2, 3]  # 16-token blocks kept as they are


BAD_BAILIAN = [  # (replacement of row 2, field, start of the problem)
    ({"chat_id": 101}, "chat_id", "chat 101 appears twice (first on line 1)"),
    ({"parent_chat_id": 201}, "parent_chat_id", "a chat cannot be its own parent (201)"),
    ({"timestamp": -1}, "timestamp", "expected a finite number of seconds >= 0, got -1"),
    ({"input_length": 0, "hash_ids": []}, "input_length", "a request needs at least one prompt token"),
    ({"hash_ids": [20]}, "hash_ids", "has 1 ids, expected ceil(input_length 20 / block size 16) = 2"),
    ({"turn": -2}, "turn", "expected an integer >= 0, got -2"),
    ({"chat_id": "x"}, "chat_id", "earlier rows give integers"),
    ({"output_length": 1.5}, "output_length", "expected an integer, got 1.5"),
]


@pytest.mark.parametrize("change,field,problem", BAD_BAILIAN, ids=[f for _, f, _ in BAD_BAILIAN])
def test_bad_bailian_rows_are_one_line(cli, tmp_path, change, field, problem):
    rows = rows_of(BAILIAN)
    rows[1] = rows[1] | change
    src = write_lines(tmp_path / "b.jsonl", rows)
    res = cli("trace", "import", src, "--format", "bailian", "-o", tmp_path / "t.parquet")
    assert res.rc == 2 and res.out == ""
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith(f"{src}:2: {field}: {problem}"), res.err
    assert leftovers(tmp_path) == ["b.jsonl"]


def test_bailian_missing_field(tmp_path):
    rows = rows_of(BAILIAN)
    del rows[0]["parent_chat_id"]
    with pytest.raises(InputError) as exc:
        import_bailian(str(write_lines(tmp_path / "b.jsonl", rows)))
    assert str(exc.value).endswith(":1: parent_chat_id: missing field")


# ----- our own traces are used directly ---------------------------------------------------------------
@pytest.mark.parametrize("ext,what", [("parquet", "Parquet"), ("jsonl", "JSONL")])
def test_importing_our_own_trace_says_to_use_it(cli, tmp_path, ext, what):
    src = tmp_path / f"t.{ext}"
    assert cli("trace", "synth", "--preset", "smoke", "--agents", 3, "-o", src).rc == 0
    res = cli("trace", "import", src, "-o", tmp_path / "out.parquet")
    assert res.rc == 2 and res.out == ""
    assert res.err_lines == [f"{src}: is already a dualpath trace ({what}), not mooncake rows: use it directly "
                             f"(`trace: {{path: {src}}}` in a scenario, `dualpath trace stats|export {src}`)"]
    assert leftovers(tmp_path) == [f"t.{ext}"]


def test_hit_rate_per_request_by_hand(tmp_path):
    """One agent: prompts 100, 150 (cached 100), 400 (cached 150): token-weighted 250/650, per request
    (0 + 2/3 + 3/8) / 3."""
    from conftest import write_lines as w
    header = {"dualpath_trace": 1, "meta": {"block_size": 512}}
    rows = [{"agent_id": "a", "round": r, "append_tokens": a, "gen_tokens": g, "tool_latency_s": 0.0}
            for r, (a, g) in enumerate([(100, 0), (50, 0), (250, 0)])]
    stats = trace_stats(read_trace(w(tmp_path / "t.jsonl", [header, *rows])))
    assert stats["hit_rate"] == pytest.approx(250 / 650)
    assert stats["hit_rate_per_request"] == pytest.approx((0 + 100 / 150 + 150 / 400) / 3)
