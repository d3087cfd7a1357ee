"""Bad input of every kind ends the same way: exit code 2, exactly one line on stderr that names the file
(and line and key where there is one), no traceback, and nothing left behind in the working directory.

The table runs `harness.cli.main` in-process (the same code path as the `dualpath` command); a few cases
run the real command in a subprocess to prove the exit path end to end.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(REPO / "scenarios" / "paper" / "offline-ds660b-64k.yaml")

# A scenario that runs in well under a second: 2 smoke agents, one system (line numbers matter below).
BASE = ("name: t\n"                                                      # 1
        "trace: {synth: {preset: smoke, agents: 2, seed: 1}}\n"          # 2
        "model: deepseek-v3.2-660b\n"                                    # 3
        "hardware: hopper-paper\n"                                       # 4
        "cluster: {prefill_nodes: 2, decode_nodes: 4}\n"                 # 5
        "systems: [dualpath]\n"                                          # 6
        "telemetry: {window_s: 10.0}\n")                                 # 7
ROW = {"agent_id": "a0", "round": 0, "append_tokens": 100, "gen_tokens": 10, "tool_latency_s": 0.0}
MC = {"timestamp": 0, "input_length": 1200, "output_length": 100, "hash_ids": [0, 1, 2]}


def sc(extra: str = "", **replace: str) -> str:
    text = BASE
    for old, new in replace.items():
        old = old.replace("__", ".")
        assert old in text, old
        text = text.replace(old, new)
    return text + extra


def jl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


@dataclass
class Case:
    id: str
    args: list
    where: str                       # the line starts with this: FILE, FILE:LINE, --set, the flag's command
    key: str | None = None           # and names this key or flag
    files: dict = field(default_factory=dict)


def run_case(n: str, where: str, key=None, extra: str = "", **replace) -> Case:
    """`dualpath run s.yaml` of BASE changed: the error is at s.yaml:LINE (or on --set)."""
    return Case(n, ["run", "s.yaml"], where, key, {"s.yaml": sc(extra, **replace)})


def set_case(n: str, setting: str, key: str, where: str = "--set:") -> Case:
    return Case(n, ["run", "s.yaml", "--set", setting], where, key, {"s.yaml": BASE})


def stats_case(n: str, name: str, content, where: str, key=None) -> Case:
    return Case(n, ["trace", "stats", name], where, key, {name: content})


def synth_case(n: str, *flags, key: str) -> Case:
    return Case(n, ["trace", "synth", "--preset", "smoke", "-o", "out.jsonl", *flags], "", key)


CASES = [
    # ----- trace files (trace stats / import / run with trace.path) -----
    stats_case("trace-empty", "t.jsonl", "", "t.jsonl"),
    stats_case("trace-not-json", "t.jsonl", "hello\n", "t.jsonl:1"),
    stats_case("trace-json-array", "t.jsonl", "[1, 2]\n", "t.jsonl:1"),
    stats_case("trace-missing-field", "t.jsonl", jl({k: v for k, v in ROW.items() if k != "gen_tokens"}), "t.jsonl:1",
               "gen_tokens"),
    stats_case("trace-negative-tokens", "t.jsonl", jl({**ROW, "append_tokens": -5}), "t.jsonl:1", "append_tokens"),
    stats_case("trace-huge-tokens", "t.jsonl", jl({**ROW, "append_tokens": 10**30}), "t.jsonl:1", "append_tokens"),
    stats_case("trace-text-tokens", "t.jsonl", jl({**ROW, "gen_tokens": "ten"}), "t.jsonl:1", "gen_tokens"),
    stats_case("trace-nan-latency", "t.jsonl", '{"agent_id": "a0", "round": 0, "append_tokens": 100, '
               '"gen_tokens": 10, "tool_latency_s": NaN}\n', "t.jsonl:1", "tool_latency_s"),
    stats_case("trace-second-line-bad", "t.jsonl", jl(ROW, "{oops"), "t.jsonl:2"),
    stats_case("trace-round-gap", "t.jsonl", jl(ROW, {**ROW, "round": 5}), "t.jsonl:2", "round"),
    stats_case("trace-binary", "t.jsonl", b"\xff\xfe\x00\x01garbage", "t.jsonl"),
    stats_case("trace-bad-gzip", "t.jsonl.gz", b"\x1f\x8bnot really gzip", "t.jsonl.gz"),
    stats_case("trace-parquet-garbage", "t.parquet", b"PAR1 this is not parquet", "t.parquet"),
    stats_case("trace-unknown-suffix", "t.csv", "a,b\n1,2\n", "t.csv"),
    Case("trace-no-such-file", ["trace", "stats", "missing.jsonl"], "missing.jsonl"),
    Case("trace-directory", ["trace", "stats", "d"], "d", files={"d/x": ""}),
    Case("mooncake-missing-input", ["trace", "import", "m.jsonl", "--format", "mooncake", "-o", "o.parquet"],
         "m.jsonl:1", "input_length", {"m.jsonl": jl({k: v for k, v in MC.items() if k != "input_length"})}),
    Case("mooncake-hash-ids-text", ["trace", "import", "m.jsonl", "--format", "mooncake", "-o", "o.parquet"],
         "m.jsonl:1", "hash_ids", {"m.jsonl": jl({**MC, "hash_ids": "abc"})}),
    Case("mooncake-negative-output", ["trace", "import", "m.jsonl", "--format", "mooncake", "-o", "o.parquet"],
         "m.jsonl:1", "output_length", {"m.jsonl": jl({**MC, "output_length": -1})}),
    Case("import-own-jsonl", ["trace", "import", "t.jsonl", "-o", "o.parquet"], "t.jsonl", None,
         {"t.jsonl": jl({"dualpath_trace": 1, "meta": {"agents": "known"}}, ROW)}),
    Case("bailian-missing-chat-id", ["trace", "import", "b.jsonl", "--format", "bailian", "-o", "o.parquet"],
         "b.jsonl:1", "chat_id", {"b.jsonl": jl({"parent_chat_id": -1, "timestamp": 0, "input_length": 10,
                                                  "output_length": 5, "type": "text", "turn": 1, "hash_ids": [1]})}),
    Case("export-unknown-layout", ["trace", "export", "t.jsonl", "--format", "mooncake", "--layout", "sideways",
                                   "-o", "o.jsonl"], "dualpath trace export", "--layout", {"t.jsonl": jl(ROW)}),
    Case("run-trace-path-missing", ["run", "s.yaml"], "s.yaml:2", "trace.path",
         {"s.yaml": sc(**{"{synth: {preset: smoke, agents: 2, seed: 1}}": "{path: nothere.jsonl}"})}),
    Case("run-trace-path-bad-rows", ["run", "s.yaml"], "t.jsonl:1", None,
         {"s.yaml": sc(**{"{synth: {preset: smoke, agents: 2, seed: 1}}": "{path: t.jsonl}"}), "t.jsonl": "nope\n"}),
    Case("run-trace-format-wrong", ["run", "s.yaml"], "s.yaml:2", "trace.format",
         {"s.yaml": sc(**{"{synth: {preset: smoke, agents: 2, seed: 1}}": "{path: t.jsonl, format: csv}"}),
          "t.jsonl": jl(ROW)}),

    # ----- scenario files -----
    Case("scenario-missing", ["run", "nothere.yaml"], "nothere.yaml"),
    Case("scenario-empty", ["run", "s.yaml"], "s.yaml", None, {"s.yaml": ""}),
    Case("scenario-list", ["run", "s.yaml"], "s.yaml:1", None, {"s.yaml": "- a\n- b\n"}),
    Case("scenario-invalid-yaml", ["run", "s.yaml"], "s.yaml:", None, {"s.yaml": "name: [t\n"}),
    Case("scenario-tab", ["run", "s.yaml"], "s.yaml:", None, {"s.yaml": "name: t\n\ttrace: x\n"}),
    Case("scenario-binary", ["run", "s.yaml"], "s.yaml", None, {"s.yaml": b"\xff\xfe\x00garbage"}),
    run_case("unknown-top-key", "s.yaml:8", "colour", "colour: red\n"),
    run_case("typo-key", "s.yaml:5", "cluster.prefil_nodes", **{"prefill_nodes: 2": "prefil_nodes: 2"}),
    run_case("duplicate-key", "s.yaml:8", None, "name: u\n"),
    run_case("name-bad-chars", "s.yaml:1", "name", **{"name: t": "name: 'a b/c'"}),
    run_case("backend-unknown", "s.yaml:8", "backend", "backend: gpu\n"),
    run_case("no-trace", "s.yaml", "trace", **{"trace: {synth: {preset: smoke, agents: 2, seed: 1}}\n": ""}),
    run_case("trace-both", "s.yaml:2", "trace", **{"seed: 1}}": "seed: 1}, path: x.jsonl}"}),
    run_case("preset-unknown", "s.yaml:2", "trace.synth.preset", **{"preset: smoke": "preset: huge"}),
    run_case("agents-zero", "s.yaml:2", "trace.synth.agents", **{"agents: 2": "agents: 0"}),
    run_case("agents-1e12-text", "s.yaml:2", "trace.synth.agents", **{"agents: 2": "agents: 1e12"}),
    run_case("agents-3e7-text", "s.yaml:2", "trace.synth.agents", **{"agents: 2": "agents: 3e7"}),
    run_case("agents-above-bound", "s.yaml:2", "trace.synth.agents", **{"agents: 2": "agents: 30000000"}),
    run_case("agents-rounds-bound", "s.yaml:2", "trace.synth.agents", **{"agents: 2, seed: 1": "agents: 200000, seed: 1, turns_mean: 1000, max_context: 2000000, append_mean: 10, gen_mean: 10"}),
    run_case("agents-float", "s.yaml:2", "trace.synth.agents", **{"agents: 2": "agents: 2.5"}),
    run_case("synth-unknown-param", "s.yaml:2", "trace.synth.turns", **{"seed: 1}": "seed: 1, turns: 3}"}),
    run_case("synth-turns-huge", "s.yaml:2", "trace.synth", **{"seed: 1}": "seed: 1, turns_mean: 1.0e+9}"}),
    run_case("synth-context-2-50", "s.yaml:2", "trace.synth.max_context", **{"seed: 1}": "seed: 1, max_context: 1125899906842624}"}),
    run_case("seed-negative", "s.yaml:8", "seed", "seed: -1\n"),
    run_case("seed-huge", "s.yaml:8", "seed", "seed: 1" + "0" * 40 + "\n"),
    run_case("model-unknown", "s.yaml:3", "model", **{"deepseek-v3.2-660b": "deepseek-v9"}),
    run_case("hardware-unknown", "s.yaml:4", "hardware", **{"hopper-paper": "hopper-papr"}),
    run_case("nodes-zero", "s.yaml:5", "cluster.prefill_nodes", **{"prefill_nodes: 2": "prefill_nodes: 0"}),
    run_case("nodes-text", "s.yaml:5", "cluster.decode_nodes", **{"decode_nodes: 4": "decode_nodes: four"}),
    run_case("nodes-huge", "s.yaml:5", "cluster.decode_nodes", **{"decode_nodes: 4": "decode_nodes: 100000"}),
    run_case("nodes-missing", "s.yaml", "cluster.decode_nodes", **{", decode_nodes: 4": ""}),
    run_case("prefill-group-3-of-2", "s.yaml:5", "cluster.prefill_group_nodes",
             **{"decode_nodes: 4}": "decode_nodes: 4, prefill_group_nodes: 3}"}),
    run_case("decode-group-3-of-4", "s.yaml:5", "cluster.decode_group_nodes",
             **{"decode_nodes: 4}": "decode_nodes: 4, decode_group_nodes: 3}"}),
    run_case("default-group-does-not-divide", "s.yaml:5", "cluster.decode_nodes", **{"decode_nodes: 4": "decode_nodes: 6"}),
    run_case("dram-tiny", "s.yaml:5", "cluster.dram_buffer_gb",
             **{"decode_nodes: 4}": "decode_nodes: 4, dram_buffer_gb: 0.001}"}),
    run_case("dram-huge", "s.yaml:5", "cluster.dram_buffer_gb",
             **{"decode_nodes: 4}": "decode_nodes: 4, dram_buffer_gb: 1.0e+12}"}),
    run_case("systems-unknown", "s.yaml:6", "systems[0]", **{"[dualpath]": "[dualpth]"}),
    run_case("systems-twice", "s.yaml:6", "systems[1]", **{"[dualpath]": "[dualpath, dualpath]"}),
    run_case("systems-empty", "s.yaml:6", "systems", **{"[dualpath]": "[]"}),
    run_case("window-tiny", "s.yaml:7", "telemetry.window_s", **{"window_s: 10.0": "window_s: 0.0001"}),
    run_case("window-text-exponent", "s.yaml:7", "telemetry.window_s", **{"window_s: 10.0": "window_s: 1e-300"}),
    run_case("window-nan", "s.yaml:7", "telemetry.window_s", **{"window_s: 10.0": "window_s: .nan"}),
    run_case("arrival-unknown-mode", "s.yaml:8", "arrival.mode", "arrival: {mode: burst}\n"),
    run_case("arrival-rate-missing", "s.yaml:8", "arrival.rate_aps", "arrival: {mode: poisson}\n"),
    run_case("arrival-rate-huge", "s.yaml:8", "arrival.rate_aps", "arrival: {mode: poisson, rate_aps: 1.0e+30}\n"),
    run_case("arrival-rate-text", "s.yaml:8", "arrival.rate_aps", "arrival: {mode: poisson, rate_aps: 1e3}\n"),
    run_case("arrival-trace-with-synth", "s.yaml:8", "arrival.mode", "arrival: {mode: trace}\n"),
    run_case("arrival-shape-not-gamma", "s.yaml:8", "arrival.shape", "arrival: {mode: poisson, rate_aps: 1, shape: 2}\n"),
    run_case("slo-negative", "s.yaml:8", "slo.ttft_s", "slo: {ttft_s: -1}\n"),
    run_case("slo-percentile-100", "s.yaml:8", "slo.percentile", "slo: {ttft_s: 1, percentile: 100}\n"),
    run_case("sim-unknown-constant", "s.yaml:8", "sim.snic_eff", "sim: {snic_eff: 0.5}\n"),
    run_case("sim-efficiency-1e-300", "s.yaml:8", "sim.snic_efficiency", "sim: {snic_efficiency: 1.0e-300}\n"),
    run_case("sim-efficiency-text", "s.yaml:8", "sim.snic_efficiency", "sim: {snic_efficiency: 1e-300}\n"),
    run_case("sim-mfu-zero", "s.yaml:8", "sim.decode_mfu", "sim: {decode_mfu: 0}\n"),
    run_case("sim-parallelism-huge", "s.yaml:8", "sim.read_parallelism", "sim: {read_parallelism: 100000000}\n"),
    run_case("sim-quota-tiny", "s.yaml:8", "sim.compute_quota_s", "sim: {compute_quota_s: 1.0e-20}\n"),
    run_case("sim-list", "s.yaml:8", "sim.snic_efficiency", "sim: {snic_efficiency: [1]}\n"),
    run_case("endpoint-on-sim", "s.yaml:8", "endpoint", "endpoint: {url: 'http://127.0.0.1:1'}\n"),
    run_case("capacity-start-above-max", "s.yaml:8", "capacity.rate_aps_start",
             "capacity: {rate_aps_start: 5, rate_aps_max: 1}\n"),
    run_case("capacity-probes-huge", "s.yaml:8", "capacity.max_probes", "capacity: {max_probes: 100000000}\n"),
    run_case("alias-bomb", "s.yaml:", None, "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, "
             "*a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, "
             "*c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"),
    run_case("bad-date", "s.yaml:8", None, "description: 2024-13-45\n"),

    # ----- --set overrides -----
    set_case("set-no-equals", "cluster.decode_nodes", None, "--set"),
    set_case("set-empty-key", "=3", None, "--set"),
    set_case("set-unknown-key", "cluster.nodes=3", "cluster.nodes"),
    set_case("set-unknown-top", "colour=red", "colour"),
    set_case("set-bad-yaml", "slo.ttft_s=[1", "slo.ttft_s"),
    set_case("set-agents-1e12", "trace.synth.agents=1e12", "trace.synth.agents"),
    set_case("set-agents-3e7", "trace.synth.agents=3e7", "trace.synth.agents"),
    set_case("set-agents-negative", "trace.synth.agents=-4", "trace.synth.agents"),
    set_case("set-decode-nodes-huge", "cluster.decode_nodes=100000", "cluster.decode_nodes"),
    set_case("set-prefill-group", "cluster.prefill_group_nodes=3", "cluster.prefill_group_nodes"),
    set_case("set-window-tiny", "telemetry.window_s=0.0001", "telemetry.window_s"),
    set_case("set-snic-1e-300", "sim.snic_efficiency=1e-300", "sim.snic_efficiency"),
    set_case("set-snic-1.0e-300", "sim.snic_efficiency=1.0e-300", "sim.snic_efficiency"),
    set_case("set-snic-negative", "sim.snic_efficiency=-1", "sim.snic_efficiency"),
    set_case("set-sim-unknown", "sim.warp=9", "sim.warp"),
    set_case("set-into-scalar", "cluster.prefill_nodes.x=1", "cluster.prefill_nodes.x"),
    set_case("set-system-unknown", "systems=[basic,dualpat]", "systems[1]"),
    set_case("set-backend-unknown", "backend=quantum", "backend"),
    set_case("set-model-unknown", "model=gpt-9", "model"),
    set_case("set-seed-text", "seed=abc", "seed"),
    set_case("set-rate-inf", "arrival.rate_aps=.inf", "arrival.rate_aps"),
    set_case("set-trace-path-missing", "trace.path=nope.parquet", "trace"),
    set_case("set-dram-tiny", "cluster.dram_buffer_gb=0.001", "cluster.dram_buffer_gb"),

    # ----- CLI flags -----
    Case("cli-no-command", [], "dualpath"),
    Case("cli-unknown-command", ["fly"], "dualpath"),
    Case("cli-unknown-flag", ["run", "s.yaml", "--fast"], "dualpath", "--fast", {"s.yaml": BASE}),
    Case("cli-repeats-zero", ["run", "s.yaml", "--repeats", "0"], "dualpath run", "--repeats", {"s.yaml": BASE}),
    Case("cli-repeats-text", ["run", "s.yaml", "--repeats", "x"], "dualpath run", "--repeats", {"s.yaml": BASE}),
    Case("cli-capacity-repeats", ["run", "s.yaml", "--capacity", "--repeats", "2"], "", "--repeats",
         {"s.yaml": sc("slo: {ttft_s: 4}\n")}),
    Case("cli-capacity-no-slo", ["run", "s.yaml", "--capacity"], "s.yaml", "slo", {"s.yaml": BASE}),
    Case("cli-capacity-window", ["run", "s.yaml", "--capacity"], "s.yaml:7", "telemetry.window_s",
         {"s.yaml": sc("slo: {ttft_s: 4}\n", **{"window_s: 10.0": "window_s: 0.001"})}),
    Case("cli-capacity-agents", ["run", "s.yaml", "--capacity", "--set", "capacity.rate_aps_max=100000"], "--set:",
         "capacity.rate_aps_max", {"s.yaml": sc("slo: {ttft_s: 4}\n")}),
    synth_case("synth-agents-zero", "--agents", "0", key="--agents"),
    synth_case("synth-agents-negative", "--agents", "-3", key="--agents"),
    synth_case("synth-agents-1e12", "--agents", "1000000000000", key="--agents"),
    synth_case("synth-agents-text", "--agents", "many", key="--agents"),
    synth_case("synth-agents-3e7", "--agents", "3e7", key="--agents"),
    synth_case("synth-max-context-zero", "--agents", "2", "--max-context", "0", key="max_context"),
    synth_case("synth-block-size-zero", "--agents", "2", "--block-size", "0", key="block_size"),
    synth_case("synth-turns-nan", "--agents", "2", "--turns-mean", "nan", key="turns_mean"),
    synth_case("synth-set-unknown", "--agents", "2", "--set", "warp=9", key="warp"),
    synth_case("synth-tool-latency-inf", "--agents", "2", "--tool-latency-mean", "inf", key="tool_latency_mean"),
    Case("synth-preset-unknown", ["trace", "synth", "--preset", "huge", "--agents", "2", "-o", "o.jsonl"], "",
         "--preset"),
    Case("synth-no-output", ["trace", "synth", "--agents", "2"], "dualpath trace synth", "-o"),
    Case("synth-output-suffix", ["trace", "synth", "--preset", "smoke", "--agents", "2", "-o", "o.txt"], "-o"),
    Case("synth-output-under-a-file", ["trace", "synth", "--preset", "smoke", "--agents", "2", "-o", "f/o.jsonl"],
         "", "f/o.jsonl", {"f": "a file, not a directory\n"}),
    Case("export-block-size-zero", ["trace", "export", "t.jsonl", "--format", "mooncake", "--block-size", "0",
                                    "-o", "o.jsonl"], "", "--block-size", {"t.jsonl": jl(ROW)}),
    Case("import-unknown-format", ["trace", "import", "m.jsonl", "--format", "csv", "-o", "o.parquet"],
         "dualpath trace import", "--format", {"m.jsonl": jl(MC)}),
    Case("report-missing-dir", ["report", "nothere"], "nothere"),
    Case("gate-missing-dir", ["gate", "--baseline", "nothere", "--candidate", "nothere2"], "", "nothere"),

    # ----- absurd sizes on the default scenario (each refused within seconds, before anything is written) -----
    Case("default-window-0.001", ["run", "--set", "telemetry.window_s=0.001"], "--set:", "telemetry.window_s"),
    Case("default-snic-1e-300", ["run", "--set", "sim.snic_efficiency=1e-300"], "--set:", "sim.snic_efficiency"),
    Case("default-decode-nodes-100000", ["run", "--set", "cluster.decode_nodes=100000", "--set",
                                         "trace.synth.agents=16"], "--set:", "cluster.decode_nodes"),
    Case("default-tool-latency-huge", ["run", "--set", "trace.synth.tool_latency_mean=1.0e+12", "--set",
                                       "trace.synth.agents=4"], DEFAULT, "telemetry.window_s"),
]


def _write(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_the_table_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, case.files)
    before = _tree(tmp_path)
    r = cli(*case.args)
    assert r.rc == 2, (r.rc, r.err[-2000:])
    assert "Traceback" not in r.err
    assert len(r.err_lines) == 1, r.err
    line = r.err_lines[0]
    assert line.startswith(case.where) or line.startswith(str(tmp_path / case.where)), line
    if case.key:
        assert case.key in line, line
    assert _tree(tmp_path) == before, sorted(_tree(tmp_path) - before)


SUBPROCESS = ["trace-not-json", "set-agents-1e12", "default-window-0.001", "synth-agents-1e12",
              "default-decode-nodes-100000"]


@pytest.mark.parametrize("name", SUBPROCESS)
def test_the_real_command_exits_2_quickly(name, tmp_path):
    case = next(c for c in CASES if c.id == name)
    _write(tmp_path, case.files)
    before = _tree(tmp_path)
    env = {**os.environ, "DUALPATH_PROGRESS": "0"}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "harness.cli", *case.args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**env, "PYTHONPATH": str(REPO)})
    took = time.monotonic() - t0
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stdout == ""
    assert _tree(tmp_path) == before
    print(f"{name}: refused in {took:.1f} s")


def test_gzip_case_helper_writes_real_gzip(tmp_path):
    """The bad-gzip case above is a gzip header and junk; a real gzipped trace of the same row is read."""
    path = tmp_path / "ok.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(jl(ROW))
    from traces.io import read_trace
    assert read_trace(str(path)).num_rounds == 1
