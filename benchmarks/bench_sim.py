"""Benchmark the simulator: the paper's offline experiment (offline-ds660b-64k: DS 660B, 64K, 1,024 agents,
2P4D; basic, dualpath and oracle) end to end through `dualpath run`, on one core.

    .venv/bin/python benchmarks/bench_sim.py [--runs 3] [--agents 1024]

Prints the wall time of the whole command (median of the runs; target <= 60 s) and, per system, the
simulated requests per second of wall time. Exits 1 if the median misses the target.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 60.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--agents", type=int, default=1024)
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("dualpath")
    walls, rates = [], {}
    print(f"# bench_sim: {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
          f"offline-ds660b-64k, {args.agents} agents; median of {args.runs} runs", flush=True)
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            t0 = time.perf_counter()
            subprocess.run([str(exe), "run", str(ROOT / "scenarios/paper/offline-ds660b-64k.yaml"),
                            "--set", f"trace.synth.agents={args.agents}", "-o", str(out)],
                           check=True, stdout=subprocess.DEVNULL, env={**os.environ, "DUALPATH_PROGRESS": "0"})
            walls.append(time.perf_counter() - t0)
            summary = json.loads((out / "summary.json").read_text())
        for name, s in summary["systems"].items():
            rates.setdefault(name, []).append(s["sim_requests_per_wall_s"])
            if i == 0:
                print(f"  {name:<9} JCT {s['makespan_jct_s']:8.0f} s  requests {s['counts']['requests']['total']:>7}  "
                      f"sim wall {s['wall_s']:5.1f} s", flush=True)
        print(f"  run {i + 1}: {walls[-1]:.1f} s", flush=True)
    med = statistics.median(walls)
    verdict = "PASS" if med <= TARGET_S else "FAIL"
    print(f"dualpath run offline-ds660b-64k (3 systems)   median {med:6.1f} s   target <= {TARGET_S:.0f} s  {verdict}")
    for name, r in rates.items():
        print(f"  {name:<9} simulated requests per wall second: median {statistics.median(r):8.0f}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
