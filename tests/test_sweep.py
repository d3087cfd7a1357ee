"""Sweeps (harness/sweep.py, harness/pool.py): points and their names, bad sweeps as one line, a sweep run on
the process pool and on Ray, the index, a failed point, --resume after Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from harness.sweep import point_name, points

SMALL = """name: tiny
backend: sim
trace: {{synth: {{preset: smoke, agents: 4, seed: 1}}}}
model: deepseek-27b
hardware: hopper-paper
cluster: {{prefill_nodes: 1, decode_nodes: 1}}
systems: [basic, dualpath]
{extra}
"""
EIGHT = """sweep:
  trace.synth.agents: [4, 6]
  cluster.decode_nodes: [1, 2]
zip:
  trace.synth.seed: [1, 2]
  trace.synth.gen_mean: [64, 32]
expected:
  - {figure: "Fig. X", system: dualpath, metric: makespan_jct_s, value: 4.4, point: {trace.synth.agents: 4}}
  - {figure: "Fig. Y", system: basic, metric: latency.ttft_s.p50, value: 1000, approx: true}
"""


def scenario(tmp_path: Path, extra: str = EIGHT, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(SMALL.format(extra=extra), encoding="utf-8")
    return path


# ----- points ------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(sweep=st.dictionaries(st.sampled_from(["a.x", "b.x", "c", "d.e.f"]), st.lists(st.integers(0, 9), min_size=1,
                             max_size=3, unique=True), max_size=3),
       zip_len=st.integers(0, 3))
def test_points_are_the_cross_product_times_the_zip_rows_and_names_are_unique(sweep, zip_len):
    zipped = {"z.p": list(range(zip_len)), "z.q": [f"v{i}" for i in range(zip_len)]} if zip_len else {}
    pts = points({"sweep": sweep, "zip": zipped})
    expected = 1
    for values in sweep.values():
        expected *= len(values)
    assert len(pts) == expected * (zip_len or 1)
    assert len({point_name(p) for p in pts}) == len(pts)
    for p in pts:
        assert set(p) == set(sweep) | set(zipped)
        if zipped:
            assert p["z.q"] == f"v{p['z.p']}"  # zip: lists stay paired


def test_point_names_use_the_last_part_unless_two_keys_share_it():
    assert point_name({"trace.synth.agents": 1024, "trace.synth.preset": "paper-64k"}) == "agents=1024_preset=paper-64k"
    assert point_name({"a.x": 1, "b.x": 2}) == "a-x=1_b-x=2"
    assert point_name({"systems": ["basic", "dualpath"]}) == 'systems=basic-dualpath'


# ----- bad sweeps: one line naming file, line and key, nothing made --------------------------------------
@pytest.mark.parametrize("extra, line, key, words", [
    ("sweep:\n  trace.synth.agnts: [4, 8]", 9, "sweep.trace.synth.agnts", "agents"),
    ("sweep:\n  trace.synth.agents: [4, 0]", 9, "sweep.trace.synth.agents[1]", "an integer in [1, "),
    ("sweep:\n  trace.synth.agents: []", 9, "sweep.trace.synth.agents", "non-empty"),
    ("sweep:\n  name: [a, b]", 9, "sweep.name", "cannot be swept"),
    ("zip:\n  seed: [1, 2]\n  trace.synth.agents: [4]", 10, "zip.trace.synth.agents", "paired"),
    ("sweep:\n  seed: [1]\nzip:\n  seed: [2]", 11, "zip.seed", "swept twice"),
    ("sweep:\n  seed: [1, 2]\nexpected:\n  - {figure: F, system: basic, metric: makespan_jct_s, value: 1, "
     "point: {trace.synth.agents: 4}}", 11, "expected[0].point.trace.synth.agents", "not a key of the scenario's sweep"),
    ("sweep:\n  trace.synth.preset: [smoke, paper-48k]\n  trace.synth.max_context: [100]", 10,
     "sweep.trace.synth.max_context", "at point preset=smoke_max_context=100"),
])
def test_a_bad_sweep_is_one_line_naming_file_line_and_key(cli, tmp_path, extra, line, key, words):
    path = scenario(tmp_path, extra)
    r = cli("run", path, "-o", tmp_path / "out")
    assert r.rc == 2, r.err
    assert len(r.err_lines) == 1 and r.out == ""
    assert r.err_lines[0].startswith(f"{path}:{line}: {key}: "), r.err
    assert words in r.err
    assert not (tmp_path / "out").exists()


def test_the_ray_executor_without_ray_is_one_line_saying_how_to_get_it(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    r = cli("run", scenario(tmp_path), "--executor", "ray", "-o", tmp_path / "out")
    assert r.rc == 2 and len(r.err_lines) == 1
    assert "pip install -e '.[ray]'" in r.err
    assert not (tmp_path / "out").exists()


# ----- a sweep run -----------------------------------------------------------------------------------------
def index(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "index.parquet")


def test_a_sweep_runs_every_point_into_its_directory_with_an_index_and_ours_vs_expected(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("run", scenario(tmp_path), "-j", "2", "-o", out)
    assert r.rc == 0, r.err
    frame = index(out)
    assert len(frame) == 8 * 2 and set(frame["status"]) == {"ok"}
    assert frame.groupby("point").size().eq(2).all() and frame["point"].nunique() == 8
    assert {"trace.synth.agents", "cluster.decode_nodes", "trace.synth.seed", "jct_s", "path"} <= set(frame.columns)
    for row in frame.to_dict("records"):  # each point is the scenario with its keys set
        point = yaml.safe_load((Path(row["path"]) / "scenario.yaml").read_text())
        assert point["trace"]["synth"]["agents"] == row["trace.synth.agents"]
        assert point["cluster"]["decode_nodes"] == row["cluster.decode_nodes"]
        assert "sweep" not in point and "zip" not in point
    # the expected block: Fig. X only at the 4 points with 4 agents, Fig. Y at all 8
    assert sum("Fig. X" in line for line in r.out.splitlines()) == 4
    assert sum("Fig. Y" in line and "miss" in line for line in r.out.splitlines()) == 8
    assert "ours vs expected:" in r.out and "note: --set" not in r.out
    # the points differ: agents and decode nodes change the JCT
    jct = frame[frame["system"] == "basic"].set_index("point")["jct_s"]
    assert jct.nunique() > 1
    # the same directory again is refused (bad input), --resume finishes it (nothing left to run)
    again = cli("run", scenario(tmp_path), "-o", out)
    assert again.rc == 2 and "--resume" in again.err
    resumed = cli("run", scenario(tmp_path), "-o", out, "--resume")
    assert resumed.rc == 0 and "(0 finished now, 8 already finished, 0 failed)" in resumed.err


def test_a_failed_point_is_recorded_and_the_others_run(cli, tmp_path):
    # DS 660B on one prefill node leaves no HBM for KV: that point fails, the other models run
    path = scenario(tmp_path, "sweep:\n  model: [deepseek-27b, deepseek-v3.2-660b, qwen2.5-32b]")
    out = tmp_path / "out"
    r = cli("run", path, "-o", out)
    assert r.rc == 1
    frame = index(out).drop_duplicates("point").set_index("point")
    assert frame.loc["model=deepseek-v3.2-660b", "status"] == "failed"
    assert "HBM" in frame.loc["model=deepseek-v3.2-660b", "error"]
    assert (frame.drop("model=deepseek-v3.2-660b")["status"] == "ok").all()
    assert any(line.startswith("error: point tiny/model=deepseek-v3.2-660b") for line in r.err_lines)


def test_set_on_a_swept_key_runs_that_one_value(cli, tmp_path):
    path = scenario(tmp_path, "sweep:\n  trace.synth.agents: [4, 8]\nexpected:\n  - {figure: F, system: basic, "
                    "metric: counts.agents, value: 4, point: {trace.synth.agents: 4}}")
    r = cli("run", path, "--set", "trace.synth.agents=5", "-o", tmp_path / "five")
    assert r.rc == 0, r.err
    assert (tmp_path / "five" / "summary.json").is_file() and not (tmp_path / "five" / "index.parquet").exists()
    assert "ours vs expected" not in r.out  # the entry is for 4 agents
    r = cli("run", path, "--set", "trace.synth.agents=4", "-o", tmp_path / "four")  # one of the sweep's points
    assert r.rc == 0 and "ours vs expected: 1 ok" in r.out and "note: --set" not in r.out


def test_resume_after_ctrl_c_runs_only_the_points_left(tmp_path):
    """A real Ctrl-C (SIGINT to the command): the finished points stay, --resume runs only the rest."""
    path = scenario(tmp_path, "sweep:\n  trace.synth.agents: [40, 41, 42, 43, 44, 45]")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness.cli", "run", str(path), "-o", str(out)]
    env = {**os.environ, "DUALPATH_PROGRESS": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "index.parquet").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # polling for the first finished point (bounded), not synchronisation by sleep
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (130, 0), err  # 0 only if every point finished before the signal came
    first = index(out).drop_duplicates("point")
    done = int((first["status"] == "ok").sum())
    assert done >= 1
    if proc.returncode == 130:
        assert "--resume runs the rest" in err and f"({done} finished now, 0 already finished, 0 failed, " in err
        assert set(first["status"]) <= {"ok", "interrupted", "not run"}
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"({6 - done} finished now, {done} already finished, 0 failed)" in r.stderr
    assert set(index(out)["status"]) == {"ok"}


def ray_processes() -> set[int]:
    """Pids of Ray's daemons (raylet, gcs_server) on this machine."""
    out = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"raylet" in cmd or b"gcs_server" in cmd:
                out.add(int(proc.name))
    return out


@pytest.mark.slow
def test_ray_gives_the_numbers_the_process_pool_gives(cli, tmp_path):
    pytest.importorskip("ray")
    before = ray_processes()
    path = scenario(tmp_path)
    a = cli("run", path, "-j", "2", "-o", tmp_path / "process")
    b = cli("run", path, "-j", "2", "--executor", "ray", "-o", tmp_path / "ray")
    assert a.rc == 0 and b.rc == 0, b.err
    x, y = (index(tmp_path / d).drop(columns=["path"]) for d in ("process", "ray"))
    assert len(x) == 16 and set(x["status"]) == {"ok"}
    pd.testing.assert_frame_equal(x, y)
    deadline = time.monotonic() + 30  # the local Ray the command started is stopped
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ray_processes() - before


def test_too_many_points_is_one_line_before_any_point_is_built(cli, tmp_path):
    values = ", ".join(str(i) for i in range(201))
    path = scenario(tmp_path, f"sweep:\n  seed: [{values}]\n  trace.synth.seed: [{values}]")
    r = cli("run", path, "-o", tmp_path / "out")
    assert r.rc == 2 and r.err_lines == [f"{path}:8: sweep: 40,401 points (at most 10,000); split the sweep"]
    assert not (tmp_path / "out").exists()
