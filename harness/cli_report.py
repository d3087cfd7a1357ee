"""`dualpath report RESULTS... [-o DIR]`: report.md, report.html and figures/ (harness/report/)."""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    r = sub.add_parser("report", help="write report.md, report.html and figures/ from results directories",
                       description="Say what limits each system and what each ablation rung buys, in words "
                       "and figures; several results directories are compared side by side.")
    r.add_argument("results", nargs="+", help="results directories (from dualpath run)")
    r.add_argument("-o", "--output", help="report directory (default: the first results directory)")
    r.set_defaults(func=cmd_report)


def write_report(paths, out_dir) -> dict:
    from harness.report import build_report
    written = build_report(paths, out_dir)
    print(f"report: {Path(out_dir) / 'report.html'} ({len(written) - 2} figures)", file=sys.stderr)
    return written


def cmd_report(args) -> int:
    write_report(args.results, args.output or args.results[0])
    return 0
