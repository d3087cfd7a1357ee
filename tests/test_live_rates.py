"""`live.snic_gbps` and `live.cnic_gbps`: validated like the other live keys (one located line, exit 2,
nothing written), and the rates the live cluster's parts pace (with a note when they differ from the
hardware profile, whose rates the simulator keeps)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import backend_live
from harness.scenario import load_scenario
from traces.errors import InputError

LIVE = Path(__file__).resolve().parents[1] / "scenarios" / "live"


def scenario_file(tmp_path, **live) -> Path:
    s = yaml.safe_load((LIVE / "io-bound-1p1d.yaml").read_text())
    s["model"], s["hardware"] = str(LIVE / s["model"]), str(LIVE / s["hardware"])
    s["trace"]["synth"]["agents"] = 2
    s["live"].update(live)
    path = tmp_path / "rates.yaml"
    path.write_text(yaml.safe_dump(s, sort_keys=False))
    return path


@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(["snic_gbps", "cnic_gbps"]),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 1000)))
def test_a_rate_is_accepted_exactly_within_its_bounds(tmp_path_factory, key, value):
    path = scenario_file(tmp_path_factory.mktemp("r"))
    inside = value == value and 1e-3 <= value <= 100
    try:
        s = load_scenario(str(path), [f"live.{key}={value!r}"])
    except InputError as exc:
        assert not inside and exc.field == f"live.{key}" and len(exc.render().splitlines()) == 1
    else:
        assert inside and s["live"][key] == value


def test_a_bad_rate_in_the_file_is_one_located_line_and_exit_2(tmp_path):
    path = scenario_file(tmp_path, snic_gbps=0)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and not out.exists()
    line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if t.strip().startswith("snic_gbps:"))
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"{path}:{line}: live.snic_gbps: "), r.stderr


@pytest.mark.parametrize("snic, cnic", [(0.4, None), (None, 8.0), (0.05, 1.0)])
def test_the_cluster_paces_the_live_rates_and_notes_where_they_leave_the_profile(tmp_path, capsys, snic, cnic):
    live = {k: v for k, v in (("snic_gbps", snic), ("cnic_gbps", cnic)) if v is not None}
    s = yaml.safe_load(scenario_file(tmp_path).read_text())
    s["live"] = {"transport": "tcp", **live}
    cost = backend_live._cost(s)
    k = cost.k
    assert cost.snic_rate == pytest.approx((snic or 0.1) * 1e9 / 8 * k.snic_efficiency)
    assert cost.cnic_rate == pytest.approx((cnic or 4.0) * 1e9 / 8 * k.cnic_efficiency)
    assert cost.alpha_tokens() == pytest.approx(cost.snic_rate * k.alpha_read_s / cost.kv_bytes_per_token)
    backend_live.check(s, None)
    notes = capsys.readouterr().err.splitlines()
    assert [n.split()[1] for n in notes] == [f"live.{key}" for key in live]
    assert all("`--set backend=sim` simulates the profile's rate" in n for n in notes)


def test_the_parts_are_started_with_the_live_rates(tmp_path):
    s = load_scenario(str(scenario_file(tmp_path, snic_gbps=0.08, cnic_gbps=2.0)))
    with backend_live.Cluster(s, "dualpath") as cluster:
        storage = yaml.safe_load((cluster.tmp / "storage.yaml").read_text())
        pe = yaml.safe_load((cluster.tmp / "pe0.yaml").read_text())
        pids = cluster.pids()
    assert storage["snic_bytes_s"] == pytest.approx(0.08e9 / 8) and pe["cnic_bytes_s"] == pytest.approx(2.0e9 / 8)
    from test_live_cluster import gone
    assert gone(pids)
