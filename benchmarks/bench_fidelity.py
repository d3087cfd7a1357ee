"""The simulator's fidelity against the paper: every Fig. 7 cell and the Fig. 12 ablation, ours vs paper.

    .venv/bin/python benchmarks/bench_fidelity.py [--agents 512,1024] [--models ds660b,ds27b,qwen]
        [--ablation-agents 1024,2048] [--presets paper-32k,...] [--set KEY=VALUE ...] [-j N] [-o OUT] [--resume] [--before DIR]

It runs the paper suite's own scenarios (scenarios/paper/fig7-*.yaml, ablation-ds660b-64k.yaml) through the
suite's runner (harness/sweep.py, harness/pool.py), only the points asked for: the whole grid (512-4,096
agents) is hours on a 2-core machine, so the default is the 512 and 1,024-agent cells, the Qwen2.5-32B
cells and the ablation at 1,024 agents. It prints every cell (ours, the paper's bar reading, the error),
the mean absolute error over the out-of-sample cells (the calibration points, Oracle and Basic at DS 660B
64K 512 and 4,096 agents, are listed apart: they were fitted), per model, and the ablation's rungs.
`--before DIR` adds the column of an earlier output directory (the same cells) and its error.
`--set sim.NAME=VALUE` runs every point with a constant changed (e.g. a mechanism switched off).
Results go to OUT/<scenario>/<point>/ (default results/fidelity-<time>); `--resume` finishes an OUT.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import pool  # noqa: E402
from harness.cli import Parser, UsageError  # noqa: E402
from harness.cli_run import positive_int  # noqa: E402
from harness.cli_suite import INDEX, tasks_for  # noqa: E402
from harness.report.paper import expected_rows  # noqa: E402
from harness.sweep import expand  # noqa: E402
from traces.errors import InputError  # noqa: E402

PAPER = ROOT / "scenarios" / "paper"
FILES = {"ds660b": "fig7-ds660b.yaml", "ds27b": "fig7-ds27b.yaml", "qwen": "fig7-qwen32b.yaml"}
ABLATION = "ablation-ds660b-64k.yaml"
AGENTS = "trace.synth.agents"
PRESET = "trace.synth.preset"
CALIBRATION = {("fig7-ds660b", "paper-64k", 512, "oracle"), ("fig7-ds660b", "paper-64k", 4096, "oracle"),
               ("fig7-ds660b", "paper-64k", 512, "basic"), ("fig7-ds660b", "paper-64k", 4096, "basic")}
RUNGS = ("basic", "layerwise", "dualpath-rr", "dualpath")
CSV = "fidelity.csv"


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def _models(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in FILES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown model {bad[0] if bad else text!r} (allowed: {', '.join(FILES)})")
    return names


def select(path: Path, agents: list[int] | None, presets: list[str] | None, sets: list[str], out: Path) -> list[dict]:
    """The suite's tasks for one scenario file, only the points whose agent count and preset are asked for."""
    scenario, points = expand(str(path), sets)
    synth = scenario["trace"]["synth"]
    every = points
    if agents is not None:
        points = [p for p in points if p[1].get(AGENTS, synth["agents"]) in agents]
    if presets is not None:
        points = [p for p in points if p[1].get(PRESET, synth["preset"]) in presets]
    if not points:
        have = sorted({p[1].get(AGENTS, synth["agents"]) for p in every})
        print(f"{path.name}: no point asked for (its agent counts: {', '.join(map(str, have))})", file=sys.stderr)
        return []
    return tasks_for(str(path), sets, out / scenario["name"], scenario, points)


def cells(tasks: list[dict]) -> list[dict]:
    """One row per expected value of a finished point: scenario, preset, agents, system, ours, paper, error."""
    rows = []
    for t in tasks:
        for r in expected_rows([(t["point"], Path(t["dir"]))]):
            if r["metric"] != "makespan_jct_s" or r["figure"] == "Table 3":
                continue
            preset = t["keys"].get(PRESET) or _preset_of(t)
            agents = t["keys"].get(AGENTS)
            err = None if r["ours"] is None else r["ours"] / r["expected"] - 1
            rows.append({"scenario": t["scenario"], "preset": preset, "agents": agents, "system": r["system"],
                         "ours": r["ours"], "paper": r["expected"], "error": err,
                         "calibration": (t["scenario"], preset, agents, r["system"]) in CALIBRATION})
    return rows


def _preset_of(task: dict) -> str:
    for o in task["overrides"]:
        if o.startswith(PRESET + "="):
            return o.split("=", 1)[1].strip('"')
    from harness.sweep import load_point
    return load_point(task["path"], task["overrides"], task["keys"])["trace"]["synth"]["preset"]


def _key(r: dict) -> tuple:
    return (r["scenario"], r["preset"], int(r["agents"]), r["system"])


def read_csv(path: Path) -> dict:
    with open(path, newline="") as f:
        return {_key(r): float(r["ours"]) for r in csv.DictReader(f) if r["ours"] not in ("", "None")}


def mae(rows: list[dict], value="ours") -> float | None:
    errs = [abs(r[value] / r["paper"] - 1) for r in rows if r.get(value) is not None]
    return sum(errs) / len(errs) if errs else None


def _num(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:+.1f} %"


def report(rows: list[dict], before: dict | None) -> None:
    fig7 = [r for r in rows if r["scenario"] != Path(ABLATION).stem]
    abl = [r for r in rows if r["scenario"] == Path(ABLATION).stem]
    if before is not None:
        for r in rows:
            r["before"] = before.get(_key(r))
    head = f"{'scenario':<13} {'preset':<10} {'agents':>6} {'system':<12} {'ours':>8} {'paper':>7} {'error':>8}"
    print(head + (f" {'before':>8} {'error':>8}" if before is not None else ""))
    for r in fig7 + abl:
        line = (f"{r['scenario']:<13} {r['preset']:<10} {r['agents']:>6} {r['system']:<12} "
                f"{_num(r['ours']):>8} {r['paper']:>7.0f} {_pct(r['error']):>8}")
        if before is not None:
            b = r.get("before")
            line += f" {_num(b):>8} {_pct(None if b is None else b / r['paper'] - 1):>8}"
        print(line + ("  (calibration)" if r["calibration"] else ""))
    print()
    out_of_sample = [r for r in fig7 if not r["calibration"]]
    groups = [("Fig. 7, out of sample", out_of_sample)]
    groups += [(f"  {s}", [r for r in out_of_sample if r["scenario"] == s])
               for s in dict.fromkeys(r["scenario"] for r in out_of_sample)]
    groups += [(f"  at {a} agents", [r for r in out_of_sample if r["agents"] == a])
               for a in sorted({r["agents"] for r in out_of_sample})]
    groups += [("calibration points", [r for r in fig7 if r["calibration"]]), ("ablation (Fig. 12)", abl)]
    for name, group in groups:
        if not group:
            continue
        line = f"mean abs error {name:<26} {len(group):>3} cells: {_pct(mae(group)).lstrip('+'):>8}"
        if before is not None:
            both = [r for r in group if r.get("before") is not None and r["ours"] is not None]
            line += f"   before {_pct(mae(both, 'before')).lstrip('+'):>8} (same {len(both)} cells)"
        print(line)
    cal = [r for r in fig7 if r["calibration"] and r["error"] is not None]
    if cal:
        worst = max(cal, key=lambda r: abs(r["error"]))
        print(f"calibration points within 5 %: {'yes' if abs(worst['error']) <= 0.05 else 'no'} "
              f"(worst {worst['system']} {worst['agents']}: {_pct(worst['error'])})")
    for agents in sorted({r["agents"] for r in abl}):
        jct = {r["system"]: r["ours"] for r in abl if r["agents"] == agents and r["ours"] is not None}
        paper = {r["system"]: r["paper"] for r in abl if r["agents"] == agents}
        if "basic" not in jct:
            continue
        gains = ", ".join(f"{s} {100 * (1 - jct[s] / jct['basic']):.1f} % (paper {100 * (1 - paper[s] / paper['basic']):.1f} %)"
                          for s in RUNGS[1:] if s in jct)
        ordered = all(jct[a] > jct[b] for a, b in zip(RUNGS, RUNGS[1:]) if a in jct and b in jct)
        print(f"ablation {agents} agents, JCT reduction vs basic: {gains}; rungs in order: {'yes' if ordered else 'no'}")


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["scenario", "preset", "agents", "system", "ours", "paper", "error",
                                          "calibration"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in w.fieldnames})


def main(argv=None) -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=_ints, default=[512, 1024], help="DS cells' agent counts (default 512,1024; "
                    "the grid: 512,1024,2048,4096)")
    ap.add_argument("--models", type=_models, default=list(FILES), help="ds660b,ds27b,qwen (default: all)")
    ap.add_argument("--qwen-agents", type=_ints, default=None, help="Qwen2.5-32B's agent counts (default: all its cells)")
    ap.add_argument("--ablation-agents", type=_ints, default=[1024], help="the ablation's agent counts "
                    "(default 1024; the paper's: 1024,2048)")
    ap.add_argument("--presets", type=lambda t: [v.strip() for v in t.split(",") if v.strip()], default=None,
                    help="only these datasets (e.g. paper-32k,paper-48k; default: all)")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--no-fig7", action="store_true", help="only the ablation")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a key in every point (e.g. sim.copy_submit_s=0)")
    ap.add_argument("-j", "--jobs", type=positive_int, default=1, metavar="N", help="points run at a time (default 1)")
    ap.add_argument("-o", "--output", type=Path, default=None)
    ap.add_argument("--resume", action="store_true", help="run only the points OUT does not hold finished")
    ap.add_argument("--report-only", action="store_true", help="print OUT's table without running anything")
    ap.add_argument("--before", type=Path, help="an earlier output directory (its fidelity.csv) to compare with")
    try:
        args = ap.parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    out = args.output or ROOT / "results" / f"fidelity-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        tasks = []
        for m in [] if args.no_fig7 else args.models:
            tasks += select(PAPER / FILES[m], args.qwen_agents if m == "qwen" else args.agents, args.presets,
                            args.sets, out)
        if not args.no_ablation:
            tasks += select(PAPER / ABLATION, args.ablation_agents, args.presets, args.sets, out)
        if not tasks:
            raise InputError("no point matches these agent counts", field="--agents")
        before = read_csv(args.before / CSV) if args.before else None
    except InputError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    counts = {}
    if not args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        print(f"fidelity: {len(tasks)} points, {args.jobs} at a time, into {out}", file=sys.stderr)
        t0 = time.perf_counter()
        _, counts = pool.run_all(tasks, out / INDEX, args.jobs, "process", None, args.resume)
        print(f"[{time.perf_counter() - t0:.0f} s wall]", file=sys.stderr)
    rows = cells(tasks)
    if args.report_only and not rows:
        print(f"{out}: no finished point to report (run without --report-only)", file=sys.stderr)
        return 1
    if not args.report_only:
        write_csv(rows, out / CSV)
    report(rows, before)
    if counts.get("interrupted"):
        return 130
    return 0 if all(r["ours"] is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
