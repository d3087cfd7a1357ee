"""Benchmark the simulator at the paper's largest scale (Table 3): `dualpath` on DS 660B, 48K MAL, at
2P4D with 2,048 agents and at 48P96D with 49,152 agents, each as one `dualpath run` process (trace
generation, simulation and every record of 144 nodes written to its results directory).

    .venv/bin/python benchmarks/bench_scale.py [--only 2p4d|48p96d] [--agents-scale 1.0] [-o DIR]

Prints, per point: JCT (paper: 3,167 s and 3,201 s), wall time, simulated requests per wall second and
the process's peak memory (max RSS). Targets for 48P96D: at most 600 s on one core and 8 GB, and a JCT
within 10 % of 2P4D's. Exits 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios/paper/offline-ds660b-64k.yaml"
POINTS = {"2p4d": (2, 4, 2048, 3167.0), "48p96d": (48, 96, 49152, 3201.0)}
TARGET_WALL_S, TARGET_RSS_GB, TARGET_JCT_GAP = 600.0, 8.0, 0.10


def run_point(name: str, scale: float, out: Path) -> dict:
    p, d, agents, paper = POINTS[name]
    agents = max(1, int(agents * scale))
    exe = Path(sys.executable).with_name("dualpath")
    cmd = [str(exe), "run", str(SCENARIO), "--set", "trace.synth.preset=paper-48k",
           "--set", f"trace.synth.agents={agents}", "--set", "systems=[dualpath]",
           "--set", f"cluster.prefill_nodes={p}", "--set", f"cluster.decode_nodes={d}", "-o", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "DUALPATH_PROGRESS": "0"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads((out / "summary.json").read_text())["systems"]["dualpath"]
    return {"point": name, "agents": agents, "jct_s": summary["makespan_jct_s"], "paper_jct_s": paper,
            "wall_s": wall, "cpu_s": after.ru_utime - before.ru_utime,
            "requests": summary["counts"]["requests"]["total"],
            "sim_requests_per_wall_s": summary["counts"]["requests"]["total"] / wall,
            "max_rss_gb": after.ru_maxrss * 1024 / 1e9}  # ru_maxrss: KB on Linux, the largest child so far


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(POINTS))
    ap.add_argument("--agents-scale", type=float, default=1.0, help="scale both agent counts (a quick look)")
    ap.add_argument("-o", type=Path, help="keep the results directories here")
    args = ap.parse_args()
    names = [args.only] if args.only else ["2p4d", "48p96d"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.o or Path(tmp)
        for name in names:
            row = run_point(name, args.agents_scale, base / name)
            rows.append(row)
            print(f"{name:7} agents {row['agents']:>6}  JCT {row['jct_s']:7.0f} s (paper {row['paper_jct_s']:,.0f})  "
                  f"wall {row['wall_s']:6.1f} s  cpu {row['cpu_s']:6.1f} s  requests {row['requests']:>8,}  "
                  f"{row['sim_requests_per_wall_s']:7.0f} req/s  peak RSS {row['max_rss_gb']:.2f} GB", flush=True)
    ok = True
    big = next((r for r in rows if r["point"] == "48p96d"), None)
    if big is not None:
        ok &= big["wall_s"] <= TARGET_WALL_S and big["max_rss_gb"] <= TARGET_RSS_GB
        print(f"48P96D: wall {big['wall_s']:.0f} s (target <= {TARGET_WALL_S:.0f}), peak RSS {big['max_rss_gb']:.2f} GB "
              f"(target <= {TARGET_RSS_GB:.0f})")
    small = next((r for r in rows if r["point"] == "2p4d"), None)
    if big is not None and small is not None:
        gap = big["jct_s"] / small["jct_s"] - 1
        ok &= abs(gap) <= TARGET_JCT_GAP
        print(f"JCT 48P96D / 2P4D - 1 = {gap:+.1%} (target within {TARGET_JCT_GAP:.0%}; paper +1.1 %)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
