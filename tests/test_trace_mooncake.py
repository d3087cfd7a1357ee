"""Mooncake traces: the real conversation trace, agent inference, sessions, and errors in Mooncake files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import leftovers, write_lines
from traces.errors import InputError
from traces.io import read_trace
from traces.mooncake import import_mooncake


def row(ts, input_length, output_length, hash_ids, **extra):
    return {"timestamp": ts, "input_length": input_length, "output_length": output_length,
            "hash_ids": list(hash_ids), **extra}


# ----- the real trace -----------------------------------------------------------------------------
def test_conversation_trace_stats(cli, mooncake_path):
    res = cli("trace", "stats", mooncake_path, "--json")
    assert res.rc == 0, res.err
    stats = res.json()
    assert stats["requests"] == 12_031
    assert stats["input_mean"] == pytest.approx(12_035, abs=1)
    assert stats["output_mean"] == pytest.approx(343, abs=1)
    assert stats["hit_rate"] == pytest.approx(0.374, abs=0.005)
    assert stats["context_mean"] == stats["input_mean"]
    assert stats["agents"] == 8_496  # README, "Trace generator"; some requests chain into sessions
    assert res.err == ""


def test_conversation_trace_text_stats(cli, mooncake_path):
    res = cli("trace", "stats", mooncake_path)
    assert res.rc == 0
    lines = {line.split()[0]: line.split()[1] for line in res.out.splitlines()}
    assert lines["requests"] == "12,031"
    assert lines["input_mean"] == "12,035.1"
    assert lines["output_mean"] == "342.6"
    assert lines["hit_rate"].startswith("0.37")


def test_conversation_trace_import_keeps_hits(cli, tmp_path, mooncake_path):
    """Imported to Parquet, the trace keeps its hash ids, its inferred agents and so its hit rate."""
    out = tmp_path / "conv.parquet"
    res = cli("trace", "import", mooncake_path, "-o", out, "--json")
    assert res.rc == 0, res.err
    imported = res.json()
    trace = read_trace(out)
    assert trace.meta["agents"] == "inferred" and trace.block_size == 512
    assert type(trace.meta["block_size"]) is int  # Parquet metadata is text; it comes back an integer
    assert trace.num_rounds == 12_031 and trace.has("hash_ids") and trace.has("arrival_s")
    again = cli("trace", "stats", out, "--json").json()
    for key in ("requests", "agents", "input_mean", "output_mean", "hit_rate", "duration_s"):
        assert again[key] == pytest.approx(imported[key], rel=1e-12), key
    assert again["hit_rate"] == pytest.approx(0.374, abs=0.005)


def test_conversation_trace_import_export_keeps_its_rows(cli, tmp_path, mooncake_path):
    """import -> export gives back the trace's own rows, in the file's order (also among the many rows of
    equal timestamps) and with its integer milliseconds: real hash ids, plain rows in timestamp order."""
    import gzip

    assert cli("trace", "import", mooncake_path, "-o", tmp_path / "conv.parquet").rc == 0
    out = tmp_path / "again.jsonl"
    assert cli("trace", "export", tmp_path / "conv.parquet", "-o", out).rc == 0
    with gzip.open(mooncake_path, "rt", encoding="utf-8") as fh:
        original = [json.loads(line) for line in fh if line.strip()]
    with open(out, encoding="utf-8") as fh:
        exported = [json.loads(line) for line in fh]
    assert all(set(r) == {"timestamp", "input_length", "output_length", "hash_ids"} for r in exported)
    stamps = [r["timestamp"] for r in exported]
    assert stamps == sorted(stamps)
    assert exported == original
    assert [type(r["timestamp"]) for r in exported] == [type(r["timestamp"]) for r in original]  # 48000, not 48000.0
    before = cli("trace", "stats", mooncake_path, "--json").json()
    after = cli("trace", "stats", out, "--json").json()
    assert after["hit_rate"] == pytest.approx(0.374, abs=0.005)
    for key in ("requests", "agents", "input_mean", "output_mean", "hit_rate", "duration_s"):
        assert after[key] == pytest.approx(before[key], rel=1e-12), key


# ----- agent inference ----------------------------------------------------------------------------
BS = 4  # a small block size keeps the hand-made rows readable

INFER_ROWS = [
    row(0, 10, 3, [100, 1, 2]),                  # A: 2 full blocks [100, 1] + a partial one
    row(1000, 18, 2, [100, 1, 7, 8, 9]),         # B: extends A's full blocks, 18 >= 10 + 3 -> A's agent
    row(2000, 12, 5, [100, 50, 51]),             # C: shares only block 0 (the system prompt) -> new
    row(3000, 24, 1, [100, 1, 7, 8, 60, 61]),    # D: extends B's 4 full blocks -> A's agent, round 2
    row(4000, 12, 1, [100, 1, 90]),              # E: extends A's blocks, but A is continued -> new
    row(5000, 13, 1, [100, 50, 51, 70]),         # F: extends C's blocks, 13 < 12 + 5 -> new
    row(6000, 4, 1, [200]),                      # H: one full block only
    row(7000, 8, 1, [200, 201]),                 # I: extends H, but 1 block < 2 -> new
]


def test_infer_agents_from_prefix_chains(tmp_path):
    trace = import_mooncake(write_lines(tmp_path / "m.jsonl", INFER_ROWS), block_size=BS)
    assert trace.meta["agents"] == "inferred"
    got = list(zip(trace.col("agent_id"), trace.col("round"), trace.col("append_tokens"),
                   trace.col("gen_tokens")))
    assert got == [
        ("s00000", 0, 10, 3),            # A
        ("s00000", 1, 18 - (10 + 3), 2),  # B: append = input - (parent input + output)
        ("s00000", 2, 24 - (18 + 2), 1),  # D
        ("s00001", 0, 12, 5),            # C
        ("s00002", 0, 12, 1),            # E
        ("s00003", 0, 13, 1),            # F
        ("s00004", 0, 4, 1),             # H
        ("s00005", 0, 8, 1),             # I
    ]
    assert trace.prompt_tokens().tolist() == [10, 18, 24, 12, 12, 13, 4, 8]
    assert trace.col("arrival_s").tolist() == [0, 1, 3, 2, 4, 5, 6, 7]
    # inferred agents: hits are the leading blocks an infinite cache has seen
    assert trace.expected_cached_tokens().tolist() == [0, 8, 16, 4, 8, 12, 0, 4]


def test_infer_follows_timestamps_not_file_order(tmp_path):
    rows = [row(1000, 18, 2, [100, 1, 7, 8, 9]), row(0, 10, 3, [100, 1, 2])]
    trace = import_mooncake(write_lines(tmp_path / "m.jsonl", rows), block_size=BS)
    assert trace.col("agent_id").tolist() == ["s00000", "s00000"]
    assert trace.col("append_tokens").tolist() == [10, 5]
    assert trace.col("arrival_s").tolist() == [0.0, 1.0]


def test_infer_with_default_block_size(tmp_path):
    first = row(0, 1500, 100, [0, 1, 2])          # 2 full blocks of 512 + a partial one
    second = row(10, 2000, 50, [0, 1, 3, 4])      # extends both full blocks; 2000 >= 1600
    other = row(20, 1100, 10, [0, 9, 10])         # only the shared first block
    trace = import_mooncake(write_lines(tmp_path / "m.jsonl", [first, second, other]))
    assert trace.col("agent_id").tolist() == ["s00000", "s00000", "s00001"]
    assert trace.col("append_tokens").tolist() == [1500, 400, 1100]
    assert trace.expected_cached_tokens().tolist() == [0, 1024, 512]


# ----- known sessions -----------------------------------------------------------------------------
def test_known_sessions_are_grouped_and_ordered(tmp_path):
    rows = [
        row(0, 100, 10, [1], session_id="b", round=0),
        row(5, 300, 10, [2], session_id="a", round=1, delay=1500),
        row(1, 200, 20, [3], session_id="a", round=0),
        row(9, 150, 10, [4], session_id="b", round=1, delay=250.5),
    ]
    trace = import_mooncake(write_lines(tmp_path / "m.jsonl", rows), block_size=512)
    assert trace.meta["agents"] == "known"
    assert trace.col("agent_id").tolist() == ["b", "b", "a", "a"]
    assert trace.col("round").tolist() == [0, 1, 0, 1]
    assert trace.col("append_tokens").tolist() == [100, 40, 200, 80]
    assert trace.col("tool_latency_s").tolist() == [0.0, 0.2505, 0.0, 1.5]
    assert trace.expected_cached_tokens().tolist() == [0, 110, 0, 220]


def test_session_with_a_gap_is_an_error(tmp_path):
    rows = [row(0, 100, 10, [1], session_id="a", round=0), row(1, 200, 10, [2], session_id="a", round=2)]
    path = write_lines(tmp_path / "m.jsonl", rows)
    with pytest.raises(InputError) as exc:
        import_mooncake(path)
    assert str(exc.value).startswith(f"{path}:2: round: ")


def test_session_prompt_shorter_than_its_context_is_an_error(tmp_path):
    rows = [row(0, 100, 50, [1], session_id="a", round=0), row(1, 120, 10, [2], session_id="a", round=1)]
    path = write_lines(tmp_path / "m.jsonl", rows)
    with pytest.raises(InputError) as exc:
        import_mooncake(path, layout="whole")
    assert str(exc.value).startswith(f"{path}:2: input_length: 120 is shorter")
    assert "--layout delta" in str(exc.value)
    # detected per session, such rows are the delta layout: round 1 adds 120 tokens to a context of 150
    trace = import_mooncake(path)
    assert trace.prompt_tokens().tolist() == [100, 270]


def test_session_errors_name_the_original_line(tmp_path):
    """Rows are regrouped by session; an error still names the row's line in the file (blank lines counted)."""
    rows = [row(9, 300, 10, [2], session_id="a", round=1), "", row(0, 100, 10, [1], session_id="a", round=0),
            "", row(5, 100, 10, [3], session_id="a", round=0)]
    path = write_lines(tmp_path / "m.jsonl", rows)
    with pytest.raises(InputError) as exc:
        import_mooncake(path)
    assert str(exc.value).startswith(f"{path}:5: round: session 'a' has round 0 where round 1 was expected")
    rows = [row(9, 105, 10, [2], session_id="a", round=1), "", "", row(0, 100, 10, [1], session_id="a", round=0)]
    path = write_lines(tmp_path / "m.jsonl", rows)
    with pytest.raises(InputError) as exc:
        import_mooncake(path, layout="whole")
    assert str(exc.value).startswith(f"{path}:1: input_length: 105 is shorter")


def test_mixed_session_and_plain_rows_is_an_error(tmp_path):
    rows = [row(0, 100, 50, [1], session_id="a", round=0), row(1, 120, 10, [2])]
    path = write_lines(tmp_path / "m.jsonl", rows)
    with pytest.raises(InputError) as exc:
        import_mooncake(path)
    assert str(exc.value).startswith(f"{path}:2: session_id: ")


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_export_of_an_imported_trace_keeps_hash_ids(cli, tmp_path):
    """Inferred agents: the export is the file's own plain rows, in timestamp order (not grouped by agent)."""
    rows = [row(0, 1500, 100, [0, 1, 2]),          # agent 0, round 0
            row(10, 1100, 10, [0, 9, 10]),         # agent 1 (shares only the first block)
            row(20, 2000, 50, [0, 1, 3, 4])]       # agent 0, round 1
    src = write_lines(tmp_path / "m.jsonl", rows)
    before = cli("trace", "stats", src, "--json").json()
    assert before["agents"] == 2
    for via in (src, tmp_path / "m.parquet"):  # straight from the Mooncake file, or imported first
        if via != src:
            assert cli("trace", "import", src, "-o", via).rc == 0
        out = tmp_path / "again.jsonl"
        assert cli("trace", "export", via, "-o", out).rc == 0
        assert read_jsonl(out) == rows  # no session_id/round; timestamps and hash ids as they came
        after = cli("trace", "stats", out, "--json").json()
        assert after == before


def test_export_of_known_sessions_keeps_sessions_and_hash_ids(cli, tmp_path):
    rows = [
        row(0, 100, 10, [1], session_id="b", round=0),
        row(5, 300, 10, [2], session_id="a", round=1, delay=1500),
        row(1, 200, 20, [3], session_id="a", round=0),
        row(9, 150, 10, [4], session_id="b", round=1, delay=250.5),
    ]
    src = write_lines(tmp_path / "m.jsonl", rows)
    out = tmp_path / "again.jsonl"
    assert cli("trace", "export", src, "-o", out).rc == 0
    assert read_jsonl(out) == [rows[0], rows[3], rows[2], rows[1]]  # grouped by session, rounds in order
    assert cli("trace", "stats", out, "--json").json() == cli("trace", "stats", src, "--json").json()


# ----- errors in Mooncake files -------------------------------------------------------------------
GOOD = json.dumps(row(0, 1000, 10, [1, 2]))
BAD_MOONCAKE = [  # (line 2 of the file, field, start of the problem)
    ('{"timestamp": 0, "input_length": 1000, "output_length": 10, "hash_ids": [1, 2]', None, "malformed JSON"),
    ('{"timestamp": 0, "output_length": 10, "hash_ids": [1, 2]}', "input_length", "missing field"),
    ('{"timestamp": 0, "input_length": 1000, "hash_ids": [1, 2]}', "output_length", "missing field"),
    ('{"input_length": 1000, "output_length": 10, "hash_ids": [1, 2]}', "timestamp", "missing field"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 10}', "hash_ids", "missing field"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": -1, "hash_ids": [1, 2]}', "output_length",
     "negative length -1"),
    ('{"timestamp": 0, "input_length": -1000, "output_length": 1, "hash_ids": [1, 2]}', "input_length",
     "negative length -1000"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [1, 2, 3]}', "hash_ids",
     "has 3 ids, expected ceil(input_length 1000 / block size 512) = 2"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [1]}', "hash_ids", "has 1 ids"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [1, "x"]}', "hash_ids",
     "expected a list of 64-bit integers"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [1, 9223372036854775808]}', "hash_ids",
     "expected a list of 64-bit integers"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [-9223372036854775809, 1]}',
     "hash_ids", "expected a list of 64-bit integers"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 9223372036854775808, "hash_ids": [1, 2]}',
     "output_length", "too large (9223372036854775808)"),
    ('{"timestamp": Infinity, "input_length": 1000, "output_length": 1, "hash_ids": [1, 2]}', "timestamp",
     "expected a finite number of milliseconds, got inf"),
    ('{"timestamp": NaN, "input_length": 1000, "output_length": 1, "hash_ids": [1, 2]}', "timestamp",
     "expected a finite number of milliseconds, got nan"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [1, 2], "delay": Infinity}', "delay",
     "expected a finite number of milliseconds >= 0, got inf"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [1, 2], "delay": -5}', "delay",
     "expected a finite number of milliseconds >= 0, got -5"),
    ('{"timestamp": 0, "input_length": 1000.5, "output_length": 1, "hash_ids": [1, 2]}', "input_length",
     "expected an integer"),
    ('{"timestamp": -1, "input_length": 1000, "output_length": 1, "hash_ids": [1, 2]}', "timestamp",
     "negative timestamp"),
    ('[1, 2]', None, "expected a JSON object"),
]


def expected_prefix(path, line, field):
    return f"{path}:{line}: " + (f"{field}: " if field else "")


@pytest.mark.parametrize("command", ["stats", "import"])
@pytest.mark.parametrize("bad,field,problem", BAD_MOONCAKE)
def test_bad_mooncake_row(cli, tmp_path, command, bad, field, problem):
    src = tmp_path / "in.jsonl"
    src.write_text(GOOD + "\n" + bad + "\n" + GOOD + "\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    args = ["trace", "stats", src] if command == "stats" else ["trace", "import", src, "-o", out]
    res = cli(*args)
    assert res.rc == 2
    assert res.out == ""
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith(expected_prefix(src, 2, field) + problem), res.err
    assert leftovers(tmp_path) == ["in.jsonl"]


def test_bad_mooncake_row_through_gzip(cli, tmp_path):
    import gzip

    src = tmp_path / "in.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        fh.write(GOOD + "\n\n" + '{"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [1]}\n')
    res = cli("trace", "stats", src)
    assert res.rc == 2
    assert res.err_lines == [f"{src}:3: hash_ids: has 1 ids, expected ceil(input_length 1000 / block size 512) = 2"]


def test_wrong_block_size_is_reported_on_the_first_row(cli, mooncake_path):
    res = cli("trace", "stats", mooncake_path, "--block-size", 64)
    assert res.rc == 2
    assert len(res.err_lines) == 1
    assert res.err.startswith(f"{mooncake_path}:1: hash_ids: has 14 ids, expected ceil(input_length 6758 / "
                              "block size 64) = 106")


@pytest.mark.parametrize("command", ["stats", "import"])
@pytest.mark.parametrize("bad,field,problem", [
    ('{"timestamp": 0, "input_length": 1000, "output_length": 10, "hash_ids": [1, 99999999999999999999999]}',
     "hash_ids", "expected a list of 64-bit integers"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 99999999999999999999999, "hash_ids": [1, 2]}',
     "output_length", "too large (99999999999999999999999)"),
    ('{"timestamp": 0, "input_length": 99999999999999999999999, "output_length": 1, "hash_ids": [1, 2]}',
     "input_length", "too large (99999999999999999999999)"),
    ('{"timestamp": 1' + "0" * 400 + ', "input_length": 1000, "output_length": 1, "hash_ids": [1, 2]}',
     "timestamp", "expected a finite number of milliseconds, got 1000"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [1, 2], "delay": 1' + "0" * 400 + '}',
     "delay", "expected a finite number of milliseconds >= 0, got 1000"),
    ('{"timestamp": 0, "input_length": 1000, "output_length": 1, "hash_ids": [1, 2], "session_id": "s", '
     '"round": 9223372036854775808}', "round", "expected an integer >= 0, got 9223372036854775808"),
], ids=["hash_id", "output_length", "input_length", "timestamp", "delay", "round"])
def test_integers_out_of_range_are_input_errors(cli, tmp_path, command, bad, field, problem):
    src = tmp_path / "in.jsonl"
    src.write_text(GOOD + "\n\n" + bad + "\n", encoding="utf-8")  # a blank line: the row is on line 3
    args = ["trace", "stats", src] if command == "stats" else ["trace", "import", src, "-o", tmp_path / "o.parquet"]
    res = cli(*args)
    assert res.rc == 2
    assert res.out == ""
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith(f"{src}:3: {field}: {problem}"), res.err
    assert leftovers(tmp_path) == ["in.jsonl"]


def test_int64_limits_are_accepted(cli, tmp_path):
    """Hash ids at both ends of int64 are good ids, and they survive import and export."""
    rows = [row(0, 1000, 10, [-(2**63), 2**63 - 1]), row(5, 1500, 10, [-(2**63), 2**63 - 1, 7])]
    src = write_lines(tmp_path / "in.jsonl", rows)
    assert cli("trace", "stats", src).rc == 0
    assert cli("trace", "import", src, "-o", tmp_path / "t.parquet").rc == 0
    assert read_trace(tmp_path / "t.parquet").table.column("hash_ids").to_pylist() == [r["hash_ids"] for r in rows]
    assert cli("trace", "export", tmp_path / "t.parquet", "-o", tmp_path / "m.jsonl").rc == 0
    assert read_jsonl(tmp_path / "m.jsonl") == rows
