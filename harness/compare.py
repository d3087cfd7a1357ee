"""`dualpath compare`: one scenario run once per hardware profile, side by side.

Each profile's run is an ordinary results directory, `DIR/<profile>/`, made by the same code as
`dualpath run` (or `run --capacity`); a profile whose directory already holds a finished run is not
run again (a sweep point that is done), so an interrupted comparison resumes. The comparison itself
(`compare.json`, `compare.md`) is read back from those directories through `load_results`.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

from harness.bounds import PdBounds, pd_bounds
from traces.errors import InputError

LINE_CLASSES = ("snic", "cnic", "dram")


def profile_list(text: str) -> list[str]:
    """`hopper-paper,hopper-2snic,path/to/x.yaml` -> names/paths, each a loadable profile, no duplicates."""
    from engines.costmodel import hardware_spec

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise InputError("expected one or more hardware profiles, comma separated", field="--hardware")
    seen: dict[str, str] = {}
    for name in names:
        try:
            hardware_spec(name)
        except InputError as exc:
            raise InputError(exc.problem, path=exc.path, line=exc.line, field=f"--hardware {name}") from None
        stem = Path(name).stem
        if stem in seen:
            raise InputError(f"{name!r} and {seen[stem]!r} would share the results directory {stem}/",
                             field="--hardware")
        seen[stem] = name
    return names


def preflight(args, profiles: list[str]) -> dict:
    """Before anything runs or is written: every profile's scenario is valid for the simulator and can
    run the scenario's trace (weights and KV fit), so a bad profile does not fail after others ran."""
    from harness import cli_run
    from harness.scenario import load_scenario
    from harness.trace_input import scenario_trace

    trace = None
    first = None
    for profile in profiles:
        scenario = load_scenario(args.scenario, [*args.overrides, f"hardware={profile}"])
        if scenario["backend"] != "sim":
            raise InputError(f"compare varies the hardware profile, which only backend sim uses (backend is "
                             f"{scenario['backend']})", path=args.scenario, field="backend")
        backend = cli_run.backend_module(scenario, args.scenario)
        slo = scenario.get("slo") or {}
        if args.capacity and not slo.get("ttft_s") and not slo.get("tpot_s"):
            raise InputError("--capacity needs slo.ttft_s and/or slo.tpot_s", path=args.scenario, field="slo")
        if trace is None:
            trace = cli_run.located(lambda: scenario_trace(scenario["trace"]), scenario, args.scenario)
        try:
            backend.check({**scenario, "_path": args.scenario}, trace)
        except InputError as exc:
            raise InputError(f"on {Path(profile).stem}: {exc.problem}", path=exc.path, line=exc.line,
                             field=exc.field) from None
        first = first or scenario
    return first


def run_profile(args, profile: str, run_dir: Path) -> str:
    """Run the scenario on one profile into run_dir; 'done' if it holds a finished run already."""
    from harness import cli_run
    from harness.results import load_results
    from harness.scenario import load_scenario

    if (run_dir / "summary.json").exists():
        status = load_results(run_dir).get("summary", {}).get("status")
        if status == "ok":
            return "done"
        raise InputError(f"holds an unfinished run (status {status!r}); remove it to run this profile again",
                         path=str(run_dir))
    scenario = load_scenario(args.scenario, [*args.overrides, f"hardware={profile}"])
    backend = cli_run.backend_module(scenario, args.scenario)
    sub = argparse.Namespace(scenario=args.scenario, json=False)
    # each run prints its own table; here that is progress, so it goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        runner = cli_run.run_capacity if args.capacity else cli_run.run_systems
        rc = runner(sub, scenario, backend, lambda: run_dir)
    return "ran" if rc == 0 else f"exit {rc}"


def link_utilisation(links, hardware, nodes: dict[str, int], span_s: float | None) -> dict:
    """Measured load of each link class as a share of its line rate: per node role (prefill/decode, from
    the simulator's node names p*/d*), class (snic, cnic, dram) and direction (dram: rx + tx together,
    the paper's half-duplex count), over every link of the class (`nodes`: {"prefill": P, "decode": D}).
    `mean` over the run's span, `p90` over its telemetry windows (the busy phase). Not an attribution:
    what each link carried."""
    if links is None or not len(links) or not span_s:
        return {}
    capacity = {"snic": hardware.snic_bytes_s, "cnic": hardware.cnic_bytes_s, "dram": hardware.dram_bw_bytes_s}
    role = links["node"].astype(str).str[0].map({"p": "prefill", "d": "decode"})
    cls = links["link"].astype(str).str.extract(r"^(snic|cnic|dram)")[0]
    direction = np.where(cls == "dram", "rxtx", links["direction"].astype(str))
    frame = links.assign(role=role, cls=cls, dir=direction).dropna(subset=["role", "cls"])
    frame = frame[frame["t_start"] < span_s]
    windows = max(1, int(np.ceil(span_s / float((links["t_end"] - links["t_start"]).iloc[0]))))
    out: dict[str, dict] = {}
    for (r, c, d), group in frame.groupby(["role", "cls", "dir"]):
        units = nodes.get(r, 0) * (hardware.gpus_per_node if c == "cnic" else 1)
        rate = capacity[c] * units
        if rate <= 0:
            continue
        per_window = group.groupby("t_start").agg(bytes=("bytes", "sum"), t_end=("t_end", "first"))
        util = (per_window["bytes"] / ((per_window["t_end"] - per_window.index) * rate)).to_numpy()
        util = np.concatenate([util, np.zeros(max(0, windows - len(util)))])  # idle windows count
        out[f"{r} {c} {'' if d == 'rxtx' else d}".strip()] = {
            "mean": float(group["bytes"].sum() / (rate * span_s)), "p90": float(np.percentile(util, 90))}
    return out


def collect(out_dir: Path, profiles: list[str], capacity: bool) -> dict:
    """The comparison from the per-profile results directories."""
    from engines.costmodel import hardware_spec
    from harness.results import load_results

    rows = {}
    for profile in profiles:
        hw = hardware_spec(profile)
        results = load_results(out_dir / Path(profile).stem)
        summary = results.get("summary", {})
        scenario = summary.get("meta", {}).get("scenario", {})
        cluster = scenario.get("cluster", {})
        b = pd_bounds(hw)
        row = {"hardware": hw.name, "dir": Path(profile).stem, "bounds": bounds_json(b)}
        if cluster:
            row["pd"] = b.verdict(int(cluster["prefill_nodes"]), int(cluster["decode_nodes"]))
        if capacity:
            row["systems"] = {name: {"capacity_aps": r.get("capacity_aps")}
                              for name, r in summary.get("capacity", {}).items()}
        else:
            row["systems"] = {}
            for name, s in summary.get("systems", {}).items():
                entry = {"jct_s": s.get("makespan_jct_s")}
                if "bottleneck" in s:
                    b = s["bottleneck"]
                    entry["bottleneck"] = b.get("resource") if isinstance(b, dict) else b  # the resource named
                links = results["links"]
                nodes = {"prefill": int(cluster.get("prefill_nodes", 0)), "decode": int(cluster.get("decode_nodes", 0))}
                entry["link_utilisation"] = link_utilisation(links[links["system"] == name], hw, nodes,
                                                             s.get("duration_s"))
                row["systems"][name] = entry
        rows[Path(profile).stem] = row
    return {"capacity": capacity, "profiles": rows}


def bounds_json(b: PdBounds) -> dict:
    return {"lower": str(b.lower), "upper": None if b.upper is None else str(b.upper), "empty": b.empty,
            "lower_binds": list(b.lower_binds), "upper_binds": list(b.upper_binds), "s": str(b.s), "g": b.g}


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}{unit}" if abs(x) >= 100 else f"{x:.3g}{unit}"


def gains(systems: dict, key: str) -> tuple[str, float | None]:
    """What DualPath buys: basic/dualpath JCT (or dualpath/basic capacity), when both ran."""
    b, d = (systems.get(n, {}).get(key) for n in ("basic", "dualpath"))
    if not b or not d:
        return "", None
    return ("basic/dualpath JCT", b / d) if key == "jct_s" else ("dualpath/basic capacity", d / b)


def format_table(comparison: dict) -> str:
    key = "capacity_aps" if comparison["capacity"] else "jct_s"
    rows_in = comparison["profiles"]
    systems = list(dict.fromkeys(s for r in rows_in.values() for s in r["systems"]))
    show_bottleneck = any("bottleneck" in e for r in rows_in.values() for e in r["systems"].values())
    label = "capacity agents/s" if comparison["capacity"] else "JCT s"
    gain_label = "dualpath/basic cap." if comparison["capacity"] else "basic/dualpath JCT"
    header = ["hardware", *[f"{s} {label}" for s in systems], gain_label, "bounds P/D", "P:D"]
    if show_bottleneck:
        header += [f"{s} bottleneck" for s in systems]
    rows = [header]
    for r in rows_in.values():
        bnd = r["bounds"]
        rng = "empty" if bnd["empty"] else f"{bnd['lower']} .. {bnd['upper'] or 'inf'}"
        pd_cell = "-"
        if "pd" in r:
            pd_cell = f"{r['pd']['pd']} {'inside' if r['pd']['inside'] else 'OUTSIDE'}"
        _, gain = gains(r["systems"], key)
        cells = [r["dir"], *[_fmt(r["systems"].get(s, {}).get(key)) for s in systems],
                 "-" if gain is None else f"{gain:.2f}x", rng, pd_cell]
        if show_bottleneck:
            cells += [str(r["systems"].get(s, {}).get("bottleneck", "-")) for s in systems]
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip() for row in rows)
