"""Comparing hardware setups: `dualpath bounds`, `dualpath compare`, `dualpath calibrate` (parse and
print; the work is in harness/bounds.py, harness/compare.py, harness/calibrate.py)."""
from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

from traces.errors import InputError


def register(sub) -> None:
    from harness.cli_run import DEFAULT_SCENARIO

    b = sub.add_parser("bounds", help="the paper's bottleneck-free P/D range (eq. 9) for a hardware profile",
                       description="The range of prefill/decode node ratios in which no CNIC or DRAM limits "
                       "DualPath's storage reads (reference/paper.md 2, eq. 9), as exact fractions, with the "
                       "constraint that binds at each end.")
    b.add_argument("--hardware", required=True, help="a name under scenarios/hardware/ or a path")
    b.add_argument("--model", help="also: storage vs prefill compute per node for this model (paper-64k shape)")
    b.add_argument("--pd", metavar="P:D", help="a P:D node ratio (2:4 or 2P4D): inside or not, by what margin")
    b.add_argument("--sim-rates", action="store_true", help="at the rates the simulator's links achieve "
                   "(cnic_efficiency, snic_efficiency of engines/costmodel/constants.py) instead of line rates")
    b.add_argument("--json", action="store_true", help="print JSON on stdout (only that)")
    b.set_defaults(func=cmd_bounds)

    c = sub.add_parser("compare", help="run a scenario once per hardware profile, side by side",
                       description="Run SCENARIO once per hardware profile into DIR/<profile>/ (finished "
                       "profiles are not run again) and print JCT (or capacity) per system, what DualPath "
                       "buys, and each profile's bounds; writes DIR/compare.json and DIR/compare.md.")
    c.add_argument("scenario", nargs="?", default=str(DEFAULT_SCENARIO), help="scenario YAML (default: %(default)s)")
    c.add_argument("--hardware", required=True, help="comma-separated profiles: names or paths")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override any scenario key (as for run); repeatable")
    c.add_argument("--capacity", action="store_true", help="compare capacity under the SLO instead of JCT")
    c.add_argument("-o", "--output", help="directory (default: results/compare-<name>-<YYYYmmdd-HHMMSS>)")
    c.add_argument("--json", action="store_true", help="print compare.json on stdout (only that)")
    c.set_defaults(func=cmd_compare)

    k = sub.add_parser("calibrate", help="measure this host into a hardware profile (< 30 s)",
                       description="Measure storage read bandwidth (cold and warm), memcpy, loopback TCP and "
                       "(with torch) matmul and attention throughput, and write a hardware profile that "
                       "`dualpath run --set hardware=PROFILE.yaml` accepts.")
    k.add_argument("-o", "--output", required=True, metavar="PROFILE.yaml", help="profile to write")
    k.add_argument("--storage-dir", default=None, help="directory whose storage is measured (default: the "
                   "system's temporary directory)")
    k.add_argument("--size-mb", type=int, default=256, help="test file and buffer size in MiB (default 256)")
    k.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (default 3)")
    k.set_defaults(func=cmd_calibrate)


# ----- bounds ------------------------------------------------------------------------------------
def _frac(x: Fraction | None) -> str:
    if x is None:
        return "inf"
    return str(x) if x.denominator == 1 else f"{x} ({float(x):.3g})"


def _num(x: Fraction | None) -> dict | None:
    return None if x is None else {"fraction": str(x), "value": float(x)}


def cmd_bounds(args) -> int:
    from engines.costmodel import hardware_spec
    from harness.bounds import parse_pd, pd_bounds, storage_compute_balance
    from harness.cli import emit_json

    pd = parse_pd(args.pd) if args.pd else None
    hw = hardware_spec(args.hardware)
    if args.sim_rates:
        from engines.costmodel import SimConstants
        k = SimConstants()
        b = pd_bounds(hw, k.cnic_efficiency, k.snic_efficiency)
    else:
        b = pd_bounds(hw)
    rates = (f"simulator rates: CNIC x {k.cnic_efficiency:g}, SNIC x {k.snic_efficiency:g}, DRAM at M"
             if args.sim_rates else "line rates")
    balance = storage_compute_balance(hw, args.model) if args.model else None
    verdict = b.verdict(*pd) if pd else None
    if args.json:
        out = {"hardware": hw.name, "rates": rates, "g": b.g, "B_bytes_s": float(b.cnic_bytes_s), "s": _num(b.s),
               "M_bytes_s": float(b.dram_bytes_s), "empty": b.empty, "lower": _num(b.lower), "upper": _num(b.upper),
               "range": None if b.empty else f"{b.lower} <= P/D <= {'inf' if b.upper is None else b.upper}",
               "lower_binds": list(b.lower_binds), "upper_binds": list(b.upper_binds),
               "constraints": [{"name": c.name, "kind": c.kind, "bound": _num(c.bound), "formula": c.formula,
                                "holds": c.holds} for c in b.constraints]}
        if verdict:
            out["pd"] = {**verdict, "ratio": _num(verdict["ratio"]),
                         **{k: _num(verdict[k]) for k in ("times_above_lower", "upper_times_ratio",
                                                         "distance_to_lower", "distance_to_upper")},
                         "loads": {k: _num(v) for k, v in verdict["loads"].items()}}
        if balance:
            out["storage_compute"] = balance
        emit_json(out)
        return 0
    print(f"{hw.name}: g = {b.g} GPUs/node, B = {float(b.cnic_bytes_s) * 8 / 1e9:g} Gbps per CNIC, s = {_frac(b.s)} "
          f"({hw.snic_count} x {hw.snic_gbps:g} Gbps SNIC), M = {float(b.dram_bytes_s) / 1e9:g} GB/s ({rates})")
    if b.empty:
        broken = [c for c in b.constraints if c.kind == "any" and not c.holds]
        why = ", ".join(f"{c.name} ({c.formula})" for c in broken) or (
            f"the upper bound {_frac(b.upper)} ({', '.join(b.upper_binds)}) is below the lower bound "
            f"{_frac(b.lower)} ({', '.join(b.lower_binds)})")
        print(f"no bottleneck-free P/D: {why}")
    else:
        print(f"{b.lower} <= P/D <= {'inf' if b.upper is None else b.upper}")
        print(f"  lower end {_frac(b.lower)}: {', '.join(b.lower_binds) or 'none'}")
        print(f"  upper end {_frac(b.upper)}: {', '.join(b.upper_binds) or 'none'}")
    print("constraints (reads spread evenly over every node's SNIC):")
    for c in b.constraints:
        if c.kind == "any":
            cell = f"{'holds' if c.holds else 'FAILS'} for any P/D"
        else:
            cell = f"P/D {'>=' if c.kind == 'lower' else '<='} {_frac(c.bound)}"
        print(f"  {c.name:<14} {cell:<28} {c.formula}")
    if verdict:
        p, d = pd
        r = verdict["ratio"]
        print(f"{p}P{d}D: P/D = {_frac(r)} is {'inside' if verdict['inside'] else 'OUTSIDE'} the range", end="")
        parts = []
        if verdict["times_above_lower"] is not None:
            parts.append(f"{float(verdict['times_above_lower']):.3g}x the lower bound")
        if verdict["upper_times_ratio"] is not None:
            parts.append(f"the upper bound is {float(verdict['upper_times_ratio']):.3g}x it")
        print(f" ({'; '.join(parts)})" if parts else "")
        loads = ", ".join(f"{k} {float(v):.0%}" for k, v in verdict["loads"].items())
        print(f"  link loads with every SNIC reading at full rate: {loads}")
        if verdict["over_line_rate"]:
            print(f"  over line rate: {', '.join(verdict['over_line_rate'])}")
    if balance:
        bal = balance["dualpath_balanced_pd"]
        print(f"{balance['model']} ({balance['kv_bytes_per_token']:,} KV bytes/token, {balance['shape']['cached']:,} "
              f"cached + {balance['shape']['new']} new tokens): one node's storage feeds "
              f"{balance['storage_tokens_s_per_node']:,.0f} prompt tokens/s, one prefill node computes "
              f"{balance['prefill_tokens_s_per_node']:,.0f}")
        print("  prefill compute binds at any P/D: one node's storage outruns its own prefill (Basic included)"
              if bal is None else
              f"  DualPath's storage meets prefill compute at P/D = {bal:.3g} (below it storage binds, above it compute)")
    return 0


# ----- compare -----------------------------------------------------------------------------------
def cmd_compare(args) -> int:
    from harness import compare
    from harness.cli import emit_json
    from harness.results import jsonable, write_json
    profiles = compare.profile_list(args.hardware)
    scenario = compare.preflight(args, profiles)  # bad input fails here, before any run or directory
    out_dir = Path(args.output) if args.output else _new_dir(scenario["name"])
    for profile in profiles:
        state = compare.run_profile(args, profile, out_dir / Path(profile).stem)
        print(f"{Path(profile).stem}: {'already done' if state == 'done' else state}", file=sys.stderr)
        if state not in ("done", "ran"):
            return 1
    comparison = compare.collect(out_dir, profiles, args.capacity)
    comparison["scenario"] = str(args.scenario)
    comparison["overrides"] = list(args.overrides)
    table = compare.format_table(comparison)
    write_json(out_dir / "compare.json", jsonable(comparison))
    (out_dir / "compare.md").write_text(f"# {scenario['name']} on {', '.join(profiles)}\n\n```\n{table}\n```\n",
                                        encoding="utf-8")
    if args.json:
        emit_json(comparison)
    else:
        print(table)
        print(f"results: {out_dir}", file=sys.stderr)
    return 0


def _new_dir(name: str) -> Path:
    from harness.results import new_run_dir
    return new_run_dir(Path("results"), f"compare-{name}")


def _flops(x: float) -> str:
    return f"{x / 1e12:.3g} TFLOP/s" if x >= 1e12 else f"{x / 1e9:.3g} GFLOP/s"


# ----- calibrate ---------------------------------------------------------------------------------
def cmd_calibrate(args) -> int:
    import tempfile

    from harness.calibrate import calibrate, check_storage_dir

    out = Path(args.output)
    if out.suffix not in (".yaml", ".yml"):
        raise InputError("the profile is a .yaml file", field="--output")
    if args.size_mb < 1 or args.size_mb > 65536:
        raise InputError(f"expected 1 .. 65536 MiB, got {args.size_mb}", field="--size-mb")
    if args.repeats < 1 or args.repeats > 100:
        raise InputError(f"expected 1 .. 100, got {args.repeats}", field="--repeats")
    storage_dir = Path(args.storage_dir or tempfile.gettempdir())
    if not storage_dir.is_dir():
        raise InputError("no such directory", path=str(storage_dir), field="--storage-dir")
    if not out.parent.is_dir():
        raise InputError("no such directory", path=str(out.parent), field="--output")
    check_storage_dir(storage_dir)
    result = calibrate(out, storage_dir, args.size_mb, args.repeats,
                       report=lambda line: print(f"calibrate: {line}", file=sys.stderr, flush=True))
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    c, w, m, t = (result[k] for k in ("storage_cold", "storage_warm", "memcpy", "loopback_tcp"))
    g = result["gpu"]
    print(f"storage read cold {c.value / 1e9:.3g} GB/s, warm {w.value / 1e9:.3g} GB/s; memcpy {m.value / 1e9:.3g} "
          f"GB/s; loopback TCP {t.value * 8 / 1e9:.3g} Gbps; matmul {_flops(g['bf16'].value)} on {g['device']}")
    print(f"profile: {out}", file=sys.stderr)
    return 0
