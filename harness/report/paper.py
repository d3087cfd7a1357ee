"""The report's "Ours vs the paper" section: every `expected:` entry of the runs' scenarios against what the
runs measured (harness/expected.py), and the suite's report.md (`dualpath suite`)."""
from __future__ import annotations

from pathlib import Path

from harness.expected import compare
from traces.errors import InputError


def expected_rows(runs: list[tuple[str, Path]]) -> list[dict]:
    """Ours vs expected for (label, results directory) pairs; a run without a summary is skipped."""
    from harness.results import load_summary

    rows = []
    for label, path in runs:
        try:
            summary = load_summary(Path(path) / "summary.json")
        except (InputError, OSError, ValueError):
            continue
        expected = ((summary.get("meta") or {}).get("scenario") or {}).get("expected")
        rows += compare(expected or [], summary, label=label)
    return rows


def _cell(v, digits=4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def section(rows: list[dict]) -> list[str]:
    """Markdown lines of the section (none when no run carries expected values)."""
    if not rows:
        return []
    misses = [r for r in rows if r["verdict"] != "ok"]
    lines = ["## Ours vs the paper", "",
             f"{len(rows) - len(misses)} of {len(rows)} within tolerance; {len(misses)} miss or missing. "
             "The simulator predicts; a miss is a finding, not something to tune (~: read off a figure).", "",
             "| run | figure | system | metric | paper | ours | ratio | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['figure']} | {r['system']} | {r['metric']} | "
                     f"{'~' if r['approx'] else ''}{_cell(r['expected'])} | {_cell(r['ours'])} | "
                     f"{'-' if r['ratio'] is None else format(r['ratio'], '.2f')} | "
                     f"{r['verdict']} (±{100 * r['tolerance']:.0f}%) |")
    return lines + [""]


def run_section(runs) -> list[str]:
    """The section for `dualpath report` (harness/report/__init__.py's Run objects)."""
    return section(expected_rows([(run.path.name, run.path) for run in runs]))


def write_suite_report(out: Path, frame, rows: list[dict], overrides=()) -> Path:
    """OUT/report.md of a suite: how the points went, then ours vs the paper."""
    lines = ["# DualPath bench: the paper suite", ""]
    if overrides:
        lines += ["Run with " + ", ".join(f"`--set {o}`" for o in overrides) + ": the paper's values are for "
                  "the scenarios as written.", ""]
    if len(frame):
        points = frame.drop_duplicates("path")
        counts = points["status"].value_counts().to_dict()
        lines += [f"{len(points)} points in {frame['scenario'].nunique()} scenarios: "
                  + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                  + f". Index: `{out.name}/index.parquet`.", ""]
        failed = points[points["status"] != "ok"]
        lines += [f"- `{r['scenario']}/{r['point']}`: {r['status']} {r['error'] or ''}".rstrip()
                  for r in failed.to_dict("records")]
        lines += [""] if len(failed) else []
    lines += section(rows) or ["No scenario of the suite carries expected values.", ""]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
