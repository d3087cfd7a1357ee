"""`dualpath run SWEEP.yaml -j N` and `dualpath suite [DIR] [-j N] [-o OUT] [--only PATTERN]`: many points
(harness/sweep.py), run by harness/pool.py into OUT/<point>/ (a suite: OUT/<scenario>/<point>/), with
OUT/index.parquet, a table of the points and ours vs expected (harness/expected.py); the suite also
writes OUT/report.md (harness/report/paper.py)."""
from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

from traces.errors import InputError

DEFAULT_SUITE = Path(__file__).resolve().parents[1] / "scenarios" / "paper"
INDEX = "index.parquet"


def register(sub) -> None:
    from harness import pool

    s = sub.add_parser("suite", help="run every scenario of a directory (default: the paper), sweeps included",
                       description="Run every scenario under DIR (default: scenarios/paper), every sweep point "
                       "-j N at a time, into OUT/<scenario>/<point>/; write OUT/index.parquet and OUT/report.md "
                       "and print ours vs the paper. Exit 0 when every point ran (misses are findings), "
                       "1 when a point failed.")
    s.add_argument("directory", nargs="?", default=str(DEFAULT_SUITE), help="scenario directory (default: %(default)s)")
    s.add_argument("-o", "--output", help="output directory (default: results/<DIR's name>-suite)")
    s.add_argument("--only", metavar="PATTERN", action="append", default=[],
                   help="only scenarios whose file name matches (glob, e.g. 'fig7-*'; a plain word matches "
                   "names holding it); repeatable")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a key in every scenario (e.g. --set trace.synth.agents=64 for a quick look)")
    pool.add_arguments(s)
    s.set_defaults(func=cmd_suite)


def tasks_for(path: str, user_overrides, root: Path, scenario: dict, points) -> list[dict]:
    from harness.sweep import load_point, needs_capacity
    capacity = needs_capacity(scenario)
    return [{"scenario": scenario["name"], "point": name, "keys": keys, "path": str(path), "overrides": point,
             "dir": str(root / name), "capacity": capacity, "cost": cost(load_point(str(path), point, keys), capacity),
             "user_overrides": list(user_overrides)}
            for name, keys, point in points]


def cost(point: dict, capacity: bool) -> float:
    """A point's rough size (simulated requests x systems; a capacity search as ~20 runs): the pool starts
    the largest first, so a long point does not start last and leave the other workers idle."""
    from traces.presets import PRESETS

    synth = point["trace"].get("synth")
    if synth is None:
        return 0.0
    turns = synth.get("turns_mean", PRESETS[synth["preset"]].turns_mean)
    return float(synth["agents"]) * turns * len(point["systems"]) * (20 if capacity else 1)


def _claim(out: Path, resume: bool, what: str) -> None:
    if not resume and out.exists() and any(out.iterdir()):
        raise InputError(f"already holds {what} (not empty): --resume to finish it, or another -o", path=str(out))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output directory ({exc.strerror})", path=str(out)) from None


def _check_executor(args) -> None:
    if args.executor == "ray":
        from harness.pool import ray_module
        ray_module()  # without Ray: one line saying how to get it, exit 2, before anything is made
    elif args.ray_address:
        raise InputError("--ray-address needs --executor ray", field="--ray-address")


def run_sweep(args, scenario: dict) -> int:
    """`dualpath run` of a scenario with sweep:/zip:."""
    from harness import pool
    from harness.results import new_run_dir
    from harness.sweep import expand

    _check_executor(args)
    _, points = expand(args.scenario, args.overrides)
    if len(points) == 1 and not points[0][1]:  # --set gave every swept key one value: a plain run
        if args.resume:
            raise InputError("--set leaves one point: --resume is for sweeps", field="--resume")
        from harness.cli_run import cmd_run
        args.user_overrides = changes(scenario, args.overrides)
        args.overrides, args.executor = points[0][2], "process"
        return cmd_run(args)
    if args.capacity or args.repeats > 1 or args.json or args.report:
        flag = next(f for f, on in (("--capacity", args.capacity), ("--repeats", args.repeats > 1),
                                    ("--json", args.json), ("--report", args.report)) if on)
        raise InputError(f"{flag} is for one run; a sweep's points are in its index (run a point's results "
                         "directory for that)", field=flag)
    if args.output:
        out = Path(args.output)
        _claim(out, args.resume, "a sweep")
    else:
        if args.resume:
            raise InputError("--resume needs -o DIR (the sweep to finish)", field="--resume")
        out = new_run_dir(Path("results"), scenario["name"])
    tasks = tasks_for(args.scenario, args.overrides, out, scenario, points)
    frame, counts = pool.run_all(tasks, out / INDEX, args.jobs, args.executor, args.ray_address, args.resume)
    print_points(frame)
    print_expected(tasks)
    return pool.report_exit(counts, frame, out / INDEX)


def changes(scenario: dict, overrides) -> list[str]:
    """The --set strings that change the scenario: not those that pick one of a swept key's own values."""
    import yaml

    swept = {**(scenario.get("sweep") or {}), **(scenario.get("zip") or {})}
    out = []
    for raw in overrides:
        key, _, text = raw.partition("=")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if not (key.strip() in swept and value in swept[key.strip()]):
            out.append(raw)
    return out


def scenario_files(directory: Path, only: list[str]) -> list[Path]:
    if not directory.is_dir():
        raise InputError("not a directory of scenarios", path=str(directory))
    files = sorted(p for p in directory.rglob("*.yaml") if p.is_file())

    def wanted(p: Path) -> bool:
        return not only or any(fnmatch.fnmatch(p.name, pat) or fnmatch.fnmatch(p.stem, pat)
                               or (not any(c in pat for c in "*?[") and pat in p.stem) for pat in only)
    chosen = [p for p in files if wanted(p)]
    if not chosen:
        raise InputError("no scenario files" + (f" match --only {' '.join(only)}" if only else " (*.yaml)"),
                         path=str(directory))
    return chosen


def cmd_suite(args) -> int:
    from harness import pool
    from harness.report.paper import write_suite_report
    from harness.sweep import expand

    _check_executor(args)
    directory = Path(args.directory)
    files = scenario_files(directory, args.only)
    out = Path(args.output or Path("results") / f"{directory.resolve().name}-suite")
    loaded = [(f, *expand(str(f), args.overrides)) for f in files]  # every file and point checked first
    names = [s["name"] for _, s, _ in loaded]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        from harness.scenario import _compose, _read_text
        f = str(loaded[names.index(dup, names.index(dup) + 1)][0])
        line = _compose(_read_text(f), f)[1].get("name", (f, None))[1]
        raise InputError(f"another scenario of the suite is named {dup!r} too (results go to OUT/<name>/)",
                         path=f, line=line, field="name")
    _claim(out, args.resume, "a suite")
    tasks = [t for f, s, pts in loaded for t in tasks_for(str(f), args.overrides, out / s["name"], s, pts)]
    print(f"suite: {len(files)} scenarios, {len(tasks)} points, {args.jobs} at a time ({args.executor})",
          file=sys.stderr)
    frame, counts = pool.run_all(tasks, out / INDEX, args.jobs, args.executor, args.ray_address, args.resume)
    print_points(frame)
    rows = print_expected(tasks)
    write_suite_report(out, frame, rows, args.overrides)
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    return pool.report_exit(counts, frame, out / INDEX)


def print_points(frame) -> None:
    from harness.expected import _g

    if not len(frame):
        return
    cols = ["scenario", "point", "system", "status", "jct_s", "ttft_p50_s", "tpot_p50_s", "capacity_aps"]
    body = [[r.get(c) if c in ("scenario", "point", "system", "status") else _g(_num(r.get(c)))
             for c in cols] for r in frame.to_dict("records")]
    body = [[("-" if v is None else str(v)) for v in row] for row in body]
    keep = [i for i, c in enumerate(cols) if c in ("point", "system", "status")
            or any(row[i] != "-" for row in body)]
    if frame["scenario"].nunique() == 1:
        keep = [i for i in keep if cols[i] != "scenario"]
    table = [[cols[i] for i in keep]] + [[row[i] for i in keep] for row in body]
    widths = [max(len(r[i]) for r in table) for i in range(len(keep))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _num(v):
    try:
        return None if v is None or v != v else float(v)
    except (TypeError, ValueError):
        return None


def print_expected(tasks: list[dict]) -> list[dict]:
    """Ours vs expected over every point that has a summary (the point's scenario carries its entries)."""
    from harness.report.paper import expected_rows

    rows = expected_rows([(f"{t['scenario']}/{t['point']}", Path(t["dir"])) for t in tasks])
    from harness.expected import format_rows
    text = format_rows(rows, changed=any(t["user_overrides"] for t in tasks))
    if text:
        print()
        print(text)
    return rows
