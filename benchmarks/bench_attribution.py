"""Benchmark what attribution (harness/attribution.py, harness/occupancy.py) adds to a run's wall time.

    .venv/bin/python benchmarks/bench_attribution.py [--agents 1024] [--runs 1]

Runs the default scenario (offline-ds660b-64k: basic, dualpath, oracle) through `dualpath run` with
attribution and with it replaced by a function that returns nothing, alternately, and prints the median
wall time of each and the difference as a share, and the seconds `attribute_results` takes on the
attributed run's results directory (the same work, timed alone: on a shared machine the two whole runs
differ by more than attribution costs). Exits 1 if attribution alone is more than 10 % of the run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET = 0.10


def one_run(out: Path, agents: int, attribute: bool) -> float:
    from harness import attribution
    from harness.cli import main
    real = attribution.attribute
    if not attribute:
        attribution.attribute = lambda *a, **k: {}
    try:
        t0 = time.perf_counter()
        rc = main(["run", "--set", f"trace.synth.agents={agents}", "-o", str(out), "--json"])
        wall = time.perf_counter() - t0
    finally:
        attribution.attribute = real
    if rc != 0:
        raise SystemExit(f"dualpath run exited {rc}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    os.environ["DUALPATH_PROGRESS"] = "0"
    walls: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for attribute in (False, True):
                out = Path(tmp) / f"{'with' if attribute else 'without'}-{i}"
                sys.stdout = open(os.devnull, "w")  # --json's summary
                try:
                    walls[attribute].append(one_run(out, args.agents, attribute))
                finally:
                    sys.stdout.close()
                    sys.stdout = sys.__stdout__
        from harness.attribution import attribute_results
        from harness.results import load_results
        results = load_results(Path(tmp) / "with-0")
        t0 = time.perf_counter()
        attribute_results(results)
        alone = time.perf_counter() - t0
    with_s, without_s = statistics.median(walls[True]), statistics.median(walls[False])
    share = (with_s - without_s) / without_s
    print(f"default scenario, {args.agents} agents, {args.runs} run(s) each: with attribution {with_s:.1f} s, "
          f"without {without_s:.1f} s: {share * 100:+.1f} % (target <= {TARGET * 100:.0f} %); "
          f"attribute_results alone on the results: {alone:.2f} s ({alone / without_s * 100:.1f} % of the run)")
    return 0 if alone / without_s <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
