"""harness.scenario: loading, validation (file, line, dotted key, what is allowed), --set, profiles."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.scenario import SCHEMA, SYSTEMS, dump_scenario, load_scenario, resolve_profile
from traces.errors import InputError

BASE = """\
name: unit
trace:
  synth: {preset: paper-32k, agents: 8}
model: tiny
hardware: box
cluster:
  prefill_nodes: 1
  decode_nodes: 2
"""


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository root with one model and one hardware profile (the real ones live elsewhere)."""
    (tmp_path / "scenarios" / "models").mkdir(parents=True)
    (tmp_path / "scenarios" / "hardware").mkdir(parents=True)
    (tmp_path / "scenarios" / "models" / "tiny.yaml").write_text("layers: 2\nhidden: 64\n")
    (tmp_path / "scenarios" / "models" / "small.yaml").write_text("layers: 4\n")
    (tmp_path / "scenarios" / "hardware" / "box.yaml").write_text("gpus_per_node: 8\nsnic_gbps: 400\n")
    return tmp_path


def write(repo: Path, text: str, name: str = "s.yaml") -> Path:
    path = repo / "scen" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(repo: Path, text: str, overrides=()):
    return load_scenario(write(repo, text), overrides, repo_root=repo)


def error(repo: Path, text: str, overrides=()) -> InputError:
    with pytest.raises(InputError) as err:
        load(repo, text, overrides)
    return err.value


# ----- valid scenarios and defaults -------------------------------------------------------------------
def test_minimal_sim_scenario_gets_every_default(repo):
    assert load(repo, BASE) == {
        "name": "unit", "backend": "sim",
        "trace": {"synth": {"preset": "paper-32k", "agents": 8, "seed": 1}},
        "model": "tiny", "hardware": "box", "cluster": {"prefill_nodes": 1, "decode_nodes": 2},
        "systems": ["basic", "dualpath"], "arrival": {"mode": "offline", "seed": 1},
        "telemetry": {"window_s": 1.0}, "seed": 1,
    }


def test_http_scenario_needs_no_engine_description(repo):
    s = load(repo, """\
        name: ext
        backend: http
        trace: {synth: {preset: paper-64k, agents: 2, append_mean: 400}}
        endpoint: {url: "http://127.0.0.1:8000", model: m, prometheus: ["http://h:9090/metrics"]}
        arrival: {mode: gamma, rate_aps: 2, shape: 0.5}
        max_concurrency: 64
        systems: [vllm-a, sglang_b]
        seed: 3
        """)
    assert s["systems"] == ["vllm-a", "sglang_b"] and s["endpoint"]["ignore_eos"] is True
    assert s["arrival"] == {"mode": "gamma", "rate_aps": 2.0, "shape": 0.5, "seed": 3}
    assert s["trace"]["synth"] == {"preset": "paper-64k", "agents": 2, "seed": 3, "append_mean": 400.0}
    assert "model" not in s and "cluster" not in s
    assert load(repo, "name: e\nbackend: http\ntrace: {synth: {preset: paper-32k, agents: 1}}\n"
                "endpoint: {url: 'https://x'}\n")["systems"] == ["external"]


def test_trace_path_is_relative_to_the_scenario_file(repo):
    (repo / "scen").mkdir()
    (repo / "scen" / "data").mkdir()
    (repo / "scen" / "data" / "t.jsonl").write_text("")
    s = load(repo, BASE.replace("synth: {preset: paper-32k, agents: 8}", "path: data/t.jsonl\n  agents: 3"))
    assert s["trace"] == {"path": str((repo / "scen" / "data" / "t.jsonl").resolve()), "format": "auto", "agents": 3}
    e = error(repo, BASE.replace("synth: {preset: paper-32k, agents: 8}", "path: data/missing.jsonl"))
    assert (e.field, e.line) == ("trace.path", 3) and "no such file" in e.problem


def test_model_and_hardware_may_be_paths(repo):
    (repo / "scen").mkdir()
    (repo / "scen" / "my-model.yaml").write_text("layers: 1\n")
    s = load(repo, BASE.replace("model: tiny", "model: ./my-model.yaml"))
    assert s["model"] == str((repo / "scen" / "my-model.yaml").resolve())


def test_dump_then_load_gives_the_same_scenario(repo, tmp_path):
    s = load(repo, BASE + "slo: {ttft_s: 4, tpot_s: 0.05, percentile: 99}\n"
             "sim: {snic_efficiency: 0.9, read_parallelism: 4}\n"
             "capacity: {rate_aps_start: 1, rate_aps_max: 8, max_probes: 5, horizon_s: 900}\n")
    out = tmp_path / "resolved.yaml"
    dump_scenario(s, out)
    assert load_scenario(out, repo_root=repo) == s
    text = out.read_text()
    assert text.index("name:") < text.index("trace:") < text.index("cluster:") < text.index("slo:")


# ----- errors: file, line, dotted key, what is allowed ------------------------------------------------
@pytest.mark.parametrize("text, field, line, words", [
    (BASE + "colour: red\n", "colour", 9, ["unknown key", "allowed: name, description, backend"]),
    (BASE.replace("prefill_nodes", "prefil_nodes"), "cluster.prefil_nodes", 7,
     ["unknown key", "did you mean prefill_nodes?", "allowed: prefill_nodes, decode_nodes, prefill_group_nodes"]),
    (BASE.replace("decode_nodes: 2", "decode_nodes: two"), "cluster.decode_nodes", 8, ["an integer in [1, 1,024]", "'two'"]),
    (BASE.replace("decode_nodes: 2", "decode_nodes: 0"), "cluster.decode_nodes", 8, ["[1, 1,024], got 0"]),
    (BASE.replace("decode_nodes: 2", "decode_nodes: true"), "cluster.decode_nodes", 8, ["an integer"]),
    (BASE + "backend: simulator\n", "backend", 9, ["one of sim, http", "'simulator'"]),
    (BASE + "systems:\n  - basic\n  - dualpth\n", "systems[1]", 11,
     ["one of basic, layerwise, dualpath-rr, dualpath, oracle", "did you mean dualpath?"]),
    (BASE + "systems: [basic, basic]\n", "systems[1]", 9, ["listed twice"]),
    (BASE + "systems: basic\n", "systems", 9, ["a list"]),
    (BASE + "arrival: {mode: poisson}\n", "arrival.rate_aps", 9, ["required for mode poisson"]),
    (BASE + "arrival: {mode: poisson, rate_aps: 1, shape: 2}\n", "arrival.shape", 9, ["only for mode gamma"]),
    (BASE + "arrival: {mode: offline, rate_aps: 1}\n", "arrival.rate_aps", 9, ["only for modes poisson"]),
    (BASE + "arrival: {mode: poisson, rate_aps: 1e3}\n", "arrival.rate_aps", 9, ["a number in (0, 1,000,000]", "write 1000.0"]),
    (BASE + "arrival: {mode: constant, rate_aps: -1}\n", "arrival.rate_aps", 9, ["a number in (0, 1,000,000], got -1"]),
    (BASE + "slo:\n  ttft_s: 4\n  percentile: 100\n", "slo.percentile", 11, ["in (0, 100)"]),
    (BASE + "slo: {percentile: 99}\n", "slo.percentile", 9, ["at least one target"]),
    (BASE + "telemetry: {window_s: .nan}\n", "telemetry.window_s", 9, ["a number in [0.001, "]),
    (BASE + "endpoint: {url: 'http://x'}\n", "endpoint", 9, ["only for backend http"]),
    (BASE + "max_concurrency: 4\n", "max_concurrency", 9, ["only for backend http"]),
    (BASE + "sim: {a: [1, 2]}\n", "sim.a", 9, ["a scalar"]),
    (BASE + "capacity: {rate_aps_start: 9, rate_aps_max: 8}\n", "capacity.rate_aps_start", 9, ["<= capacity"]),
    (BASE + "report: {figures: [jct]}\n", "report", 9, ["unknown key", "allowed: name,"]),
    (BASE.replace("name: unit", "name: my run"), "name", 1, ["letters, digits"]),
    (BASE.replace("name: unit\n", ""), "name", 1, ["required"]),  # missing: where the mapping starts
    (BASE.replace("model: tiny\n", ""), "model", 1, ["required for backend sim", "scenarios/models/"]),
    (BASE.replace("model: tiny", "model: tiny2"), "model", 4, ["unknown model 'tiny2'", "available: small, tiny"]),
    (BASE.replace("hardware: box", "hardware: ./nope.yaml"), "hardware", 5, ["no such hardware profile file"]),
    (BASE.replace("cluster:\n  prefill_nodes: 1\n  decode_nodes: 2\n", ""), "cluster", 1,
     ["required for backend sim"]),
    (BASE.replace("  decode_nodes: 2\n", ""), "cluster.decode_nodes", 6, ["required for backend sim"]),
    (BASE.replace("agents: 8}", "agents: 8, colour: 1}"), "trace.synth.colour", 3,
     ["unknown key", "turns_mean", "append_mean"]),
    (BASE.replace("agents: 8}", "agents: 8, full_fraction: 2}"), "trace.synth.full_fraction", 3, ["[0, 1]"]),
    (BASE.replace("paper-32k", "paper-16k"), "trace.synth.preset", 3, ["one of paper-32k, paper-48k, paper-64k"]),
    (BASE.replace("agents: 8", "agents: 0"), "trace.synth.agents", 3, ["[1, 10,000,000]"]),
    (BASE.replace("preset: paper-32k, ", ""), "trace.synth.preset", 3, ["required"]),
    (BASE.replace("{preset: paper-32k, agents: 8}", "{preset: paper-32k, agents: 8}\n  path: x.parquet"),
     "trace", 2, ["exactly one of trace.synth or trace.path"]),
    (BASE.replace("  synth: {preset: paper-32k, agents: 8}\n", "  agents: 3\n"), "trace", 2, ["exactly one"]),
    (BASE.replace("agents: 8}", "agents: 8}\n  format: jsonl"), "trace.format", 4, ["only with trace.path"]),
    (BASE + "name: again\n", "", 9, ["duplicate key 'name'"]),
])
def test_wrong_keys_and_values_name_file_line_key_and_what_is_allowed(repo, text, field, line, words):
    e = error(repo, text)
    assert e.path == str(repo / "scen" / "s.yaml")
    assert (e.field or "") == field and e.line == line, e.render()
    for word in words:
        assert word in e.problem, e.render()
    assert e.render().startswith(f"{e.path}:{line}: " if line else f"{e.path}: ")


def test_http_backend_requires_an_endpoint_with_an_http_url(repo):
    e = error(repo, "name: e\nbackend: http\ntrace: {synth: {preset: paper-32k, agents: 1}}\n")
    assert e.field == "endpoint" and "required for backend http" in e.problem
    e = error(repo, "name: e\nbackend: http\ntrace: {synth: {preset: paper-32k, agents: 1}}\n"
              "endpoint:\n  model: m\n  url: ftp://x\n")
    assert (e.field, e.line) == ("endpoint.url", 6) and "http:// or https://" in e.problem
    e = error(repo, "name: e\nbackend: http\ntrace: {synth: {preset: paper-32k, agents: 1}}\nendpoint: {model: m}\n")
    assert (e.field, e.line) == ("endpoint.url", 4) and e.problem == "required"


def test_bad_yaml_missing_empty_and_non_mapping_files(repo, tmp_path):
    e = error(repo, "name: x\ntrace: {synth: [\n")
    assert e.line == 3 and "invalid YAML" in e.problem
    e = error(repo, "name: x\n  bad: indent\n")
    assert e.line == 2 and "invalid YAML" in e.problem
    with pytest.raises(InputError) as err:
        load_scenario(tmp_path / "nope.yaml")
    assert err.value.path == str(tmp_path / "nope.yaml") and "no such file" in err.value.problem
    assert "empty scenario" in error(repo, "# nothing\n").problem
    e = error(repo, "- a\n- b\n")
    assert e.line == 1 and "a YAML mapping" in e.problem


@settings(max_examples=25, deadline=None)
@given(key=st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True), position=st.integers(0, 2))
def test_any_unknown_cluster_key_is_reported_at_its_line(tmp_path_factory, key, position):
    fields = SCHEMA.fields["cluster"].fields
    if key in fields:
        return
    repo = tmp_path_factory.mktemp("r")
    (repo / "scenarios" / "models").mkdir(parents=True)
    (repo / "scenarios" / "hardware").mkdir(parents=True)
    (repo / "scenarios" / "models" / "tiny.yaml").write_text("a: 1\n")
    (repo / "scenarios" / "hardware" / "box.yaml").write_text("a: 1\n")
    lines = BASE.splitlines()
    lines.insert(6 + position, f"  {key}: 1")
    e = error(repo, "\n".join(lines) + "\n")
    assert (e.field, e.line) == (f"cluster.{key}", 7 + position)
    assert "allowed: " + ", ".join(fields) in e.problem


# ----- --set ----------------------------------------------------------------------------------------
def test_set_overrides_lists_nested_values_and_new_mappings(repo):
    s = load(repo, BASE, ["systems=[basic,dualpath,oracle]", "trace.synth.agents=512", "slo.ttft_s=3",
                          "sim.snic_efficiency=0.8", "seed=5", "backend=sim"])
    assert s["systems"] == ["basic", "dualpath", "oracle"] and s["trace"]["synth"]["agents"] == 512
    assert s["slo"] == {"ttft_s": 3.0} and s["sim"] == {"snic_efficiency": 0.8} and s["backend"] == "sim"
    assert s["trace"]["synth"]["seed"] == 5 and s["arrival"]["seed"] == 5  # defaults follow the seed


def test_set_null_removes_a_key_and_later_sets_win(repo):
    text = BASE + "arrival: {mode: poisson, rate_aps: 2}\n"
    s = load(repo, text, ["arrival.mode=offline", "arrival.rate_aps=null", "cluster.decode_nodes=3",
                          "cluster.decode_nodes=4"])
    assert s["arrival"] == {"mode": "offline", "seed": 1} and s["cluster"]["decode_nodes"] == 4


@pytest.mark.parametrize("override, field, words", [
    ("cluster.prefil_nodes=3", "cluster.prefil_nodes", ["unknown key", "allowed: prefill_nodes"]),
    ("colour.shade=1", "colour", ["unknown key", "allowed: name,"]),  # no mapping made outside the schema
    ("trace.synth.agents=many", "trace.synth.agents", ["an integer in [1, 10,000,000]", "'many'"]),
    ("systems=[basic,dualpat]", "systems[1]", ["did you mean dualpath?"]),
    ("cluster.prefill_nodes.x=1", "cluster.prefill_nodes.x",
     ["cluster.prefill_nodes is an integer in [1, 1,024], not a mapping"]),
    ("sim.a.b=1", "sim.a.b", ["sim.a is a scalar, not a mapping"]),
    ("slo.ttft_s=[1", "slo.ttft_s", ["not valid YAML"]),
    ("arrival.mode=poisson", "arrival.rate_aps", ["required for mode poisson"]),
    ("model=huge", "model", ["unknown model 'huge'", "available: small, tiny"]),
    ("trace.path=x.parquet", "trace.path", ["exactly one of", "--set trace.synth=null"]),
    ("name=", "name", ["required"]),
])
def test_set_errors_name_set_and_the_key(repo, override, field, words):
    e = error(repo, BASE, [override])
    assert e.path == "--set" and e.field == field and e.line is None, e.render()
    for word in words:
        assert word in e.problem, e.render()
    assert e.render().startswith(f"--set: {field}: ")


@pytest.mark.parametrize("override", ["noequals", "=3", "a..b=1"])
def test_malformed_set_is_an_error(repo, override):
    e = error(repo, BASE, [override])
    assert e.path == "--set" and "KEY.PATH=VALUE" in e.problem


def test_set_trace_path_is_relative_to_the_working_directory(repo, monkeypatch):
    (repo / "work").mkdir()
    (repo / "work" / "t.parquet").write_bytes(b"")
    monkeypatch.chdir(repo / "work")
    s = load(repo, BASE, ["trace.synth=null", "trace.path=t.parquet", "trace.format=parquet"])
    assert s["trace"] == {"path": str((repo / "work" / "t.parquet").resolve()), "format": "parquet"}


# ----- profiles ------------------------------------------------------------------------------------
def test_resolve_profile_by_name_and_by_path(repo):
    assert resolve_profile("model", "tiny", repo) == ("tiny", {"layers": 2, "hidden": 64})
    path = repo / "scenarios" / "hardware" / "box.yaml"
    assert resolve_profile("hardware", str(path), repo) == ("box", {"gpus_per_node": 8, "snic_gbps": 400})


def test_resolve_profile_errors_list_names_and_locate_bad_files(repo):
    with pytest.raises(InputError) as err:
        resolve_profile("hardware", "boxx", repo)
    assert "unknown hardware 'boxx'" in err.value.problem and "available: box" in err.value.problem
    assert "did you mean box?" in err.value.problem
    bad = repo / "scenarios" / "models" / "broken.yaml"
    bad.write_text("layers: 2\nhidden: [1,\n")
    with pytest.raises(InputError) as err:
        resolve_profile("model", "broken", repo)
    assert err.value.path == str(bad) and err.value.line == 3
    (repo / "scenarios" / "models" / "listy.yaml").write_text("- 1\n")
    with pytest.raises(InputError, match="a model profile is a YAML mapping"):
        resolve_profile("model", "listy", repo)
    with pytest.raises(InputError, match="none yet in scenarios/hardware/"):
        resolve_profile("hardware", "x", repo / "scen")


def test_every_system_name_is_accepted_for_our_backends(repo):
    assert load(repo, BASE, [f"systems=[{','.join(SYSTEMS)}]"])["systems"] == list(SYSTEMS)


# ----- review findings: keys the code reads, cross-checks with defaults, YAML the loader must refuse ------
def test_capacity_horizon_is_a_key(repo):
    s = load(repo, BASE + "capacity: {horizon_s: 1200}\n")
    assert s["capacity"] == {"horizon_s": 1200.0}
    e = error(repo, BASE + "capacity: {horizon_s: 0}\n")
    assert (e.field, e.line) == ("capacity.horizon_s", 9) and "a number in (0, 10,000,000]" in e.problem


@pytest.mark.parametrize("capacity, field, words", [
    ("{rate_aps_max: 0.01}", "capacity.rate_aps_max", [">= capacity.rate_aps_start (0.05, the default)"]),
    ("{rate_aps_start: 30}", "capacity.rate_aps_start", ["<= capacity.rate_aps_max (20, the default)"]),
    ("{rate_aps_start: 9, rate_aps_max: 8}", "capacity.rate_aps_start", ["<= capacity.rate_aps_max (8)"]),
    ("{horizon_s: 600}", "capacity.horizon_s", ["> capacity.warmup_s (600 s, the default)"]),
    ("{warmup_s: 100, horizon_s: 50}", "capacity.horizon_s", ["> capacity.warmup_s (100 s)"]),
])
def test_capacity_cross_checks_count_the_defaults(repo, capacity, field, words):
    from harness.capacity import DEFAULTS

    assert DEFAULTS["rate_aps_start"] == 0.05 and DEFAULTS["rate_aps_max"] == 20  # what the words say
    e = error(repo, BASE + f"capacity: {capacity}\n")
    assert (e.field, e.line) == (field, 9), e.render()
    for word in words:
        assert word in e.problem, e.render()


@settings(max_examples=30, deadline=None)
@given(start=st.floats(0.001, 50), top=st.one_of(st.none(), st.floats(0.001, 50)))
def test_capacity_rates_load_exactly_when_start_is_at_most_max(tmp_path_factory, start, top):
    from harness.capacity import DEFAULTS

    repo = tmp_path_factory.mktemp("r")
    (repo / "scenarios" / "models").mkdir(parents=True)
    (repo / "scenarios" / "hardware").mkdir(parents=True)
    (repo / "scenarios" / "models" / "tiny.yaml").write_text("a: 1\n")
    (repo / "scenarios" / "hardware" / "box.yaml").write_text("a: 1\n")
    given_max = "" if top is None else f", rate_aps_max: {top!r}"
    text = BASE + f"capacity: {{rate_aps_start: {start!r}{given_max}}}\n"
    if start <= (DEFAULTS["rate_aps_max"] if top is None else top):
        assert load(repo, text)["capacity"]["rate_aps_start"] == start
    else:
        assert error(repo, text).field == "capacity.rate_aps_start"


ANY_LINE = object()


@pytest.mark.parametrize("tail, field, line, words", [
    ("trace_copy: &t {x: [*t]}\n", "trace_copy.x[0]", 9, ["alias inside the value it names"]),
    ("sim: &t {a: *t}\n", "sim.a", 9, ["alias inside the value it names"]),
    ("? [a, b]\n: 1\n", "", 9, ["a key must be a plain name"]),
    ("cluster2:\n  ? {a: 1}\n  : 2\n", "cluster2", 10, ["a key must be a plain name"]),
    ("x: 2024-13-45\n", "x", 9, ["invalid YAML value '2024-13-45'", "month"]),
    ("x: !!float abc\n", "x", 9, ["invalid YAML value 'abc'"]),
    ("x: " + "9" * 5000 + "\n", "x", 9, ["invalid YAML value '99999", "4300 digits"]),
    ("x: " + "[" * 3000 + "]" * 3000 + "\n", "", None, ["nested too deeply"]),
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     "e[", ANY_LINE, ["more than 100,000 values"]),  # a billion laughs, cut short
    ("arrival: {mode: poisson, rate_aps: 1" + "0" * 400 + "}\n", "arrival.rate_aps", 9,
     ["a number in (0, 1,000,000], got an integer too large"]),
    ("arrival: {mode: poisson, rate_aps: 1, seed: -5}\n", "arrival.seed", 9, ["an integer in [0, 4,294,967,295], got -5"]),
    ("seed: -1\n", "seed", 9, ["an integer in [0, 4,294,967,295], got -1"]),
    ("telemetry: {window_s: 1.0e-7}\n", "telemetry.window_s", 9, ["a number in [0.001, "]),
    ("arrival: {mode: trace}\n", "arrival.mode", 9, ["synthetic trace has none", "offline, poisson, gamma, constant"]),
    ("live: {transport: udp}\n", "live.transport", 9, ["'udp'", "tcp, shm"]),  # accepted and checked for sim too
    ("sim: {snic_eficiency: 0.5}\n", "sim.snic_eficiency", 9, ["unknown simulator constant", "snic_efficiency"]),
    ("sim: {snic_efficiency: 1" + "0" * 400 + "}\n", "sim.snic_efficiency", 9, ["too large"]),
])
def test_yaml_and_values_that_used_to_crash_are_one_located_error(repo, tail, field, line, words):
    e = error(repo, BASE.replace("trace:\n  synth: {preset: paper-32k, agents: 8}\n",
                                 "trace:\n  synth: {preset: paper-32k, agents: 8, seed: 0}\n") + tail)
    assert e.path == str(repo / "scen" / "s.yaml")
    assert (e.field or "").startswith(field) and (line is ANY_LINE or e.line == line), e.render()
    for word in words:
        assert word in e.problem, e.render()
    assert len(e.render().splitlines()) == 1 and len(e.render()) < 1000


def test_synth_seed_must_be_at_least_zero(repo):
    e = error(repo, BASE.replace("agents: 8}", "agents: 8, seed: -3}"))
    assert (e.field, e.line) == ("trace.synth.seed", 3) and "an integer in [0, " in e.problem
    assert load(repo, BASE, ["seed=0"])["arrival"]["seed"] == 0


def test_window_of_a_millisecond_is_the_smallest(repo):
    assert load(repo, BASE + "telemetry: {window_s: 0.001}\n")["telemetry"] == {"window_s": 0.001}


@pytest.mark.parametrize("override, field, words", [
    ("sim.foo=1", "sim.foo", ["unknown simulator constant", "allowed: snic_efficiency"]),
    ("sim.snic_efficiency=0", "sim.snic_efficiency", ["> 0"]),
    ("sim.x=2024-13-45", "sim.x", ["not valid YAML", "month"]),
    ("seed=" + "9" * 5000, "seed", ["not valid YAML", "4300 digits"]),
    ("arrival.mode=trace", "arrival.mode", ["synthetic trace has none"]),
    ("live.compute=real", "live.compute", ["modeled"]),
    ("report.when=2024-01-01", "report", ["unknown key"]),
    ("report={1: a, b: c}", "report", ["unknown key"]),
    ("capacity.rate_aps_max=0.01", "capacity.rate_aps_max", [">= capacity.rate_aps_start (0.05, the default)"]),
    ("arrival.seed=-5", "arrival.seed", ["[0, "]),
    ("telemetry.window_s=1.0e-7", "telemetry.window_s", ["[0.001, "]),
])
def test_set_errors_from_review_name_set(repo, override, field, words):
    e = error(repo, BASE + "sim: {snic_efficiency: 0.5}\n", [override])
    assert e.path == "--set" and e.field == field and e.line is None, e.render()
    for word in words:
        assert word in e.problem, e.render()
    assert e.render().startswith(f"--set: {field}: ")


def test_sim_key_from_the_file_is_blamed_on_its_line(repo):
    e = error(repo, BASE + "sim:\n  snic_efficiency: 0.5\n  read_paralelism: 4\n")
    assert (e.path, e.line, e.field) == (str(repo / "scen" / "s.yaml"), 11, "sim.read_paralelism")


def test_arrival_trace_is_fine_with_a_trace_file(repo):
    (repo / "scen").mkdir()
    (repo / "scen" / "t.jsonl").write_text("")
    s = load(repo, BASE.replace("synth: {preset: paper-32k, agents: 8}", "path: t.jsonl") + "arrival: {mode: trace}\n")
    assert s["arrival"] == {"mode": "trace", "time_scale": 1.0, "seed": 1}


# Hypothesis: whatever the text of a scenario file, loading it is a scenario or one InputError.
YAMLISH = st.lists(st.sampled_from(list("ab: -[]{},?|'\"\n#.01e9x") + [
    "  ", "name", "trace", "synth", "seed", "sim", "!!", "<<", "&t ", "*t", "? ", "2024-13-45", "1" + "0" * 400,
    "!!float ", "!!int ", "!!bool ", "!!timestamp ", "-1"]), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(tail=YAMLISH)
def test_any_text_loads_or_is_one_input_error(tmp_path_factory, tail):
    repo = tmp_path_factory.mktemp("r")
    path = repo / "s.yaml"
    path.write_text(BASE + tail)
    try:
        load_scenario(path, repo_root=repo)
    except InputError as exc:
        assert "\n" not in exc.render()


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["seed", "sim.snic_efficiency", "arrival", "trace.synth", "telemetry.window_s",
                            "cluster", "capacity", "systems"]), value=YAMLISH)
def test_any_set_value_loads_or_is_one_input_error(tmp_path_factory, key, value):
    repo = tmp_path_factory.mktemp("r")
    path = repo / "s.yaml"
    path.write_text(BASE)
    try:
        load_scenario(path, [f"{key}={value}"], repo_root=repo)
    except InputError as exc:
        assert "\n" not in exc.render()


# ----- --json: strict JSON whatever the summary holds ---------------------------------------------------
def test_emit_json_is_strict_json(capsys):
    import datetime as dt
    import json

    import numpy as np

    from harness.cli import emit_json

    emit_json({"nan": float("nan"), "inf": np.float64("inf"), "neg": -float("inf"), 1: "one",
               "when": dt.date(2024, 1, 1), "nested": {2: [np.int64(3), float("nan")], "b": "c"}})
    out = capsys.readouterr().out

    def refuse(const):
        raise AssertionError(f"not strict JSON: {const}")

    doc = json.loads(out, parse_constant=refuse)
    assert doc == {"nan": None, "inf": None, "neg": None, "1": "one", "when": "2024-01-01",
                   "nested": {"2": [3, None], "b": "c"}}


def test_bad_set_with_json_is_one_line_and_nothing_on_stdout(cli, tmp_path):
    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "paper" / "offline-ds660b-64k.yaml"
    for override in ("report.when=2024-01-01", "report={1: a, b: c}", "sim.foo=1"):
        res = cli("run", scenario, "--set", override, "--json", "-o", tmp_path / "r")
        assert res.rc == 2 and res.out == "" and len(res.err_lines) == 1, res.err
        assert res.err_lines[0].startswith("--set: ") and "Traceback" not in res.err


def test_capacity_horizons_are_keys_and_fit_together(tmp_path):
    from harness.scenario import load_scenario
    base = ("name: c\ntrace: {synth: {preset: paper-32k, agents: 4}}\nslo: {ttft_s: 4}\nmodel: deepseek-27b\n"
            "hardware: hopper-paper\ncluster: {prefill_nodes: 1, decode_nodes: 1}\n")
    ok = tmp_path / "ok.yaml"
    ok.write_text(base + "capacity: {warmup_s: 10, lookback_s: 60, window_s: 5, max_horizon_s: 200}\n")
    s = load_scenario(ok)
    assert s["capacity"]["lookback_s"] == 60 and s["capacity"]["max_horizon_s"] == 200
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + "capacity: {warmup_s: 10, lookback_s: 60, window_s: 5, max_horizon_s: 50}\n")
    with pytest.raises(InputError) as info:
        load_scenario(bad)
    assert info.value.field == "capacity.max_horizon_s" and "75" in info.value.problem
