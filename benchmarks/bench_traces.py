"""Wall time of the trace commands, as a user runs them (console script, interpreter start-up included).

    .venv/bin/python benchmarks/bench_traces.py [--runs 3]

Prints the median of N runs of
- `dualpath trace synth --preset paper-64k --agents 4096 --seed 1 -o <tmp>.parquet`   (target <= 10 s)
- `dualpath trace stats <shared>/data/mooncake/conversation_trace.jsonl.gz`           (target <= 2 s)
and PASS/FAIL against the targets; exits 1 if any target is missed. The Mooncake trace is found under
$DUALPATH_SHARED, else ../shared/ beside the checkout.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOONCAKE_REL = "data/mooncake/conversation_trace.jsonl.gz"


def console_script() -> list[str]:
    script = Path(sys.executable).parent / "dualpath"
    return [str(script)] if script.exists() else [sys.executable, "-m", "harness.cli"]


def mooncake_path() -> Path:
    shared = Path(os.environ["DUALPATH_SHARED"]) if os.environ.get("DUALPATH_SHARED") else REPO.parent / "shared"
    path = shared / MOONCAKE_REL
    if not path.is_file():
        sys.exit(f"bench_traces: the Mooncake conversation trace is missing: expected {path} "
                 "(set DUALPATH_SHARED to the folder holding data/mooncake/)")
    return path


def timed(argv: list[str]) -> float:
    env = {**os.environ, "DUALPATH_PROGRESS": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_traces: {' '.join(argv)} failed with exit code {proc.returncode}: {proc.stderr.strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per command (the median is reported)")
    args = parser.parse_args()
    cmd = console_script()
    trace = mooncake_path()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_traces.") as tmp:
        out = Path(tmp) / "paper-64k-4096.parquet"
        cases = [
            ("trace synth paper-64k, 4096 agents", 10.0,
             cmd + ["trace", "synth", "--preset", "paper-64k", "--agents", "4096", "--seed", "1", "-o", str(out)]),
            ("trace stats Mooncake conversation", 2.0, cmd + ["trace", "stats", str(trace)]),
        ]
        for name, target, argv in cases:
            times = [timed(argv) for _ in range(args.runs)]
            results.append((name, statistics.median(times), target, times))
        rounds = None
        try:
            import pyarrow.parquet as pq
            rounds = pq.read_metadata(out).num_rows
        except Exception:  # noqa: BLE001 - informational only
            pass

    print(f"# bench_traces: {' '.join(cmd)}; python {platform.python_version()}; {platform.machine()}, "
          f"{os.cpu_count()} CPUs; median of {args.runs} runs")
    if rounds is not None:
        print(f"# synth output: {rounds:,} rounds")
    ok = True
    for name, median, target, times in results:
        passed = median <= target
        ok &= passed
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"{name:<38} median {median:6.2f} s  target <= {target:4.1f} s  {'PASS' if passed else 'FAIL'}"
              f"   (runs: {runs})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
