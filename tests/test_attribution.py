"""Bottleneck attribution (harness/attribution.py): unit checks on tables whose shares are known, and
small clusters whose answer is known by construction (a storage NIC far too slow, one far faster)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness import attribution as A

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "paper" / "offline-ds660b-64k.yaml"
SMALL = ("--set", "trace.synth.agents=32", "--set", "trace.synth.turns_mean=10",
         "--set", "systems=[basic,dualpath]", "--set", "cluster.prefill_nodes=2", "--set", "cluster.decode_nodes=2")


def hardware(tmp_path: Path, snic_gbps: float) -> Path:
    data = yaml.safe_load((REPO / "scenarios" / "hardware" / "hopper-paper.yaml").read_text())
    data.update(name=f"snic-{snic_gbps:g}", snic_gbps=snic_gbps)
    path = tmp_path / f"snic-{snic_gbps:g}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(cli, tmp_path: Path, snic_gbps: float):
    out = tmp_path / f"r{snic_gbps:g}"
    res = cli("run", SCENARIO, *SMALL, "--set", f"hardware={hardware(tmp_path, snic_gbps)}", "-o", out)
    assert res.rc == 0, res.err
    return res, json.loads((out / "summary.json").read_text())


def test_busy_phase_ends_when_running_agents_fall_below_half_the_peak():
    agents = pd.DataFrame({"t_arrival": [0.0, 0, 0, 0], "t_done": [10.0, 20, 30, 40]})
    requests = pd.DataFrame({"t_scheduled": [0.0], "t_done": [40.0]})
    assert A.busy_phase(requests, agents) == (0.0, 30.0)  # 4 running at peak; 1 (< 2) left at t=30


def test_link_and_compute_shares_from_known_bytes():
    caps = {"snic": 100.0, "cnic": 10.0, "dram": 1000.0}
    links = pd.DataFrame({"t_start": [0.0, 0, 1, 1], "t_end": [1.0, 1, 2, 2], "node": ["p0", "d0", "p0", "d0"],
                          "link": ["snic"] * 4, "direction": ["rx"] * 4, "bytes": [100, 0, 50, 10],
                          "traffic": ["kv_read"] * 4})
    s = A.link_shares(links, caps, 0.0, 2.0)
    assert s["snic_pe"] == pytest.approx(0.75) and s["snic_de"] == pytest.approx(0.05)
    engines = pd.DataFrame({"t": [0.0, 0.5, 1.0], "engine": ["p0.0"] * 3, "role": ["prefill"] * 3,
                            "step_s": [0.5, 0.5, 0.5], "batch_requests": [1, 1, 1]})
    assert A.compute_shares(engines, 0.0, 2.0)["pe_compute"] == pytest.approx(0.75)


def test_snic_far_too_slow_is_the_bottleneck_and_dualpath_uses_both_nics(cli, tmp_path):
    res, summary = run(cli, tmp_path, 4)  # 100x slower than the paper's 400 Gbps storage NIC
    basic, dual = summary["systems"]["basic"], summary["systems"]["dualpath"]
    assert basic["bottleneck"]["resource"] == "snic_pe"
    assert basic["bottleneck"]["busy_share"] == basic["utilisation"]["snic_pe"] > 0.5
    assert "storage NICs" in basic["bottleneck"]["verdict"]
    assert dual["utilisation"]["snic_pe"] > 0.3 and dual["utilisation"]["snic_de"] > 0.3
    assert "basic: limited by snic_pe, " in res.out and "% busy" in res.out
    assert "dualpath over basic: JCT" in res.out
    assert set(summary["meta"]["profiles"]) == {"model", "hardware"}
    assert summary["meta"]["profiles"]["hardware"]["snic_gbps"] == 4
    for key in A.RATE_RESOURCES:
        assert 0 <= basic["utilisation_whole_run"][key] <= 1.0 + 1e-9


def test_snic_ten_times_faster_is_not_the_bottleneck(cli, tmp_path):
    _, summary = run(cli, tmp_path, 4000)
    basic = summary["systems"]["basic"]
    assert basic["bottleneck"]["resource"] not in ("snic_pe", "snic_de")
    assert basic["utilisation"]["snic_pe"] < 0.1


def test_attribution_from_a_loaded_results_directory_matches_the_summary(cli, tmp_path):
    from harness.results import load_results
    _, summary = run(cli, tmp_path, 40)
    again = A.attribute_results(load_results(tmp_path / "r40"))
    for system, got in again.items():
        assert got["bottleneck"] == summary["systems"][system]["bottleneck"]
