"""Bad trace input found in review, each refused as one line (`FILE:LINE: FIELD: problem`, exit code 2, no
output file): timestamps, undecodable files, odd JSON, metadata, nulls in Parquet, ids, generator parameters;
and what import/export, format detection, agent inference and the generator's solver must keep."""
from __future__ import annotations

import gzip
import hashlib
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import leftovers, write_lines
from traces.errors import InputError
from traces.io import detect_format, read_trace
from traces.mooncake import import_mooncake, parse_row
from traces.schema import arrow_schema, validate_table
from traces.synth import SynthParams, params_with, synthesize

RELAXED = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])

BASE = {"agent_id": ["a", "a", "b"], "round": [0, 1, 0], "append_tokens": [10, 5, 7], "gen_tokens": [2, 2, 3],
        "tool_latency_s": [0.0, 0.5, 0.0]}
OURS = [{"agent_id": a, "round": r, "append_tokens": n, "gen_tokens": g, "tool_latency_s": t}
        for a, r, n, g, t in zip(*BASE.values())]


def moon(ts, input_length, output_length, hash_ids, **extra):
    return {"timestamp": ts, "input_length": input_length, "output_length": output_length,
            "hash_ids": list(hash_ids), **extra}


MOON = [moon(0, 1000, 10, [1, 2]), moon(5, 1500, 10, [1, 2, 3])]


def one_line_error(res, start: str) -> None:
    assert res.rc == 2, res.out
    assert res.out == ""
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith(start), res.err


def parquet(tmp_path, columns: dict, metadata=None, name="t.parquet"):
    table = pa.table(columns)
    if metadata:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, tmp_path / name)
    return tmp_path / name


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity (they are not JSON)."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


# ----- 1. arrival_s: finite, >= 0, on every row or none --------------------------------------------
@pytest.mark.parametrize("values,row,problem", [
    ([0.0, math.nan, 1.0], 2, "must be a finite number >= 0, got nan"),
    ([0.0, 1.0, -5.0], 3, "must be a finite number >= 0, got -5.0"),
    ([math.inf, 1.0, 1.0], 1, "must be a finite number >= 0, got inf"),
    ([0.0, None, 1.0], 2, "missing value"),
], ids=["nan", "negative", "inf", "null"])
@pytest.mark.parametrize("command", ["stats", "export"])
def test_parquet_arrival_is_checked(cli, tmp_path, values, row, problem, command):
    src = parquet(tmp_path, {**BASE, "arrival_s": pa.array(values, pa.float64())})
    args = ["trace", "stats", src, "--json"] if command == "stats" else \
        ["trace", "export", src, "-o", tmp_path / "m.jsonl"]
    one_line_error(cli(*args), f"{src}:{row}: arrival_s: {problem}")
    assert leftovers(tmp_path) == ["t.parquet"]


@pytest.mark.parametrize("given_on", [(0,), (1, 2), (0, 2)])
def test_jsonl_arrival_on_some_rows_only(cli, tmp_path, given_on):
    rows = [dict(r, arrival_s=float(i)) if i in given_on else r for i, r in enumerate(OURS)]
    src = write_lines(tmp_path / "t.jsonl", rows)
    first_missing = min(set(range(3)) - set(given_on))
    one_line_error(cli("trace", "stats", src, "--json"), f"{src}:{first_missing + 1}: arrival_s: missing value")


def test_optional_column_all_null_is_absent(tmp_path):
    trace = read_trace(parquet(tmp_path, {**BASE, "arrival_s": pa.array([None] * 3, pa.float64())}))
    assert not trace.has("arrival_s")


ARRIVAL = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5).map(float))


@RELAXED
@given(st.lists(ARRIVAL, min_size=3, max_size=3))
def test_validate_accepts_arrival_only_finite_non_negative_on_all_rows_or_none(values):
    table = pa.table({**BASE, "arrival_s": pa.array(values, pa.float64())})
    good = all(v is None for v in values) or all(v is not None and math.isfinite(v) and v >= 0 for v in values)
    if good:
        out = validate_table(table, "t.parquet")
        assert ("arrival_s" in out.column_names) == (values[0] is not None)
    else:
        with pytest.raises(InputError) as exc:
            validate_table(table, "t.parquet")
        assert exc.value.field == "arrival_s" and exc.value.line in (1, 2, 3)


def test_stats_json_never_prints_nan(cli, tmp_path, monkeypatch):
    import traces.stats

    src = write_lines(tmp_path / "t.jsonl", OURS)
    real = traces.stats.trace_stats
    monkeypatch.setattr(traces.stats, "trace_stats",
                        lambda t: {**real(t), "duration_s": math.nan, "hit_rate": math.inf})
    res = cli("trace", "stats", src, "--json")
    assert res.rc == 0, res.err
    obj = strict_json(res.out)
    assert obj["duration_s"] is None and obj["hit_rate"] is None and obj["requests"] == 3


# ----- 2. synth: finite parameters, finite draws ----------------------------------------------------
@pytest.mark.parametrize("args,start", [
    (["--tool-latency-mean", "inf"], "tool_latency_mean: expected a finite number, got inf"),
    (["--tool-latency-mean", "nan"], "tool_latency_mean: expected a finite number, got nan"),
    (["--set", "first_append_sigma=inf"], "first_append_sigma: expected a finite number, got inf"),
    (["--tool-latency-mean", "1e308"], "the generator's draws of tool latencies overflow: lower tool_latency_mean"),
    (["--set", "gen_coupling=1e6"], "the generator's draws of generated tokens overflow: lower gen_sigma"),
    (["--set", "turns_max_ratio=1e308"], "turns_mean: turn limit inf (turns_max_ratio x turns_mean) is above"),
    (["--max-context", "99999999999999999999"], "max_context: must be at most 2^40"),
], ids=["inf", "nan", "sigma-inf", "overflow-1e308", "overflow-coupling", "turn-limit-inf", "huge-int"])
def test_synth_refuses_parameters_that_overflow(cli, tmp_path, args, start):
    one_line_error(cli("trace", "synth", "--preset", "paper-32k", "--agents", 5, *args, "-o", tmp_path / "x.parquet"),
                   start)
    assert leftovers(tmp_path) == []


FLOAT_FIELDS = [n for n in SynthParams.names() if n not in ("max_context", "block_size", "gen_max")]


@settings(deadline=None, max_examples=40)
@given(st.sampled_from(FLOAT_FIELDS), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_validate_refuses_non_finite_parameters(name, value):
    from traces.presets import preset

    with pytest.raises(InputError) as exc:
        params_with(preset("paper-64k"), **{name: value}).validate()
    assert exc.value.field == name and "finite" in exc.value.problem


# ----- 3. files that do not decode ----------------------------------------------------------------
def test_parquet_read_as_jsonl(cli, tmp_path):
    src = write_lines(tmp_path / "t.jsonl", OURS)
    assert cli("trace", "synth", "--preset", "paper-32k", "--agents", 3, "-o", tmp_path / "t.parquet").rc == 0
    for fmt in ("jsonl", "mooncake"):
        one_line_error(cli("trace", "stats", tmp_path / "t.parquet", "--format", fmt),
                       f"{tmp_path / 't.parquet'}:1: not UTF-8 text")
    assert src.exists()


TRUNCATED = {"ours": [dict(OURS[0], agent_id=f"agent {i * 7919 % 10007}") for i in range(400)],
             "mooncake": [moon(i, 1000, 10, [i, i * 7919 % 10007]) for i in range(400)]}


@pytest.mark.parametrize("kind,command", [("ours", "stats"), ("mooncake", "stats"), ("mooncake", "import")])
def test_truncated_gzip_names_the_line(cli, tmp_path, kind, command):
    rows = TRUNCATED[kind]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    src = tmp_path / "t.jsonl.gz"
    src.write_bytes(data[:len(data) // 2])
    args = ["trace", "stats", src] if command == "stats" else ["trace", "import", src, "-o", tmp_path / "o.parquet"]
    res = cli(*args)
    assert res.rc == 2 and len(res.err_lines) == 1, res.err
    where, problem = res.err_lines[0].removeprefix(f"{src}:").split(": ", 1)
    assert int(where) > 1 and problem.startswith("cannot read (Compressed file ended")
    assert leftovers(tmp_path) == ["t.jsonl.gz"]


@RELAXED
@given(kind=st.sampled_from(["ours", "mooncake"]), lines=st.integers(1, 300), data=st.data())
def test_a_bad_byte_is_reported_on_its_line(tmp_path, kind, lines, data):
    """Far past the reader's first 8 KB too: the line is the one holding the byte."""
    at = data.draw(st.integers(1, lines))
    bad = data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))  # invalid, truncated, a surrogate
    row = (lambda i: dict(OURS[0], agent_id=f"agent-{i:04d}")) if kind == "ours" else \
        (lambda i: moon(i, 1000, 10, [1, 2]))
    text = [json.dumps(row(i)).encode() for i in range(lines)]
    text[at - 1] = text[at - 1][:-1] + b', "note": "' + bad + b'"}'
    src = tmp_path / "t.jsonl"
    src.write_bytes(b"\n".join(text) + b"\n")
    with pytest.raises(InputError) as exc:
        read_trace(src)
    assert (exc.value.path, exc.value.line) == (str(src), at) and exc.value.problem.startswith("not UTF-8 text")


def test_a_bad_byte_far_into_the_file(cli, tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_bytes(b"".join(json.dumps(moon(i, 1000, 10, [1, 2])).encode() + b"\n" for i in range(300))
                    + b'{"timestamp": 300, "\xff": 1}\n')
    one_line_error(cli("trace", "stats", src), f"{src}:301: not UTF-8 text (byte 0xff at column 21)")


# ----- 4. JSON that json.loads refuses other than by JSONDecodeError -------------------------------
ODD_JSON = {
    "huge-int": '{"timestamp": 0, "input_length": 1' + "0" * 5000 + ', "output_length": 1, "hash_ids": [1]}',
    "deep": '{"timestamp": 0, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
}


@pytest.mark.parametrize("case", ODD_JSON)
@pytest.mark.parametrize("command", ["stats", "import", "ours"])
def test_json_that_does_not_decode(cli, tmp_path, case, command):
    src = tmp_path / "t.jsonl"
    good = [json.dumps(OURS[0])] if command == "ours" else [json.dumps(MOON[0])]
    write_lines(src, good + [ODD_JSON[case]])
    args = ["trace", "import", src, "-o", tmp_path / "o.parquet"] if command == "import" else \
        ["trace", "stats", src]
    one_line_error(cli(*args), f"{src}:2: malformed JSON (")
    assert leftovers(tmp_path) == ["t.jsonl"]


# ----- 5. the JSONL header's meta must be an object -----------------------------------------------
@pytest.mark.parametrize("meta", ["abc", 5, [1, 2], True])
def test_header_meta_not_an_object(cli, tmp_path, meta):
    src = write_lines(tmp_path / "t.jsonl", ["", {"dualpath_trace": 1, "meta": meta}] + OURS)
    one_line_error(cli("trace", "stats", src), f"{src}:2: meta: expected a JSON object, got {meta!r}")


# ----- 6. nulls in required Parquet columns -------------------------------------------------------
@pytest.mark.parametrize("column", list(BASE))
@pytest.mark.parametrize("row", [0, 2])
def test_null_in_a_required_parquet_column(cli, tmp_path, column, row):
    values = list(BASE[column])
    values[row] = None
    src = parquet(tmp_path, {**BASE, column: values})
    one_line_error(cli("trace", "stats", src), f"{src}:{row + 1}: {column}: missing value")


def test_wrong_parquet_column_type_names_the_column(cli, tmp_path):
    src = parquet(tmp_path, {**BASE, "round": pa.array([{"x": 1}] * 3)})
    one_line_error(cli("trace", "stats", src), f"{src}: round: wrong column type struct<x: int64>, expected int64")


# ----- 7. params metadata that is not JSON --------------------------------------------------------
@pytest.mark.parametrize("value", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_params_metadata_must_be_a_json_object(cli, tmp_path, value):
    src = parquet(tmp_path, BASE, metadata={b"params": value})
    one_line_error(cli("trace", "stats", src), f"{src}: params: ")


# ----- 8. lone surrogates in ids ------------------------------------------------------------------
def test_lone_surrogate_in_agent_id(cli, tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps(OURS[0]) + "\n" + json.dumps(OURS[1]).replace('"a"', '"\\ud800"') + "\n")
    one_line_error(cli("trace", "stats", src), f"{src}:2: agent_id: not valid Unicode (a lone surrogate)")


def test_lone_surrogate_in_session_id(cli, tmp_path):
    src = tmp_path / "m.jsonl"
    src.write_text(json.dumps(moon(0, 1000, 10, [1, 2], session_id="\ud800", round=0)) + "\n")
    for args in (["trace", "stats", src], ["trace", "import", src, "-o", tmp_path / "o.parquet"]):
        one_line_error(cli(*args), f"{src}:1: session_id: not valid Unicode (a lone surrogate)")
    with pytest.raises(InputError) as exc:
        parse_row(moon(0, 1, 1, [1], session_id="x\udfff", round=0), 512)
    assert exc.value.field == "session_id"
    assert leftovers(tmp_path) == ["m.jsonl"]


# ----- 9. the seed ---------------------------------------------------------------------------------
def test_negative_seed(cli, tmp_path):
    one_line_error(cli("trace", "synth", "--preset", "paper-32k", "--agents", 5, "--seed", -1, "-o",
                       tmp_path / "x.parquet"), "--seed: must be >= 0, got -1")
    from traces.presets import preset

    with pytest.raises(InputError) as exc:
        synthesize(preset("paper-32k"), 5, -1)
    assert exc.value.field == "seed"


# ----- 10. integer generator parameters -----------------------------------------------------------
@pytest.mark.parametrize("args,start", [
    (["--set", "gen_max=0.5"], "gen_max: expected a whole number, got 0.5"),
    (["--set", "gen_max=0"], "gen_max: must be > 0, got 0"),
    (["--set", "block_size=1e400"], "block_size: expected a whole number, got inf"),
    (["--max-context", "32768.5"], "max_context: expected a whole number, got 32768.5"),
    (["--max-context", "lots"], "--max-context: expected a number, got 'lots'"),
])
def test_integer_parameters_refuse_fractions(cli, tmp_path, args, start):
    one_line_error(cli("trace", "synth", "--preset", "paper-32k", "--agents", 5, *args, "-o", tmp_path / "x.parquet"),
                   start)


def test_integer_parameters_take_whole_number_floats(cli, tmp_path):
    out = tmp_path / "x.parquet"
    res = cli("trace", "synth", "--preset", "paper-32k", "--agents", 5, "--set", "max_context=4e4",
              "--set", "gen_max=1e3", "--block-size", "2.56e2", "-o", out)
    assert res.rc == 0, res.err
    params = read_trace(out).meta["params"]
    assert (params["max_context"], params["gen_max"], params["block_size"]) == (40_000, 1000, 256)
    assert all(type(params[k]) is int for k in ("max_context", "gen_max", "block_size"))
    assert read_trace(out).col("gen_tokens").max() <= 1000
    res = cli("trace", "synth", "--agents", 5, "--max-context", "1.6e4", "--turns-mean", 50, "--append-mean", 300,
              "--gen-mean", 100, "-o", out)  # without a preset too
    assert res.rc == 0, res.err
    assert read_trace(out).meta["params"]["max_context"] == 16_000


def test_int_fields_are_the_integer_parameters():
    from dataclasses import fields

    from traces.synth import INT_FIELDS

    assert set(INT_FIELDS) == {f.name for f in fields(SynthParams) if f.type in ("int", int)}
    assert SynthParams(max_context=1e5, turns_mean=10, append_mean=100, gen_mean=10).max_context == 100_000


def test_gen_max_of_one(cli, tmp_path):
    res = cli("trace", "synth", "--agents", 5, "--max-context", 20_000, "--turns-mean", 40, "--append-mean", 300,
              "--gen-mean", 1, "--set", "gen_max=1", "-o", tmp_path / "x.parquet", "--json")
    assert res.rc == 0, res.err
    assert read_trace(tmp_path / "x.parquet").col("gen_tokens").tolist() == [1] * res.json()["requests"]


# ----- 11. nulls inside hash_ids ------------------------------------------------------------------
@pytest.mark.parametrize("command", ["stats", "export"])
def test_null_inside_hash_ids(cli, tmp_path, command):
    ids = pa.array([[1], [1], [None]], pa.list_(pa.int64()))
    src = parquet(tmp_path, {**BASE, "hash_ids": ids})
    args = ["trace", "stats", src] if command == "stats" else ["trace", "export", src, "-o", tmp_path / "m.jsonl"]
    one_line_error(cli(*args), f"{src}:3: hash_ids: a null inside the list")
    assert leftovers(tmp_path) == ["t.parquet"]


# ----- 12. equal timestamps keep the file's order; whole milliseconds stay integers ----------------
def dumps(row) -> str:
    return json.dumps(row, separators=(",", ":"))


def round_trip(cli, tmp_path, rows, block_size=512, via="parquet") -> list[str]:
    """import -> export of Mooncake rows; the exported lines."""
    src = tmp_path / "m.jsonl"
    src.write_text("".join(dumps(r) + "\n" for r in rows), encoding="utf-8")
    mid, out = tmp_path / f"t.{via}", tmp_path / "back.jsonl"
    res = cli("trace", "import", src, "--block-size", block_size, "-o", mid)
    assert res.rc == 0, res.err
    assert cli("trace", "export", mid, "-o", out).rc == 0
    return out.read_text(encoding="utf-8").splitlines()


TIES = [moon(0, 1100, 10, [1, 2, 3]),          # A round 0: 2 full blocks
        moon(5000, 600, 10, [9, 10]),          # B round 0, at the time of A's round 1 and before it in the file
        moon(5000, 1600, 10, [1, 2, 7, 8]),    # A round 1
        moon(7000.5, 700, 1, [11, 12])]        # a fraction of a millisecond stays


@pytest.mark.parametrize("via", ["parquet", "jsonl"])
def test_equal_timestamps_come_back_in_file_order(cli, tmp_path, via):
    trace = import_mooncake(write_lines(tmp_path / "in.jsonl", TIES))
    assert trace.col("agent_id").tolist() == ["s00000", "s00000", "s00001", "s00002"]  # A's rounds first
    assert round_trip(cli, tmp_path, TIES, via=via) == [dumps(r) for r in TIES]


def test_all_zero_timestamps_keep_the_file_order(cli, tmp_path):
    rows = [dict(r, timestamp=0) for r in TIES]
    trace = import_mooncake(write_lines(tmp_path / "in.jsonl", rows))
    assert trace.has("arrival_s") and trace.col("arrival_s").tolist() == [0.0] * 4
    assert round_trip(cli, tmp_path, rows) == [dumps(r) for r in rows]


@st.composite
def plain_files(draw):
    """Plain Mooncake rows (block size 4) in timestamp order with many ties; rows often extend an earlier
    row's blocks, so that agents chain and prefixes are shared."""
    bs, rows = 4, []
    times = sorted(draw(st.lists(st.sampled_from([0, 0, 3000, 3000, 6000, 9000.25]), min_size=1, max_size=14)))
    for ts in times:
        ids: list[int] = []
        if rows and draw(st.booleans()):
            parent = rows[draw(st.integers(0, len(rows) - 1))]
            ids = parent["hash_ids"][:draw(st.integers(0, parent["input_length"] // bs))]
        ids = ids + draw(st.lists(st.integers(0, 10**6), min_size=1 if not ids else 0, max_size=4))
        length = draw(st.integers((len(ids) - 1) * bs + 1, len(ids) * bs))
        rows.append(moon(ts, length, draw(st.integers(0, 9)), ids))
    return bs, rows


@RELAXED
@given(plain_files())
def test_import_export_gives_back_the_rows_and_their_order(cli, tmp_path, case):
    from traces.hits import infinite_cache_hits

    bs, rows = case
    assert round_trip(cli, tmp_path, rows, block_size=bs) == [dumps(r) for r in rows]
    # hits follow the file's order on ties too: those of an infinite cache fed the rows as they come
    trace = import_mooncake(str(tmp_path / "m.jsonl"), block_size=bs)
    in_file_order = infinite_cache_hits(pa.array([r["hash_ids"] for r in rows], pa.list_(pa.int64())),
                                        np.array([r["input_length"] for r in rows]), bs)
    assert trace.expected_cached_tokens().tolist() == in_file_order[trace.col("source_row")].tolist()


# ----- 13. format detection -----------------------------------------------------------------------
def test_our_rows_without_header_but_with_hash_ids_are_ours(cli, tmp_path):
    rows = [dict(OURS[0], hash_ids=[7], arrival_s=1.0), dict(OURS[1], hash_ids=[7], arrival_s=2.0)]
    src = write_lines(tmp_path / "t.jsonl", rows)
    assert detect_format(src) == "jsonl"
    res = cli("trace", "stats", src, "--json")
    assert res.rc == 0, res.err
    assert res.json()["agents"] == 1


def test_mooncake_after_blank_lines_is_mooncake(cli, tmp_path):
    src = write_lines(tmp_path / "m.jsonl", ["", "  ", *MOON])
    assert detect_format(src) == "mooncake"
    res = cli("trace", "stats", src, "--json")
    assert res.rc == 0, res.err
    assert res.json()["requests"] == 2


def test_header_then_rows_is_ours(tmp_path):
    src = write_lines(tmp_path / "t.jsonl", [{"dualpath_trace": 1, "meta": {}}, *OURS])
    assert detect_format(src) == "jsonl"


# ----- 14. agent inference tries shallower candidates ---------------------------------------------
def test_inference_falls_back_to_a_shallower_request(tmp_path):
    rows = [moon(1000, 1024, 2000, [0, 1]),           # A: 2 full blocks
            moon(2000, 1600, 5000, [0, 1, 2, 3]),     # B: extends A, but 1600 < 1024 + 2000: new agent
            moon(3000, 3100, 0, [0, 1, 2, 3, 4, 5, 6])]  # extends B (too short for it) and A (3100 >= 3024)
    trace = import_mooncake(write_lines(tmp_path / "m.jsonl", rows))
    assert list(zip(trace.col("agent_id"), trace.col("round"), trace.col("append_tokens"))) == [
        ("s00000", 0, 1024), ("s00000", 1, 3100 - 3024), ("s00001", 0, 1600)]


# ----- 15. the solver's pilot is bounded ----------------------------------------------------------
def test_pilot_is_bounded_for_long_agents():
    import tracemalloc

    from traces.synth import PILOT_AGENTS, PILOT_CELLS, Latent, _pilot_means, pilot_agents
    from traces.presets import PRESETS

    for p in PRESETS.values():  # the presets keep their pilot (same seed, same bytes)
        assert pilot_agents(p) == PILOT_AGENTS
    p = SynthParams(max_context=10_000_000, turns_mean=10_000, append_mean=500, gen_mean=100)
    assert pilot_agents(p) * p.turns_max <= PILOT_CELLS
    tracemalloc.start()
    try:
        _pilot_means(p, Latent(400.0, 100.0, 1.0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 300e6  # 1.4 GB with the full 2,000-agent pilot


@pytest.mark.timeout(20)  # 30 s to 2 min with the full pilot; 2 to 3 s now
def test_extreme_targets_are_solved_quickly(cli, tmp_path):
    res = cli("trace", "synth", "--max-context", 10_000_000, "--turns-mean", 10_000, "--append-mean", 500,
              "--gen-mean", 100, "--agents", 10, "-o", tmp_path / "x.parquet", "--json")
    assert res.rc == 0, res.err
    assert res.json()["requests"] > 10 * 1000


def test_paper_preset_output_is_unchanged():
    """The trace of a paper preset is pinned (the values; Parquet bytes also depend on the pyarrow version)."""
    from traces.presets import preset

    digest = hashlib.sha256()
    trace = synthesize(preset("paper-64k"), 200, 1)
    for name in trace.table.column_names:
        column = trace.col(name)
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(column.astype(str) if name == "agent_id" else column).tobytes())
    assert digest.hexdigest() == PAPER_64K_200_SEED_1


PAPER_64K_200_SEED_1 = "32cfdbb87148f41b423968b52a3f1010feafca85c013deb29a565c4a673c8b0b"  # before and after the review


# ----- low: Mooncake errors, mixed id types, stats options ----------------------------------------
def test_mooncake_errors_name_mooncake_fields(cli, tmp_path):
    src = write_lines(tmp_path / "m.jsonl", [MOON[0], moon(5, 1000, 2**41, [1, 2])])
    one_line_error(cli("trace", "stats", src), f"{src}:2: output_length: too large ({2**41} tokens; at most 2^40")


@pytest.mark.parametrize("kind", ["ours", "mooncake"])
def test_integer_and_string_ids_do_not_mix(cli, tmp_path, kind):
    if kind == "ours":
        rows, field = [dict(OURS[0], agent_id=1), dict(OURS[1], agent_id="1")], "agent_id"
    else:
        rows = [dict(MOON[0], session_id=1, round=0), dict(MOON[1], session_id="1", round=1)]
        field = "session_id"
    src = write_lines(tmp_path / "t.jsonl", rows)
    one_line_error(cli("trace", "stats", src), f"{src}:2: {field}: earlier rows give integers, this one '1'")
    same = write_lines(tmp_path / "u.jsonl", [dict(r, **{field: 1}) for r in rows])
    assert cli("trace", "stats", same).rc == 0


def test_stats_compares_with_the_paper_only_for_the_preset_itself(cli, tmp_path):
    def compared(*args) -> bool:
        out = tmp_path / "t.parquet"
        assert cli("trace", "synth", "--preset", "paper-32k", "--agents", 20, *args, "-o", out).rc == 0
        res = cli("trace", "stats", out)
        assert res.rc == 0
        return "paper" in res.out

    assert compared()
    assert compared("--tool-latency-mean", 2, "--block-size", 64)  # Table 2's means do not depend on these
    assert not compared("--set", "full_fraction=0.9")
    assert not compared("--append-mean", 500)


def test_stats_block_size_only_for_mooncake(cli, tmp_path):
    src = write_lines(tmp_path / "t.jsonl", OURS)
    one_line_error(cli("trace", "stats", src, "--block-size", 64), "--block-size: applies to Mooncake and Bailian rows only")
    one_line_error(cli("trace", "stats", src, "--format", "jsonl", "--block-size", 64), "--block-size: applies to")
    moon_src = write_lines(tmp_path / "m.jsonl", [moon(0, 100, 1, [1, 2])])
    assert cli("trace", "stats", moon_src, "--block-size", 64).rc == 0


def test_validated_schema_matches_the_contract(tmp_path):
    cols = list(BASE)
    table = validate_table(pa.table(BASE))
    assert table.schema.equals(arrow_schema(cols), check_metadata=False)
