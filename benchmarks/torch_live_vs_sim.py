"""The live cluster with real compute (`live.compute: torch`) against the simulator's prediction, with the
toy model's profile of this host as it is now.

    .venv/bin/python benchmarks/torch_live_vs_sim.py [--runs 3] [--repeats 9] [SCENARIO ...]

This host's speed drifts (a shared VM: the same microbenchmark reads 2x apart within ten minutes), so a
profile fitted once and kept in a file predicts a live run of another hour poorly. For each scenario
(default: scenarios/live/torch-io-bound-1p1d.yaml and torch-compute-bound-1p1d.yaml) this:
1. fits the profile now (benchmarks/profile_torch_host.py: microbenchmarks of the model alone, never a
   run's JCT) and writes it as a hardware file (the scenario's, with the fitted peak) and `--set sim.*`;
2. runs the scenario live `--runs` times and once with `backend: sim`, both with that profile;
3. measures the profile's points again and prints how far the host moved meanwhile (the median ratio of
   after / before over the points), so a miss can be told from a drift.
Prints per system the live makespans' median (min-max), the prediction and the error, the busy shares
of prefill and decode compute live (from the engines' step logs) and simulated, and a SUMMARY line;
exit 1 when a run fails, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import profile_torch_host as prof  # noqa: E402

LIVE = ROOT / "scenarios" / "live"
DEFAULT = [LIVE / "torch-io-bound-1p1d.yaml", LIVE / "torch-compute-bound-1p1d.yaml"]


def run(scenario: Path, out: Path, overrides: list[str]) -> dict[str, tuple[float, float, float]]:
    """One `dualpath run`; per system the makespan JCT and the busy shares of prefill and decode compute
    (the attribution's `pe_compute`, `de_compute`: live, from the engines' own step logs)."""
    cmd = [sys.executable, "-m", "harness.cli", "run", str(scenario), "-o", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{scenario.name}: `{' '.join(cmd[2:])}` exit {p.returncode}: "
                           f"{(p.stderr.strip().splitlines() or ['no output'])[-1]}")
    summary = json.loads((out / "summary.json").read_text())
    return {name: (float(s["makespan_jct_s"]), float(s["utilisation"].get("pe_compute", np.nan)),
                   float(s["utilisation"].get("de_compute", np.nan))) for name, s in summary["systems"].items()}


def profile_overrides(scenario: Path, tmp: Path, pre: list, dec: list) -> list[str]:
    """The fitted profile as `--set` keys: a copy of the scenario's hardware file with the fitted peak, and
    the fitted sim constants."""
    peak, fitted, _ = prof.fit(pre, dec)
    doc = yaml.safe_load(scenario.read_text())
    hw_path = (scenario.parent / doc["hardware"]) if not Path(doc["hardware"]).is_absolute() else Path(doc["hardware"])
    hw = yaml.safe_load(hw_path.read_text())
    hw["gpu"]["peak_flops_bf16"] = hw["gpu"]["peak_flops_fp8"] = float(peak)
    hw["name"] = f"{hw['name']}-fitted"
    out = tmp / f"{scenario.stem}.hardware.yaml"
    out.write_text(yaml.safe_dump(hw))
    return [f"hardware={out}"] + [f"sim.{key}={value:.6g}" for key, value in fitted.items()]


def drift(before: tuple[list, list], after: tuple[list, list]) -> float:
    """after / before, the median over the profile's points (1.0: the host did not move)."""
    b = [t for *_, t in before[0]] + [t for *_, t in before[1]]
    a = [t for *_, t in after[0]] + [t for *_, t in after[1]]
    return float(np.median(np.array(a) / np.array(b)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--runs", type=int, default=3, help="live runs per scenario (their median is compared)")
    ap.add_argument("--repeats", type=int, default=9, help="rounds of the profile's microbenchmarks")
    args = ap.parse_args()
    for scenario in args.scenarios:
        if not scenario.is_file():
            print(f"{scenario}: no such scenario file", file=sys.stderr)
            return 2
    if args.runs < 1 or args.repeats < 1:
        print("--runs and --repeats: at least 1", file=sys.stderr)
        return 2
    rows, worst = [], 0.0
    with tempfile.TemporaryDirectory(prefix="torch-live-vs-sim-") as d:
        tmp = Path(d)
        for scenario in args.scenarios:
            before = prof.measure(args.repeats, 64)
            try:
                sets = profile_overrides(scenario, tmp, *before)
            except ValueError as exc:
                print(f"{scenario.name}: {exc}")
                return 1
            live: dict[str, list[tuple]] = {}
            try:
                for i in range(args.runs):
                    for name, got in run(scenario, tmp / f"{scenario.stem}-live{i}", sets).items():
                        live.setdefault(name, []).append(got)
                sim = run(scenario, tmp / f"{scenario.stem}-sim", sets + ["backend=sim"])
            except RuntimeError as exc:
                print(exc)
                return 1
            moved = drift(before, prof.measure(args.repeats, 64))
            for name, got in live.items():
                jcts = [g[0] for g in got]
                med = float(np.median(jcts))
                err = sim[name][0] / med - 1
                worst = max(worst, abs(err))
                busy = [float(np.median([g[k] for g in got])) for k in (1, 2)]
                rows.append((scenario.stem, name, med, min(jcts), max(jcts), sim[name][0], err, moved,
                             busy, sim[name][1:]))
    print(f"\n{'scenario':<28} {'system':<9} {'live s (min-max)':>22} {'sim s':>7} {'sim vs live':>11} {'host moved':>10}"
          f" {'pe busy live/sim':>17} {'de busy live/sim':>17}")
    for sc, name, med, lo, hi, s, err, moved, busy, sim_busy in rows:
        print(f"{sc:<28} {name:<9} {med:>8.3f} ({lo:.2f}-{hi:.2f}) {s:>7.3f} {100 * err:>+10.1f}% {moved:>9.2f}x"
              f" {busy[0]:>8.0%} /{sim_busy[0]:>6.0%} {busy[1]:>8.0%} /{sim_busy[1]:>6.0%}")
    print(f"SUMMARY worst |sim vs live| {100 * worst:.1f} % over {len(rows)} cells (goal 20 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
