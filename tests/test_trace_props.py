"""Property tests (Hypothesis): the Mooncake row parser and file reader, infinite-cache hits, and the
per-round context of a trace."""
from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from traces.errors import InputError
from traces.hits import infinite_cache_hits
from traces.mooncake import FIELDS, export_hash_ids, parse_row, read_rows
from traces.schema import Trace, arrow_schema, validate_table

# per test, not a global profile (other modules keep their own settings); tmp_path is reused across examples,
# which is fine: every example overwrites the same file
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

INT64 = st.integers(-(2**63), 2**63 - 1)  # good hash ids: the whole int64 range, its ends included
HASH_ID = st.one_of(INT64, st.sampled_from([-(2**63), 2**63 - 1]))
# JSON integers outside int64 (bad hash ids, lengths, rounds), some too large even for a float (1e308 ~ 2**1023)
BEYOND_INT64 = st.one_of(st.integers(2**63, 2**64), st.integers(-(2**64), -(2**63) - 1),
                         st.sampled_from([2**63, -(2**63) - 1, 10**400, -(10**400)]))
BEYOND_FLOAT = st.one_of(st.integers(2**1024, 2**1100), st.just(10**400))  # float() overflows
COUNT = st.integers(0, 2**40)
NON_NEGATIVE_NUMBER = st.one_of(st.integers(0, 2**53), st.floats(0, 1e15, allow_nan=False, allow_infinity=False))
STR_SESSION_ID, INT_SESSION_ID = st.text(max_size=12), st.integers(-(2**31), 2**31)
SESSION_ID = st.one_of(STR_SESSION_ID, INT_SESSION_ID)  # a file uses one kind: 1 and "1" would be one agent
JSON_SCALAR = st.one_of(st.none(), st.booleans(), INT64, BEYOND_INT64, st.floats(), st.text(max_size=8))
JSON_VALUE = st.recursive(JSON_SCALAR, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                           max_size=4),
                          max_leaves=8)
NOT_AN_INT = st.one_of(st.floats(), st.text(max_size=6), st.booleans(), st.none(), st.lists(INT64, max_size=2),
                       st.dictionaries(st.text(max_size=3), INT64, max_size=2))
NOT_A_NUMBER = st.one_of(st.text(max_size=6), st.booleans(), st.none(), st.lists(INT64, max_size=2),
                         st.sampled_from([math.nan, math.inf, -math.inf]), BEYOND_FLOAT)
NOT_A_DELAY = NOT_A_NUMBER


# ----- Mooncake rows ------------------------------------------------------------------------------
@st.composite
def good_rows(draw, block_size=None, sessions=None, session_ids=SESSION_ID):
    """(block size, a valid Mooncake row as decoded JSON)."""
    bs = draw(st.integers(1, 1024)) if block_size is None else block_size
    blocks = draw(st.integers(1, 40))
    obj = {
        "timestamp": draw(NON_NEGATIVE_NUMBER),
        "input_length": draw(st.integers((blocks - 1) * bs + 1, blocks * bs)),
        "output_length": draw(COUNT),
        "hash_ids": draw(st.lists(HASH_ID, min_size=blocks, max_size=blocks)),
    }
    if draw(st.booleans()) if sessions is None else sessions:
        obj["session_id"] = draw(session_ids)
        obj["round"] = draw(st.integers(0, 10**6))
    if draw(st.booleans()):
        obj["delay"] = draw(NON_NEGATIVE_NUMBER)
    if draw(st.booleans()):
        obj["note"] = draw(JSON_VALUE)  # unknown keys are ignored
    return bs, obj


def assert_parsed(row: dict, obj: dict) -> None:
    assert row["timestamp"] == float(obj["timestamp"]) and isinstance(row["timestamp"], float)
    assert row["input_length"] == obj["input_length"]
    assert row["output_length"] == obj["output_length"]
    assert row["hash_ids"] == obj["hash_ids"]
    assert row["delay"] == float(obj.get("delay", 0))
    if "session_id" in obj:
        assert row["session_id"] == str(obj["session_id"]) and row["round"] == obj["round"]
    else:
        assert "session_id" not in row and "round" not in row


@RELAXED
@given(good_rows())
def test_good_rows_parse_and_keep_their_values(case):
    bs, obj = case
    assert_parsed(parse_row(obj, bs), obj)
    # and the same after a trip through JSON text
    assert_parsed(parse_row(json.loads(json.dumps(obj)), bs), obj)
    assert len(obj["hash_ids"]) == math.ceil(obj["input_length"] / bs)


@st.composite
def bad_rows(draw, block_size=None):
    """(block size, a row with exactly one defect, the field the error must name)."""
    bs, obj = draw(good_rows(block_size))
    kind = draw(st.sampled_from(["missing", "not-int", "negative", "too-large", "zero-input", "timestamp",
                                 "hash-length", "hash-type", "hash-item", "hash-range", "session", "round",
                                 "lone-round", "delay", "not-object"]))
    if kind == "missing":
        field = draw(st.sampled_from(FIELDS))
        del obj[field]
        if field == "timestamp":  # rows of a session may leave it out (the delta layout): a plain row may not
            obj.pop("session_id", None)
            obj.pop("round", None)
    elif kind == "not-int":
        field = draw(st.sampled_from(["input_length", "output_length"]))
        obj[field] = draw(NOT_AN_INT)
    elif kind == "negative":
        field = draw(st.sampled_from(["input_length", "output_length"]))
        obj[field] = draw(st.one_of(st.integers(-(2**63), -1), st.integers(max_value=-(2**63) - 1)))
    elif kind == "too-large":
        field = draw(st.sampled_from(["input_length", "output_length"]))
        obj[field] = draw(st.one_of(st.integers(min_value=2**63), BEYOND_FLOAT))
    elif kind == "zero-input":
        field = "input_length"
        obj[field] = 0
        obj["hash_ids"] = []
        obj.pop("session_id", None)  # a delta row may add no tokens (its session's first row is checked later)
        obj.pop("round", None)
    elif kind == "timestamp":
        field = "timestamp"
        obj[field] = draw(st.one_of(NOT_A_NUMBER, st.integers(-(2**63), -1), BEYOND_FLOAT.map(lambda v: -v),
                                    st.floats(max_value=-1e-9, allow_infinity=False)))
        if obj[field] is None:  # null is no timestamp: allowed in a session's later rows only
            obj.pop("session_id", None)
            obj.pop("round", None)
    elif kind == "hash-length":
        field = "hash_ids"
        want = len(obj["hash_ids"])
        n = draw(st.integers(0, want + 5).filter(lambda k: k != want))
        obj[field] = (obj[field] * (n // max(1, want) + 1))[:n] if n else []
    elif kind == "hash-type":
        field = "hash_ids"
        obj[field] = draw(st.one_of(st.text(max_size=4), INT64, st.none(), st.booleans(),
                                    st.dictionaries(st.text(max_size=3), INT64, max_size=2)))
    elif kind == "hash-item":
        field = "hash_ids"
        pos = draw(st.integers(0, len(obj["hash_ids"]) - 1))
        obj[field][pos] = draw(st.one_of(st.floats(), st.text(max_size=4), st.booleans(), st.none(),
                                         st.lists(INT64, max_size=2)))
    elif kind == "hash-range":
        field = "hash_ids"
        pos = draw(st.integers(0, len(obj["hash_ids"]) - 1))
        obj[field][pos] = draw(BEYOND_INT64)
    elif kind == "session":
        field = "session_id"
        obj["session_id"] = draw(st.one_of(st.none(), st.booleans(), st.floats(), st.lists(INT64, max_size=2)))
        obj["round"] = draw(st.integers(0, 100))
    elif kind == "round":
        field = "round"
        obj["session_id"] = draw(SESSION_ID)
        obj["round"] = draw(st.one_of(st.integers(-(2**63), -1), BEYOND_INT64, st.floats(), st.text(max_size=4),
                                      st.booleans()))  # null: no round (rows of a session in file order)
    elif kind == "lone-round":
        field = "session_id"
        obj.pop("session_id", None)
        obj["round"] = draw(st.integers(0, 100))
    elif kind == "delay":
        field = "delay"
        obj["delay"] = draw(st.one_of(NOT_A_DELAY, st.integers(-(2**63), -1),
                                      st.floats(max_value=-1e-9, allow_infinity=False)))
    else:
        field = None
        obj = draw(st.one_of(JSON_SCALAR, st.lists(JSON_VALUE, max_size=3), st.just(list(obj.items()))))
    return bs, obj, field


@RELAXED
@given(bad_rows(), st.integers(1, 10**6))
def test_bad_rows_raise_input_error_naming_the_field(case, line):
    bs, obj, field = case
    with pytest.raises(InputError) as exc:
        parse_row(obj, bs, "trace.jsonl", line)
    err = exc.value
    assert err.field == field
    assert (err.path, err.line) == ("trace.jsonl", line)
    assert str(err).startswith(f"trace.jsonl:{line}: " + (f"{field}: " if field else ""))
    assert "\n" not in str(err)


@st.composite
def any_objects(draw):
    """Dicts whose fields are each either a good value or any JSON value, or any JSON value at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_VALUE)
    _, good = draw(good_rows())
    keys = list(FIELDS) + ["session_id", "round", "delay"]
    obj = {}
    for k in keys:
        choice = draw(st.sampled_from(["good", "any", "absent"]))
        if choice == "good" and k in good:
            obj[k] = good[k]
        elif choice == "any":
            obj[k] = draw(JSON_VALUE)
    return obj


@settings(RELAXED, max_examples=300)
@given(any_objects(), st.integers(1, 4096))
def test_parse_row_never_raises_anything_else(obj, bs):
    try:
        row = parse_row(obj, bs, "t.jsonl", 1)
    except InputError as exc:
        assert exc.field in (None, *FIELDS, "session_id", "round", "delay")
        return
    assert len(row["hash_ids"]) == math.ceil(row["input_length"] / bs)
    # a row may leave out its timestamp (AIPerf delta rows after a session's first: the layout is told per session)
    assert row["input_length"] > 0 and row["output_length"] >= 0 and (row["timestamp"] is None or row["timestamp"] >= 0)


HUGE = [  # (field, value, the problem)
    ("timestamp", 10**400, "expected a finite number of milliseconds, got 1000"),
    ("delay", 10**400, "expected a finite number of milliseconds >= 0, got 1000"),
    ("input_length", 2**63, f"too large ({2**63})"),
    ("output_length", 10**400, "too large (1000"),
    ("hash_ids", [2**63], "expected a list of 64-bit integers"),
    ("hash_ids", [-(2**63) - 1], "expected a list of 64-bit integers"),
]


@pytest.mark.parametrize("field,value,problem", HUGE)
def test_parse_row_huge_integers(field, value, problem):
    obj = {"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": [1], field: value}
    with pytest.raises(InputError) as exc:
        parse_row(obj, 512, "t.jsonl", 7)
    assert exc.value.field == field
    assert str(exc.value).startswith(f"t.jsonl:7: {field}: {problem}")


@pytest.mark.parametrize("field,value,problem", [
    ("timestamp", math.inf, "expected a finite number of milliseconds, got inf"),
    ("timestamp", math.nan, "expected a finite number of milliseconds, got nan"),
    ("delay", math.inf, "expected a finite number of milliseconds >= 0, got inf"),
    ("delay", -math.inf, "expected a finite number of milliseconds >= 0, got -inf"),
    ("delay", math.nan, "expected a finite number of milliseconds >= 0, got nan"),
])
def test_parse_row_infinite_numbers(field, value, problem):
    obj = {"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": [1], field: value}
    with pytest.raises(InputError) as exc:
        parse_row(obj, 512, "t.jsonl", 7)
    assert exc.value.field == field
    assert str(exc.value) == f"t.jsonl:7: {field}: {problem}"


# ----- Mooncake files -----------------------------------------------------------------------------
@st.composite
def good_files(draw):
    """(block size, rows, file lines with blank lines mixed in, 1-based line of each row)."""
    bs = draw(st.integers(1, 1024))
    sessions = draw(st.booleans())
    ids = draw(st.sampled_from([STR_SESSION_ID, INT_SESSION_ID]))
    rows = draw(st.lists(good_rows(bs, sessions, ids).map(lambda c: c[1]), min_size=1, max_size=8))
    lines, where = [], []
    for obj in rows:
        lines.extend([""] * draw(st.integers(0, 2)))
        lines.append(json.dumps(obj))
        where.append(len(lines))
    return bs, rows, lines, where


def write_text(tmp_path, lines, gz: bool):
    path = tmp_path / ("t.jsonl.gz" if gz else "t.jsonl")
    text = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@RELAXED
@given(good_files(), st.booleans())
def test_read_rows_reads_every_row_with_its_line(tmp_path, case, gz):
    bs, rows, lines, where = case
    got = read_rows(str(write_text(tmp_path, lines, gz)), bs)
    assert len(got) == len(rows)
    for row, obj, line in zip(got, rows, where):
        assert_parsed(row, obj)
        assert row["line"] == line


@RELAXED
@given(good_files(), st.data())
def test_read_rows_names_the_bad_line(tmp_path, case, data):
    bs, rows, lines, where = case
    at = data.draw(st.integers(0, len(lines)))
    kind = data.draw(st.sampled_from(["truncated", "bad-row"]))
    if kind == "truncated":
        text = json.dumps(rows[0])
        bad, field = text[:data.draw(st.integers(1, len(text) - 1))], None
    else:
        _, obj, field = data.draw(bad_rows(bs))
        bad = json.dumps(obj)
    lines = lines[:at] + [bad] + lines[at:]
    path = str(write_text(tmp_path, lines, gz=False))
    with pytest.raises(InputError) as exc:
        read_rows(path, bs)
    err = exc.value
    assert err.path == path
    if kind == "truncated":
        assert (err.line, err.field) == (at + 1, None) and "malformed JSON" in err.problem
    else:
        assert (err.line, err.field) == (at + 1, field)


@RELAXED
@given(good_files())
def test_read_rows_rejects_half_keyed_files(tmp_path, case):
    bs, rows, lines, where = case
    assume(len(rows) >= 2)
    keyed = [dict(r, session_id="s", round=i) for i, r in enumerate(rows)]
    strip = len(rows) - 1
    plain = {k: v for k, v in keyed[strip].items() if k not in ("session_id", "round")}
    text = [json.dumps(r) for r in keyed[:strip]] + [json.dumps(plain)]
    with pytest.raises(InputError) as exc:
        read_rows(str(write_text(tmp_path, text, gz=False)), bs)
    assert (exc.value.line, exc.value.field) == (len(rows), "session_id")


# ----- infinite-cache hits ------------------------------------------------------------------------
@st.composite
def requests(draw):
    """(block size, hash ids per request, prompt tokens per request); few distinct ids, so prefixes repeat."""
    bs = draw(st.integers(1, 64))
    n = draw(st.integers(1, 30))
    ids = [draw(st.lists(st.integers(0, 4), min_size=1, max_size=8)) for _ in range(n)]
    prompts = [draw(st.integers((len(x) - 1) * bs + 1, len(x) * bs)) for x in ids]
    return bs, ids, prompts


def hits_of(ids, prompts, bs, order=None):
    return infinite_cache_hits(pa.array(ids, type=pa.list_(pa.int64())), np.array(prompts), bs, order=order)


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@RELAXED
@given(requests())
def test_hits_are_the_longest_prefix_seen(case):
    bs, ids, prompts = case
    hits = hits_of(ids, prompts, bs)
    assert hits.dtype == np.int64 and len(hits) == len(ids)
    assert hits[0] == 0
    for i, (row, prompt, hit) in enumerate(zip(ids, prompts, hits)):
        assert 0 <= hit <= prompt
        assert hit % bs == 0 or hit == prompt
        seen = max((common_prefix(row, earlier) for earlier in ids[:i]), default=0)
        assert hit == min(seen * bs, prompt)
        if any(earlier[:len(row)] == row for earlier in ids[:i]):
            assert hit == prompt  # all of it was seen: a full hit


@RELAXED
@given(requests())
def test_repeated_request_is_a_full_hit(case):
    bs, ids, prompts = case
    hits = hits_of(ids + ids, prompts + prompts, bs)
    assert hits[len(ids):].tolist() == prompts


@RELAXED
@given(requests(), st.randoms(use_true_random=False))
def test_hits_follow_the_serving_order(case, rnd):
    bs, ids, prompts = case
    order = list(range(len(ids)))
    rnd.shuffle(order)
    in_order = hits_of(ids, prompts, bs, order=np.array(order))
    permuted = hits_of([ids[i] for i in order], [prompts[i] for i in order], bs)
    assert in_order[order].tolist() == permuted.tolist()


# ----- the context of a trace ---------------------------------------------------------------------
@st.composite
def traces(draw, append_max=10**6, gen_max=10**5, block_sizes=(1, 16, 64, 512)):
    agents = draw(st.lists(st.lists(st.tuples(st.integers(0, append_max), st.integers(0, gen_max)), min_size=1,
                                    max_size=12), min_size=1, max_size=8))
    names, rounds, app, gen = [], [], [], []
    for a, rows in enumerate(agents):
        for r, (x, y) in enumerate(rows):
            names.append(f"agent{a}")
            rounds.append(r)
            app.append(x)
            gen.append(y)
    cols = ["agent_id", "round", "append_tokens", "gen_tokens", "tool_latency_s"]
    table = pa.table([pa.array(names, pa.string()), pa.array(rounds, pa.int64()), pa.array(app, pa.int64()),
                      pa.array(gen, pa.int64()), pa.array([0.0] * len(names))], schema=arrow_schema(cols))
    return agents, Trace(validate_table(table), {"block_size": draw(st.sampled_from(block_sizes))})


@RELAXED
@given(traces())
def test_context_before_is_the_agent_history(case):
    agents, trace = case
    want_ctx, want_agent = [], []
    for a, rows in enumerate(agents):
        ctx = 0
        for x, y in rows:
            want_ctx.append(ctx)
            want_agent.append(a)
            ctx += x + y
    assert trace.context_before().tolist() == want_ctx
    assert trace.prompt_tokens().tolist() == [c + x for c, (x, _) in zip(want_ctx, [r for rows in agents
                                                                                    for r in rows])]
    assert trace.agent_index().tolist() == want_agent
    assert trace.expected_cached_tokens().tolist() == want_ctx  # agents known: the client-side rule


@RELAXED
@given(traces(append_max=5000, gen_max=500, block_sizes=(16, 64, 512)))
def test_exported_hash_ids_give_whole_blocks_of_the_previous_prompt(case):
    _, trace = case
    bs = trace.block_size
    offsets, values = export_hash_ids(trace, bs)
    prompt = trace.prompt_tokens()
    assert (np.diff(offsets) == -(-prompt // bs)).all()
    ids = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int64()))
    hits = infinite_cache_hits(ids, prompt, bs)
    rnd = trace.col("round")
    assert (hits[rnd == 0] == 0).all()
    later = np.flatnonzero(rnd > 0)
    assert (hits[later] == (prompt[later - 1] // bs) * bs).all()
    assert (hits <= trace.context_before()).all()
