"""Golden summaries of small simulated clusters, every system: a change that moves any simulator number
fails here until the goldens are refreshed in the same commit (and the change explained).

    DUALPATH_REGOLD=1 .venv/bin/python -m pytest tests/test_sim_golden.py   # rewrite tests/golden/sim_small.json
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "sim_small.json"
ALL = "systems=[basic,layerwise,dualpath-rr,dualpath,oracle]"
POINTS = {  # name: (scenario, overrides)
    "ds660b-2p4d-16": ("offline-ds660b-64k", ["trace.synth.agents=16"]),
    "ds660b-2p8d-two-de-groups": ("offline-ds660b-64k", ["trace.synth.agents=24", "trace.synth.preset=paper-32k",
                                                         "cluster.decode_nodes=8"]),
    "ds27b-1p1d-16": ("pd-ratio-ds27b-64k-1p1d", ["trace.synth.agents=16"]),
}


def headline(system: dict) -> dict:
    lat = system["latency"]
    return {
        "requests": system["counts"]["requests"]["total"],
        "makespan_jct_s": system["makespan_jct_s"],
        "ttft_mean_s": lat["ttft_s"]["mean"], "ttft_p99_s": lat["ttft_s"]["p99"],
        "tpot_mean_s": lat["tpot_s"]["mean"], "jct_mean_s": lat["jct_s"]["mean"],
        "snic_balance": system["snic_balance"], "attention_balance": system["attention_balance"],
        "ttft_breakdown_mean_s": system["ttft_breakdown_mean_s"],
        "events": system["sim"]["events"],
    }


def run_point(name: str, tmp_path: Path) -> dict:
    scenario, overrides = POINTS[name]
    out = tmp_path / name
    args = ["run", str(ROOT / "scenarios" / "paper" / f"{scenario}.yaml"), "-o", str(out), "--set", ALL]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    return {s: headline(v) for s, v in summary["systems"].items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(POINTS))
def test_small_clusters_give_the_golden_numbers(name, tmp_path, capsys):
    got = run_point(name, tmp_path)
    capsys.readouterr()
    if os.environ.get("DUALPATH_REGOLD"):
        data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        data[name] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    want = json.loads(GOLDEN.read_text())[name]
    assert set(got) == set(want)
    for system in want:
        for key, value in want[system].items():
            assert same(got[system][key], value), f"{name} {system} {key}: golden {value}, now {got[system][key]}"


def same(a, b) -> bool:
    """Equal to the last digits (1e-12 relative: JSON round trips of floats are exact, this is slack)."""
    if isinstance(b, dict):
        return isinstance(a, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in b)
    if isinstance(b, float) and isinstance(a, (int, float)):
        return a == pytest.approx(b, rel=1e-12, abs=1e-15)
    return a == b
