"""The `dualpath trace` command line: help, one-line errors with exit code 2, --debug, --json, errors in
our JSONL traces, atomic output, and the console script as a real subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, leftovers, write_lines
from traces.errors import InputError


# ----- help ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [[], ["trace"], ["trace", "synth"], ["trace", "import"], ["trace", "export"],
                                  ["trace", "stats"]], ids=lambda a: " ".join(a) or "dualpath")
def test_help(cli, args):
    res = cli(*args, "--help")
    assert res.rc == 0
    assert res.out.startswith("usage: dualpath")
    assert res.err == ""


def test_help_lists_the_subcommands_and_flags(cli):
    assert "trace" in cli("--help").out
    assert all(s in cli("trace", "--help").out for s in ("synth", "import", "export", "stats"))
    synth_help = cli("trace", "synth", "--help").out
    for flag in ("--preset", "--agents", "--seed", "--turns-mean", "--append-mean", "--gen-mean", "--max-context",
                 "--tool-latency-mean", "--block-size", "--set", "--json"):
        assert flag in synth_help


# ----- bad arguments: one line on stderr, exit code 2 ---------------------------------------------
BAD_ARGS = [  # (arguments, start of the one stderr line); OUT is replaced by an output path
    ([], "dualpath: the following arguments are required: COMMAND"),
    (["trace"], "dualpath trace: the following arguments are required: SUBCOMMAND"),
    (["trace", "frobnicate"], "dualpath trace: argument SUBCOMMAND: invalid choice: 'frobnicate'"),
    (["trace", "synth", "--preset", "paper-32k", "-o", "OUT"], "dualpath trace synth: the following arguments "
     "are required: --agents"),
    (["trace", "synth", "--preset", "nope", "--agents", "5", "-o", "OUT"], "--preset: unknown preset 'nope' "
     "(allowed: paper-32k, paper-48k, paper-64k, smoke)"),
    (["trace", "synth", "--preset", "paper-32k", "--agents", "abc", "-o", "OUT"],
     "dualpath trace synth: argument --agents: expected a whole number, got 'abc'"),
    (["trace", "synth", "--preset", "paper-32k", "--agents", "0", "-o", "OUT"], "--agents: must be > 0, got 0"),
    (["trace", "synth", "--preset", "paper-32k", "--agents", "5", "-o", "out.csv"],
     "-o: output must end in .parquet or .jsonl"),
    (["trace", "synth", "--preset", "paper-32k", "--agents", "5", "--set", "foo=1", "-o", "OUT"],
     "--set: unknown parameter 'foo' (allowed: max_context, "),
    (["trace", "synth", "--preset", "paper-32k", "--agents", "5", "--set", "gen_mean", "-o", "OUT"],
     "--set: expected NAME=VALUE, got 'gen_mean'"),
    (["trace", "synth", "--preset", "paper-32k", "--agents", "5", "--set", "gen_mean=lots", "-o", "OUT"],
     "--set: gen_mean: expected a number, got 'lots'"),
    (["trace", "synth", "--preset", "paper-32k", "--agents", "5", "--block-size", "0", "-o", "OUT"],
     "block_size: must be > 0, got 0"),
    (["trace", "synth", "--preset", "paper-32k", "--agents", "5", "--gen-mean", "-3", "-o", "OUT"],
     "gen_mean: must be > 0, got -3"),
    (["trace", "synth", "--preset", "paper-32k", "--agents", "5", "--tool-latency-mean", "-1", "-o", "OUT"],
     "tool_latency_mean: must be >= 0, got -1"),
    (["trace", "synth", "--preset", "paper-32k", "--agents", "5", "--max-context", "500", "-o", "OUT"],
     "max_context: append_mean + gen_mean must be below max_context"),
    (["trace", "synth", "--preset", "paper-32k", "--agents", "5", "--set", "full_fraction=2", "-o", "OUT"],
     "full_fraction: must be in [0, 1], got 2.0"),
    (["trace", "stats", "missing.jsonl"], "missing.jsonl: no such file"),
    (["trace", "stats", "missing.jsonl", "--format", "xml"], "dualpath trace stats: argument --format: invalid "
     "choice: 'xml'"),
    (["trace", "stats", "missing.jsonl", "--block-size", "0"], "--block-size: must be > 0, got 0"),
    (["trace", "import", "missing.jsonl", "-o", "OUT"], "missing.jsonl: no such file"),
    (["trace", "import", "missing.jsonl", "--block-size", "-4", "-o", "OUT"], "--block-size: must be > 0, got -4"),
    (["trace", "export", "missing.jsonl", "-o", "m.jsonl"], "missing.jsonl: no such file"),
    (["trace", "stats", "."], ".: is a directory, not a trace file"),
]


@pytest.mark.parametrize("args,message", BAD_ARGS, ids=[" ".join(a[:3]) + f" #{i}" for i, (a, _) in
                                                        enumerate(BAD_ARGS)])
def test_bad_arguments_are_one_line(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    res = cli(*[("out.parquet" if a == "OUT" else a) for a in args])
    assert res.rc == 2
    assert res.out == ""
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith(message), res.err
    assert leftovers(tmp_path) == []  # no output, no temporary file


def test_export_needs_a_jsonl_output(cli, tmp_path):
    src = tmp_path / "t.jsonl"
    assert cli("trace", "synth", "--preset", "paper-32k", "--agents", 3, "-o", src).rc == 0
    res = cli("trace", "export", src, "-o", tmp_path / "m.parquet")
    assert (res.rc, res.err_lines) == (2, ["-o: Mooncake output must end in .jsonl"])
    assert leftovers(tmp_path) == ["t.jsonl"]


def test_unreadable_inputs(cli, tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "junk.jsonl.gz").write_bytes(b"not gzip")
    (tmp_path / "empty.jsonl").write_text("")
    for name, start in (("junk.parquet", "not a readable Parquet file"), ("junk.jsonl.gz", "cannot read"),
                        ("empty.jsonl", "trace has no rounds")):
        res = cli("trace", "stats", tmp_path / name)
        assert res.rc == 2
        assert res.err_lines[0].startswith(f"{tmp_path / name}: {start}") and len(res.err_lines) == 1, res.err


# ----- --debug ------------------------------------------------------------------------------------
def test_debug_raises_instead(cli, tmp_path):
    with pytest.raises(InputError) as exc:
        cli("--debug", "trace", "stats", tmp_path / "missing.jsonl")
    assert str(exc.value) == f"{tmp_path / 'missing.jsonl'}: no such file"


DEBUG_AFTER = {"at-end": ["trace", "stats", "MISSING", "--debug"],
               "after-trace": ["trace", "--debug", "stats", "MISSING"],
               "after-stats": ["trace", "stats", "--debug", "MISSING"]}


@pytest.mark.parametrize("args", list(DEBUG_AFTER.values()), ids=list(DEBUG_AFTER))
def test_debug_only_before_the_command(cli, tmp_path, args):
    """--debug is a global option: after the command argparse rejects it, as one line (no traceback)."""
    res = cli(*[tmp_path / "missing.jsonl" if a == "MISSING" else a for a in args])
    assert res.rc == 2
    assert res.out == ""
    assert res.err_lines == ["dualpath: unrecognized arguments: --debug"]


# ----- --json -------------------------------------------------------------------------------------
def test_json_output_is_one_object(cli, tmp_path, monkeypatch, mooncake_path):
    monkeypatch.setenv("DUALPATH_PROGRESS", "1")  # bars go to stderr, never stdout
    synth = cli("trace", "synth", "--preset", "paper-32k", "--agents", 50, "-o", tmp_path / "t.parquet", "--json")
    assert synth.rc == 0
    obj = synth.json()
    assert obj["agents"] == 50 and obj["output"] == str(tmp_path / "t.parquet") and obj["seconds"] >= 0
    assert "wrote" in synth.err

    stats = cli("trace", "stats", tmp_path / "t.parquet", "--json")
    assert stats.rc == 0 and stats.err == ""
    assert {k: v for k, v in obj.items() if k not in ("output", "seconds")} == stats.json()

    assert cli("trace", "export", tmp_path / "t.parquet", "-o", tmp_path / "m.jsonl").rc == 0
    imp = cli("trace", "import", tmp_path / "m.jsonl", "-o", tmp_path / "back.jsonl", "--json")
    assert imp.rc == 0
    assert imp.json()["requests"] == obj["requests"]
    assert imp.err.startswith("imported ")


def test_json_has_every_field(cli, tmp_path):
    from traces.stats import FIELDS

    res = cli("trace", "synth", "--preset", "paper-64k", "--agents", 5, "-o", tmp_path / "t.jsonl", "--json")
    assert set(FIELDS) <= set(res.json())


# ----- errors in our JSONL traces -----------------------------------------------------------------
HEADER = {"dualpath_trace": 1, "meta": {"block_size": 512, "source": "test"}}
R0 = {"agent_id": "a", "round": 0, "append_tokens": 1000, "gen_tokens": 10, "tool_latency_s": 0.0}
R1 = {"agent_id": "a", "round": 1, "append_tokens": 1000, "gen_tokens": 10, "tool_latency_s": 0.5}

BAD_OURS = [  # (line 3 of the file, field, start of the problem)
    ('{"agent_id": "a", "round": 1, "append_tokens": 1000, "gen_tokens": 10, "tool_latency_s": 0.5',
     None, "malformed JSON"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 1000, "tool_latency_s": 0.5}', "gen_tokens", "missing field"),
    ('{"round": 1, "append_tokens": 1000, "gen_tokens": 10, "tool_latency_s": 0.5}', "agent_id", "missing field"),
    ('{"agent_id": "a", "round": 1, "append_tokens": -5, "gen_tokens": 10, "tool_latency_s": 0.5}',
     "append_tokens", "negative length -5"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5, "gen_tokens": -1, "tool_latency_s": 0.5}',
     "gen_tokens", "negative length -1"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5.5, "gen_tokens": 1, "tool_latency_s": 0.5}',
     "append_tokens", "expected an integer"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5, "gen_tokens": 1, "tool_latency_s": -0.5}',
     "tool_latency_s", "expected a finite number >= 0"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5, "gen_tokens": 1, "tool_latency_s": Infinity}',
     "tool_latency_s", "expected a finite number >= 0, got inf"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5, "gen_tokens": 1, "tool_latency_s": NaN}',
     "tool_latency_s", "expected a finite number >= 0, got nan"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5, "gen_tokens": 1, "tool_latency_s": 1' + "0" * 400 + '}',
     "tool_latency_s", "expected a finite number >= 0, got 1000"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5, "gen_tokens": 1, "tool_latency_s": 0, "arrival_s": -Infinity}',
     "arrival_s", "expected a finite number >= 0, got -inf"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 9223372036854775808, "gen_tokens": 1, "tool_latency_s": 0}',
     "append_tokens", "too large (9223372036854775808)"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5, "gen_tokens": 1' + "0" * 30 + ', "tool_latency_s": 0}',
     "gen_tokens", "too large (1" + "0" * 30 + ")"),
    ('{"agent_id": "a", "round": 9223372036854775808, "append_tokens": 5, "gen_tokens": 1, "tool_latency_s": 0}',
     "round", "too large (9223372036854775808)"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5, "gen_tokens": 1, "tool_latency_s": 0, "hash_ids": "x"}',
     "hash_ids", "expected a list of 64-bit integers"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5, "gen_tokens": 1, "tool_latency_s": 0, '
     '"hash_ids": [1, 9223372036854775808]}', "hash_ids", "expected a list of 64-bit integers"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5, "gen_tokens": 1, "tool_latency_s": 0, '
     '"hash_ids": [-9223372036854775809, 1]}', "hash_ids", "expected a list of 64-bit integers"),
    ('{"agent_id": "a", "round": 1, "append_tokens": 5, "gen_tokens": 1, "tool_latency_s": 0, "hash_ids": [1]}',
     "hash_ids", "has 1 ids, expected ceil(prompt 1015 / block size 512) = 2"),
    ('{"agent_id": ["a"], "round": 1, "append_tokens": 5, "gen_tokens": 1, "tool_latency_s": 0}',
     "agent_id", "expected a string"),
    ('"a row"', None, "expected a JSON object"),
]


def our_file(tmp_path, third_line: str) -> Path:
    return write_lines(tmp_path / "ours.jsonl", [HEADER, R0, third_line, R1 | {"round": 2}])


@pytest.mark.parametrize("command", ["stats", "export"])
@pytest.mark.parametrize("bad,field,problem", BAD_OURS)
def test_bad_row_in_our_jsonl(cli, tmp_path, command, bad, field, problem):
    src = our_file(tmp_path, bad)
    args = ["trace", "stats", src] if command == "stats" else ["trace", "export", src, "-o", tmp_path / "m.jsonl"]
    res = cli(*args)
    assert res.rc == 2
    assert res.out == ""
    assert len(res.err_lines) == 1, res.err
    want = f"{src}:3: " + (f"{field}: " if field else "") + problem
    assert res.err_lines[0].startswith(want), res.err
    assert leftovers(tmp_path) == ["ours.jsonl"]


def test_good_our_jsonl(cli, tmp_path):
    """The reference file of the error cases is itself good (so each case fails for its one defect)."""
    src = our_file(tmp_path, json.dumps(R1))
    res = cli("trace", "stats", src, "--json")
    assert res.rc == 0, res.err
    stats = res.json()
    assert stats["requests"] == 3 and stats["agents"] == 1
    assert stats["context_mean"] == pytest.approx((1000 + 2010 + 3020) / 3)


def test_our_jsonl_without_header_reports_rows(cli, tmp_path):
    src = write_lines(tmp_path / "ours.jsonl", [R0, R1 | {"round": 2}])
    res = cli("trace", "stats", src)
    assert res.rc == 2
    assert res.err_lines == [f"{src}:2: round: expected round 1 of agent 'a', got 2 (rows must be grouped by "
                             "agent, rounds 0, 1, 2, ...)"]


def test_our_jsonl_round_error_names_the_file_line(cli, tmp_path):
    """Row-structure errors count the header line and blank lines."""
    src = write_lines(tmp_path / "ours.jsonl", ["", HEADER, R0, "", "  ", R1 | {"round": 2}])
    res = cli("trace", "stats", src)
    assert res.rc == 2
    assert res.err_lines == [f"{src}:6: round: expected round 1 of agent 'a', got 2 (rows must be grouped by "
                             "agent, rounds 0, 1, 2, ...)"]


def test_our_jsonl_agent_in_two_groups_names_the_file_line(cli, tmp_path):
    src = write_lines(tmp_path / "ours.jsonl", [HEADER, R0, "", R0 | {"agent_id": "b"}, "", R0])
    res = cli("trace", "stats", src)
    assert res.rc == 2
    assert res.err_lines == [f"{src}:6: agent_id: agent 'a' appears in two separate groups of rows"]


@pytest.mark.parametrize("command", ["stats", "export"])
@pytest.mark.parametrize("ids", [list(range(9)), [1]], ids=["too-many", "too-few"])
def test_our_jsonl_hash_ids_of_the_wrong_length(cli, tmp_path, ids, command):
    # round 1's prompt is 1000 + 10 + 1000 = 2010 tokens: 4 blocks of 512; a blank line moves it to line 4
    src = write_lines(tmp_path / "ours.jsonl", [HEADER, R0 | {"hash_ids": [1, 2]}, "", R1 | {"hash_ids": ids}])
    args = ["trace", "stats", src] if command == "stats" else ["trace", "export", src, "-o", tmp_path / "m.jsonl"]
    res = cli(*args)
    assert res.rc == 2
    assert res.err_lines == [f"{src}:4: hash_ids: has {len(ids)} ids, expected ceil(prompt 2010 / block size 512) "
                             "= 4"]
    assert leftovers(tmp_path) == ["ours.jsonl"]


@pytest.mark.parametrize("block_size,ids", [(512, [1, 3, 4, 5]), (1024, [1, 3]), (64, list(range(32)))])
def test_our_jsonl_hash_ids_of_the_right_length_are_accepted(cli, tmp_path, block_size, ids):
    """The length follows the block size in the header (round 1's prompt: 2010 tokens)."""
    header = {"dualpath_trace": 1, "meta": {"block_size": block_size, "source": "test"}}
    first = list(range(-(-1000 // block_size)))
    src = write_lines(tmp_path / "ours.jsonl", [header, R0 | {"hash_ids": first}, R1 | {"hash_ids": ids}])
    assert cli("trace", "stats", src).rc == 0
    other = 1024 if block_size == 512 else 512
    bad = write_lines(tmp_path / "bad.jsonl", [header | {"meta": {"block_size": other}},
                                               R0 | {"hash_ids": first}, R1 | {"hash_ids": ids}])
    res = cli("trace", "stats", bad)
    assert res.rc == 2 and res.err_lines[0].startswith(f"{bad}:2: hash_ids: has {len(first)} ids, expected "
                                                       f"ceil(prompt 1000 / block size {other}) = "), res.err


def test_our_jsonl_metadata_must_be_an_integer(cli, tmp_path):
    src = write_lines(tmp_path / "ours.jsonl", [{"dualpath_trace": 1, "meta": {"block_size": "abc"}}, R0])
    res = cli("trace", "stats", src)
    assert res.rc == 2
    assert res.err_lines == [f"{src}:1: block_size: expected a positive integer in the trace metadata, got 'abc'"]


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("value", [0, -5, None, 1.5, True])
def test_our_jsonl_block_size_must_be_positive(cli, tmp_path, value):
    src = write_lines(tmp_path / "ours.jsonl", [{"dualpath_trace": 1, "meta": {"block_size": value}}, R0, R1])
    res = cli("trace", "export", src, "-o", tmp_path / "m.jsonl")
    assert res.rc == 2
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith(f"{src}:1: block_size: "), res.err
    assert leftovers(tmp_path) == ["ours.jsonl"]


@pytest.mark.parametrize("command", ["stats", "export"])
def test_our_jsonl_context_beyond_int64(cli, tmp_path, command):
    big = R1 | {"append_tokens": 2**63 - 1}  # each length is in range; 1010 + 2**63 - 1 is not
    src = write_lines(tmp_path / "ours.jsonl", [HEADER, R0, big])
    args = ["trace", "stats", src] if command == "stats" else ["trace", "export", src, "-o", tmp_path / "m.jsonl"]
    res = cli(*args)
    assert res.rc == 2
    assert len(res.err_lines) == 1 and res.err_lines[0].startswith(f"{src}:3: "), res.err
    assert leftovers(tmp_path) == ["ours.jsonl"]


def test_bad_parquet_values_name_row_and_column(cli, tmp_path):
    table = pa.table({"agent_id": ["a", "a", "a"], "round": [0, 1, 2], "append_tokens": [5, 6, -7],
                      "gen_tokens": [1, 1, 1], "tool_latency_s": [0.0, 0.0, 0.0]})
    pq.write_table(table, tmp_path / "t.parquet")
    res = cli("trace", "stats", tmp_path / "t.parquet")
    assert (res.rc, res.err_lines) == (2, [f"{tmp_path / 't.parquet'}:3: append_tokens: negative length -7"])
    pq.write_table(table.drop_columns(["gen_tokens"]), tmp_path / "u.parquet")
    res = cli("trace", "stats", tmp_path / "u.parquet")
    assert (res.rc, res.err_lines) == (2, [f"{tmp_path / 'u.parquet'}: gen_tokens: missing column"])
    # hash ids in Parquet are checked as in JSONL (no block size in the metadata: 512)
    good = table.set_column(2, "append_tokens", pa.array([5, 6, 7], pa.int64()))
    ids = pa.array([[1], [1], [1, 2]], pa.list_(pa.int64()))
    pq.write_table(good.append_column("hash_ids", ids), tmp_path / "h.parquet")
    res = cli("trace", "stats", tmp_path / "h.parquet")
    assert (res.rc, res.err_lines) == (2, [f"{tmp_path / 'h.parquet'}:3: hash_ids: has 2 ids, expected "
                                           "ceil(prompt 20 / block size 512) = 1"])


# ----- atomic output ------------------------------------------------------------------------------
def test_bad_input_leaves_an_existing_output_alone(cli, tmp_path):
    src = our_file(tmp_path, '{"agent_id": "a"}')
    out = tmp_path / "m.jsonl"
    out.write_text("precious\n")
    for args in (["trace", "export", src, "-o", out], ["trace", "import", src, "-o", out]):
        res = cli(*args)
        assert res.rc == 2 and len(res.err_lines) == 1
        assert out.read_text() == "precious\n"
    assert leftovers(tmp_path) == ["m.jsonl", "ours.jsonl"]


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_failure_while_writing_leaves_nothing(cli, tmp_path, monkeypatch, ext):
    import traces.io

    def broken_jsonl(trace, path):
        Path(path).write_text('{"dualpath_trace": 1}\n{"agent_id": "a0"')
        raise InputError("disk on fire")

    def broken_parquet(table, where, **kw):
        Path(where).write_bytes(b"PAR1 half")
        raise InputError("disk on fire")

    if ext == "jsonl":
        monkeypatch.setattr(traces.io, "_write_jsonl", broken_jsonl)
    else:
        monkeypatch.setattr(traces.io.pq, "write_table", broken_parquet)
    res = cli("trace", "synth", "--preset", "paper-32k", "--agents", 5, "-o", tmp_path / f"t.{ext}")
    assert (res.rc, res.err_lines) == (2, ["disk on fire"])
    assert leftovers(tmp_path) == []


def test_failure_while_exporting_leaves_nothing(cli, tmp_path, monkeypatch):
    import traces.mooncake

    src = tmp_path / "t.parquet"
    assert cli("trace", "synth", "--preset", "paper-32k", "--agents", 5, "-o", src).rc == 0

    class BrokenJson:
        calls = 0

        @classmethod
        def dumps(cls, obj, **kw):
            cls.calls += 1
            if cls.calls > 10:
                raise InputError("disk on fire")
            return json.dumps(obj, **kw)

    monkeypatch.setattr(traces.mooncake, "json", BrokenJson)
    res = cli("trace", "export", src, "-o", tmp_path / "m.jsonl")
    assert (res.rc, res.err_lines) == (2, ["disk on fire"])
    assert BrokenJson.calls == 11  # it did fail halfway
    assert leftovers(tmp_path) == ["t.parquet"]


UNWRITABLE = [  # (output inside tmp_path, start of the problem after "PATH: -o: ")
    ("file/t.EXT", "cannot write here ("),
    ("file/sub/t.EXT", "cannot write here ("),
    ("folder.EXT", "is a directory"),
]


@pytest.mark.parametrize("command", ["synth", "import", "export"])
@pytest.mark.parametrize("target,problem", UNWRITABLE, ids=["parent-is-a-file", "grandparent-is-a-file",
                                                            "is-a-directory"])
def test_unwritable_output_is_one_line(cli, tmp_path, command, target, problem):
    src = write_lines(tmp_path / "in.jsonl", [{"timestamp": 0, "input_length": 10, "output_length": 1,
                                               "hash_ids": [1]}])
    ext = "jsonl" if command == "export" else "parquet"
    out = tmp_path / target.replace("EXT", ext)
    (tmp_path / "file").write_text("x")
    (tmp_path / f"folder.{ext}").mkdir()
    args = {"synth": ["trace", "synth", "--preset", "paper-32k", "--agents", 3],
            "import": ["trace", "import", src], "export": ["trace", "export", src]}[command]
    res = cli(*args, "-o", out)
    assert res.rc == 2
    assert res.out == ""
    assert len(res.err_lines) == 1, res.err
    assert res.err_lines[0].startswith(f"{out}: -o: {problem}"), res.err
    assert leftovers(tmp_path) == ["file", f"folder.{ext}", "in.jsonl"]
    assert (tmp_path / "file").read_text() == "x" and leftovers(tmp_path / f"folder.{ext}") == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_permissions_follow_umask(cli, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        for name in ("t.parquet", "t.jsonl"):
            assert cli("trace", "synth", "--preset", "paper-32k", "--agents", 3, "-o", tmp_path / name).rc == 0
        assert cli("trace", "export", tmp_path / "t.parquet", "-o", tmp_path / "m.jsonl").rc == 0
        assert cli("trace", "import", tmp_path / "m.jsonl", "-o", tmp_path / "back.parquet").rc == 0
    finally:
        os.umask(old)
    for name in ("t.parquet", "t.jsonl", "m.jsonl", "back.parquet"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


# ----- the console script, as a real process ------------------------------------------------------
def console_script() -> list[str]:
    script = Path(sys.executable).parent / "dualpath"
    return [str(script)] if script.exists() else [sys.executable, "-m", "harness.cli"]


def run_process(argv, cwd):
    env = {**os.environ, "DUALPATH_PROGRESS": "0"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_console_script(tmp_path):
    out = tmp_path / "t.parquet"
    proc = run_process(console_script() + ["trace", "synth", "--preset", "paper-32k", "--agents", "20",
                                           "-o", str(out), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["agents"] == 20
    assert proc.stderr.startswith("wrote ")

    proc = run_process(console_script() + ["trace", "stats", str(out), "--json"], tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["agents"] == 20 and proc.stderr == ""

    proc = run_process(console_script() + ["trace", "stats", "--help"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: dualpath trace stats")

    proc = run_process(console_script() + ["trace", "stats", "nope.jsonl"], tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", "nope.jsonl: no such file\n")

    proc = run_process(console_script() + ["--debug", "trace", "stats", "nope.jsonl"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert proc.stderr.rstrip().endswith("traces.errors.InputError: nope.jsonl: no such file")


def test_python_dash_m(tmp_path):
    proc = run_process([sys.executable, "-m", "harness.cli", "trace", "synth", "--agents", "x"], REPO)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["dualpath trace synth: argument --agents: expected a whole number, got 'x'"]
    assert proc.stdout == ""
