"""`dualpath gate --baseline A --candidate B [--rule METRIC:DIRECTION:TOLERANCE ...] [--junit FILE]
[--markdown FILE]`: exit 0 when nothing regressed, 1 when something did, 2 when the two cannot be compared
(harness/gate.py decides; this module parses and prints)."""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from traces.errors import InputError

EXIT_REGRESSED = 1
COLUMNS = ("system", "metric", "baseline", "candidate", "change", "rule", "interval", "verdict")
REFRESH = "rm -rf results/baselines/smoke && .venv/bin/dualpath run scenarios/smoke.yaml -o results/baselines/smoke"


def register(sub) -> None:
    from harness.gate import DEFAULT_RULES
    defaults = ", ".join(f"{r.metric}:{r.direction}:{100 * r.tolerance:g}%" for r in DEFAULT_RULES)
    g = sub.add_parser("gate", help="compare a candidate run against a baseline; exit 1 if a metric regressed",
                       description="Compare results (a results directory, a summary file, or a directory of "
                       "runs, point by point) against a baseline. Simulator results compare exactly; noisy "
                       "results (http) on a bootstrap interval of candidate/baseline. Exit 0: nothing "
                       "regressed; 1: something regressed; 2: bad input or not comparable.",
                       epilog=f"default rules, per system: {defaults}")
    g.add_argument("--baseline", required=True, metavar="A", help="baseline results")
    g.add_argument("--candidate", required=True, metavar="B", help="candidate results")
    g.add_argument("--rule", dest="rules", action="append", default=[], metavar="METRIC:DIRECTION:TOLERANCE",
                   help="replace or add a rule, e.g. latency.ttft_s.p99:lower:10%% (a path in a system's summary; "
                   "direction lower|higher is better; tolerance relative, 0.1 or 10%%); repeatable")
    g.add_argument("--junit", metavar="FILE", help="also write JUnit XML (a test case per system and metric)")
    g.add_argument("--markdown", metavar="FILE", help="also write a markdown table (a CI job summary, a PR comment)")
    g.set_defaults(func=cmd_gate)


def cmd_gate(args) -> int:
    from harness import gate

    rules = gate.rules_with([gate.parse_rule(text) for text in args.rules])
    for out in (args.junit, args.markdown):
        if out and Path(out).is_dir():
            raise InputError("is a directory (give a file name)", path=out)
        if out and not Path(out).resolve().parent.is_dir():
            raise InputError("no such directory to write into", path=out)
    outcome = gate.gate(args.baseline, args.candidate, rules)
    for note in outcome.notes:
        print(f"differs: {note}")
    for failure in outcome.failures:
        print(f"FAILED: {failure}")
    print(format_table(outcome))
    print(verdict_line(outcome))
    if args.junit:
        _write(args.junit, junit_xml(outcome))
    if args.markdown:
        _write(args.markdown, markdown(outcome, args.baseline, args.candidate))
    return EXIT_REGRESSED if outcome.regressed else 0


def _write(path: str, text: str) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write ({exc.strerror})", path=path) from None


# ----- rendering -------------------------------------------------------------------------------------
def fmt_value(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return f"{x:.6g}"
    return f"{x:.4g}"


def fmt_change(x: float | None) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return "+inf" if x > 0 else "-inf"
    if x != 0 and abs(x) < 1e-4:
        return f"{100 * x:+.1e} %"
    return f"{100 * x:+.2f} %"


def fmt_interval(row) -> str:
    if row.interval is None:
        return "weak: 1 repeat" if row.weak else ""
    lo, hi = row.interval
    text = f"[{lo:.3f}, {hi:.3f}]"
    return text + (" weak: 1 repeat" if row.weak else "")


def cells(row) -> tuple[str, ...]:
    system = f"{row.point}: {row.system}" if row.point else row.system
    return (system, row.metric, fmt_value(row.baseline), fmt_value(row.candidate), fmt_change(row.change),
            row.rule, fmt_interval(row), row.verdict)


def format_table(outcome) -> str:
    rows = [COLUMNS] + [cells(r) for r in outcome.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    numeric = {2, 3, 4}
    lines = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def verdict_line(outcome) -> str:
    failed = [r for r in outcome.rows if r.failed]
    improved = [r for r in outcome.rows if r.verdict == "improved"]
    weak = any(r.weak for r in outcome.rows)
    parts = [f"gate: {'FAIL' if outcome.regressed else 'pass'}", f"{len(failed)} regressed",
             f"{len(improved)} improved", f"{len(outcome.rows) - len(failed) - len(improved)} unchanged"]
    text = ", ".join(parts)
    if failed:
        text += " (" + "; ".join(f"{(r.point + ': ') if r.point else ''}{r.system} {r.metric}" for r in failed) + ")"
    if improved and any(r.rule == "exact" for r in improved):
        text += "; simulator numbers moved: if intended, refresh the baseline (results/baselines/smoke: " \
                f"{REFRESH})"
    if weak:
        text += "; weak verdict: one repeat has no run-to-run noise in its interval (use dualpath run --repeats N)"
    return text


def markdown(outcome, baseline: str, candidate: str) -> str:
    head = f"### dualpath gate: {'❌ regressed' if outcome.regressed else '✅ no regression'}\n\n"
    head += f"Baseline `{baseline}`, candidate `{candidate}`.\n\n"
    for failure in outcome.failures:
        head += f"- **{failure}**\n"
    for note in outcome.notes:
        head += f"- differs: {note}\n"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---:" if i in (2, 3, 4) else "---"
                                                               for i in range(len(COLUMNS))) + "|"]
    for row in outcome.rows:
        c = list(cells(row))
        if row.failed:
            c[-1] = f"**{c[-1]}**"
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in c) + " |")
    return head + ("\n" if outcome.notes or outcome.failures else "") + "\n".join(lines) + "\n\n" + \
        verdict_line(outcome) + "\n"


def junit_xml(outcome) -> str:
    suite = ET.Element("testsuite", name="dualpath gate", tests=str(len(outcome.rows) + len(outcome.failures)),
                       failures=str(sum(r.failed for r in outcome.rows) + len(outcome.failures)), errors="0",
                       skipped="0")
    props = ET.SubElement(suite, "properties")
    for note in outcome.notes:
        ET.SubElement(props, "property", name="differs", value=note)
    for failure in outcome.failures:
        case = ET.SubElement(suite, "testcase", classname="dualpath.gate", name="run finished")
        ET.SubElement(case, "failure", message=failure, type="run")
    for row in outcome.rows:
        classname = "dualpath.gate." + (f"{row.point}." if row.point else "") + row.system
        case = ET.SubElement(suite, "testcase", classname=classname, name=row.metric)
        text = "  ".join(f"{k}={v}" for k, v in zip(COLUMNS, cells(row)) if v)
        if row.failed:
            ET.SubElement(case, "failure", message=f"{row.system} {row.metric} {row.verdict}: "
                          f"{fmt_value(row.baseline)} -> {fmt_value(row.candidate)} ({fmt_change(row.change)}, "
                          f"rule {row.rule})", type=row.verdict).text = text
        else:
            ET.SubElement(case, "system-out").text = text
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
