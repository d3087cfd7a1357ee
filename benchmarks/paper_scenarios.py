"""Run the full-size paper scenarios on the simulator and print each prediction next to the paper.

    .venv/bin/python benchmarks/paper_scenarios.py [--only ablation,pd-ratio,compute-bound] [--agents N]

The bands are the issue's acceptance bands around the paper's figures (reference/paper.md 7). Only the
calibration points (Oracle and Basic at 512 and 4,096 agents, benchmarks/calibrate.py) were fitted;
every row here is a prediction. Results directories go to results/paper-<scenario>-<time>/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness.cli import main as dualpath

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "scenarios" / "paper"


def run(scenario: str, *overrides: str, tag: str = "") -> dict:
    out = ROOT / "results" / f"paper-{Path(scenario).stem}{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    args = ["run", str(PAPER / scenario), "-o", str(out)]
    for o in overrides:
        args += ["--set", o]
    t0 = time.perf_counter()
    rc = dualpath(args)
    if rc != 0:
        raise SystemExit(f"{scenario}: dualpath run failed with exit code {rc}")
    summary = json.loads((out / "summary.json").read_text())
    print(f"  [{scenario}{tag}: {time.perf_counter() - t0:.0f} s wall, {out.relative_to(ROOT)}]", file=sys.stderr)
    return summary["systems"]


def row(name: str, value: float, paper: str, lo: float, hi: float) -> str:
    ok = "ok" if lo <= value <= hi else "MISS"
    return f"{name:<52} {value:>8.3f}   paper {paper:<14} band [{lo:g}, {hi:g}]  {ok}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="ablation,pd-ratio,compute-bound")
    ap.add_argument("--agents", type=int, default=1024)
    args = ap.parse_args()
    parts = set(args.only.split(","))
    agents = f"trace.synth.agents={args.agents}"
    lines = []
    if "ablation" in parts:
        s = run("ablation-ds660b-64k.yaml", agents)
        jct = {k: v["makespan_jct_s"] for k, v in s.items()}
        red = {k: 1 - jct[k] / jct["basic"] for k in jct}
        lines += [f"ablation-ds660b-64k ({args.agents} agents): JCT s " + ", ".join(f"{k} {v:.0f}" for k, v in jct.items()),
                  row("basic / dualpath JCT", jct["basic"] / jct["dualpath"], "~1.8", 1.55, 2.1),
                  row("dualpath / oracle JCT", jct["dualpath"] / jct["oracle"], "~1.0-1.1", 0.0, 1.15),
                  row("layerwise JCT reduction vs basic", red["layerwise"], "~21 %", 0.10, 0.25),
                  row("dualpath-rr JCT reduction vs basic", red["dualpath-rr"], "~41 %", 0.30, 0.46),
                  row("dualpath JCT reduction vs basic", red["dualpath"], "~45 %", 0.38, 0.53),
                  row("SNIC max/avg, dualpath-rr", s["dualpath-rr"]["snic_balance"], "1.53", 1.3, 99),
                  row("SNIC max/avg, dualpath", s["dualpath"]["snic_balance"], "1.18", 0, 1.25),
                  row("attention max/avg early, dualpath", s["dualpath"]["attention_balance_early"], "1.06", 0, 99)]
        strictly = jct["basic"] > jct["layerwise"] > jct["dualpath-rr"] > jct["dualpath"]
        lines.append(f"{'strictly ordered basic > layerwise > rr > dualpath':<52} {str(strictly):>8}")
    if "pd-ratio" in parts:
        jct = {}
        for pd in ("1p1d", "2p1d", "1p2d"):
            s = run(f"pd-ratio-ds27b-64k-{pd}.yaml", agents)
            for system, v in s.items():
                jct[(system, pd)] = v["makespan_jct_s"]
        lines.append("pd-ratio-ds27b-64k: JCT s " + ", ".join(f"{s} {pd} {v:.0f}" for (s, pd), v in jct.items()))
        for (a, b, paper) in ((("basic", "1p1d"), ("basic", "1p2d"), "2220/4120 vs ~2170/4520"),
                              (("dualpath", "1p1d"), ("basic", "2p1d"), "~1300/2420 vs ~1320/2420"),
                              (("dualpath", "2p1d"), ("dualpath", "1p2d"), "~1050/1840 vs ~1040/1840")):
            lines.append(row(f"{a[0]} {a[1]} / {b[0]} {b[1]}", jct[a] / jct[b], "~1", 1 / 1.15, 1.15))
    if "compute-bound" in parts:
        from engines.costmodel import SimConstants
        fast = SimConstants().snic_efficiency * 10
        s = run("ablation-ds660b-64k.yaml", agents, f"sim.snic_efficiency={fast}", "systems=[layerwise,dualpath-rr,dualpath,oracle]",
                tag="-snic-x10")
        jct = {k: v["makespan_jct_s"] for k, v in s.items()}
        lines += [f"compute-bound (SNIC x10): JCT s " + ", ".join(f"{k} {v:.0f}" for k, v in jct.items()),
                  row("dualpath-rr / layerwise", jct["dualpath-rr"] / jct["layerwise"], "~1", 0.95, 1.05),
                  row("dualpath / oracle", jct["dualpath"] / jct["oracle"], "~1", 0.95, 1.05)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
