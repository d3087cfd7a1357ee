"""`dualpath report`: report.md, a standalone report.html (figures embedded) and figures/*.png from one or
more results directories, read only through harness.results.load_results. The report opens with each
system's verdict (harness/attribution.py) and what each rung of the ablation ladder buys."""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness import attribution
from harness.report.capacity import capacity_lines
from harness.results import load_results
from traces.errors import InputError


@dataclass
class Run:
    path: Path
    summary: dict
    requests: pd.DataFrame | None
    agents: pd.DataFrame | None
    links: pd.DataFrame | None
    engines: pd.DataFrame | None
    attribution: dict
    labels: dict = field(default_factory=dict)  # system -> label in figures
    all_requests: pd.DataFrame | None = None     # every repeat's requests (latency CDFs pool them)
    capacity: dict | None = None                 # a --capacity search: system -> {capacity_aps, probes}
    capacity_labels: dict = field(default_factory=dict)

    @property
    def window_s(self) -> float:
        return float((self.summary["meta"]["scenario"].get("telemetry") or {}).get("window_s", 1.0))


def load_run(path: str | os.PathLike) -> Run:
    p = Path(path)
    if not (p / "summary.json").is_file():
        raise InputError("not a results directory (no summary.json)", path=str(p))
    res = load_results(p)
    summary = res.get("summary") or {}
    if "capacity" in summary and "systems" not in summary:  # a --capacity search: its probes, no tables
        return Run(p, summary, None, None, None, None, {}, capacity=summary["capacity"] or {})
    if "systems" not in summary:
        raise InputError("summary.json has no `systems` and no `capacity`: nothing to report",
                         path=str(p / "summary.json"))
    attr = {s: {"utilisation": v.get("utilisation") or {}, "utilisation_whole_run": v.get("utilisation_whole_run") or {},
                "bottleneck": attribution.bottleneck_of(v)}
            for s, v in summary["systems"].items() if v.get("bottleneck")}
    sim = (summary.get("meta", {}).get("scenario") or {}).get("backend", "sim") == "sim"
    if len(attr) < len(summary["systems"]) or (sim and any("de_hbm" not in a["utilisation"] for a in attr.values())):
        attr = attribution.attribute_results(res)  # results written before (capacity) attribution existed
    tables = {k: first_repeat(res.get(k)) for k in ("requests", "agents", "links", "engines")}
    run = Run(p, summary, tables["requests"], tables["agents"], tables["links"], tables["engines"], attr)
    run.all_requests = res.get("requests")
    return run


def first_repeat(df: pd.DataFrame | None) -> pd.DataFrame | None:
    """A repeated run's (--repeats) tables share one clock: figures over time show its first repeat."""
    if df is None or "repeat" not in df or not len(df):
        return df
    return df[df["repeat"] == df["repeat"].min()]


def load_runs(paths) -> list[Run]:
    runs = [load_run(p) for p in paths]
    many = len(runs) > 1
    for run in runs:
        names = {s: (f"{run.path.name}/{s}" if many else s) for s in (run.capacity or run.summary["systems"])}
        if run.capacity is None:
            run.labels = names
        else:
            run.capacity_labels = names
    return runs


def _fmt(v, unit="", digits=3):
    if v is None:
        return "-"
    if abs(v) >= 10 ** digits:
        return f"{v:,.0f}{unit}"
    return f"{v:.{digits}g}{unit}"


def markdown(runs: list[Run], figures: dict[str, Path], out_dir: Path) -> str:
    lines = ["# DualPath bench report", "", "## Verdicts", ""]
    for run in runs:
        for s, label in run.labels.items():
            b = run.attribution[s].get("bottleneck") or {}
            lines.append(f"- **{label}**: {b.get('verdict', 'no attribution')}")
        merged = {s: {**run.summary["systems"][s], **run.attribution[s]} for s in run.labels}
        for line in attribution.ladder_lines(merged):
            lines.append(f"- {line}")
        lines.append(f"- {why(merged)}" if why(merged) else "")
        lines += capacity_lines(run)
    if not any(run.labels for run in runs):
        lines += [""]
    else:
        lines += systems_tables(runs)
    from harness.report.paper import run_section
    lines += [""] + run_section(runs)
    lines += ["", "## Figures", ""]
    for name, path in figures.items():
        lines += [f"![{name}]({path.relative_to(out_dir).as_posix()})", ""]
    lines += ["## Runs", ""] + [f"- `{run.path.name}`: scenario `{run.summary['meta']['scenario'].get('name')}`, "
                                 f"status {run.summary.get('status')}" for run in runs]
    return "\n".join(lines) + "\n"


def systems_tables(runs: list[Run]) -> list[str]:
    lines = ["", "## Systems", "",
              "| system | requests | JCT (s) | TTFT p50 (s) | TTFT p99 (s) | TPOT p50 (s) | prompt tokens/s | bottleneck |",
              "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for s, label in run.labels.items():
            m = run.summary["systems"][s]
            lat = m.get("latency", {})
            lines.append(f"| {label} | {m['counts']['requests']['ok']} | {_fmt(m.get('makespan_jct_s'), digits=4)} | "
                         f"{_fmt(lat.get('ttft_s', {}).get('p50'))} | {_fmt(lat.get('ttft_s', {}).get('p99'))} | "
                         f"{_fmt(lat.get('tpot_s', {}).get('p50'))} | "
                         f"{_fmt((m.get('throughput') or {}).get('prompt_tokens_per_s'), digits=4)} | "
                         f"{(run.attribution[s].get('bottleneck') or {}).get('resource') or '-'} |")
    keys = attribution.RATE_RESOURCES + attribution.CAPACITY_RESOURCES
    waits = ("queue_s", "alloc_s", "dram_buffer", "pe_hbm")
    lines += ["", "## Utilisation in the busy phase (%)", "",
              "Rate resources: busy share; capacity resources (`pe_hbm`, `de_hbm`, `dram_buffer`): mean occupancy; "
              "then the share of the mean TTFT requests waited on the queues, on any buffer (`alloc_s`), and on "
              "each capacity resource (see the README on how occupancy is rebuilt from the requests table).", "",
              "| system | " + " | ".join(keys) + " | " + " | ".join(f"wait {k}" for k in waits) + " |",
              "|---|" + "---|" * (len(keys) + len(waits))]
    for run in runs:
        for s, label in run.labels.items():
            u = run.attribution[s].get("utilisation") or {}
            cells = [f"{100 * u[k]:.0f}" if k in u else "-" for k in keys]
            cells += [f"{100 * u[f'wait_{k}']:.0f}" if f"wait_{k}" in u else "-" for k in waits]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        served = [s for s in run.labels if "server_queue" in (run.attribution[s].get("utilisation") or {})]
        for s in served:
            u = run.attribution[s]["utilisation"]
            lines.append(f"\n{run.labels[s]} (a real server): queued requests in {100 * u['server_queue']:.0f} % "
                         f"of scrapes, {u['server_running']:g} running on average.")
    return lines


def why(merged: dict) -> str | None:
    """Where the ladder's gain comes from, in words: the I/O path or the scheduler and compute."""
    if "basic" not in merged or "dualpath" not in merged:
        return None
    b, d = merged["basic"], merged["dualpath"]
    jb, jd = b.get("makespan_jct_s"), d.get("makespan_jct_s")
    if not jb or not jd:
        return None
    ub, ud = b["utilisation"], d["utilisation"]
    if b["bottleneck"]["resource"] == "snic_pe":
        src = ("the second read path: basic is limited by its prefill-side storage NICs "
               f"({100 * ub['snic_pe']:.0f} % busy) and dualpath spreads reads over both sides "
               f"(snic_pe {100 * ud['snic_pe']:.0f} %, snic_de {100 * ud['snic_de']:.0f} %)")
    else:
        src = (f"the scheduler and chunked prefill, not the second read path: basic's storage NICs are only "
               f"{100 * ub['snic_pe']:.0f} % busy and it is limited by {b['bottleneck']['resource']}")
        ab, ad = b.get("attention_balance"), d.get("attention_balance")
        if ab and ad:
            src += (f"; dualpath balances prefill attention across engines (max/avg {ab:.2f} -> {ad:.2f}), "
                    "so less engine time is spent waiting for the slowest engine of a group")
    steps = [(a, c) for a, c in zip([x for x in attribution.LADDER if x in merged],
                                    [x for x in attribution.LADDER if x in merged][1:])
             if merged[a].get("makespan_jct_s") and merged[c].get("makespan_jct_s")]
    if len(steps) > 1 and "oracle" not in steps[-1]:
        a, c = max(steps, key=lambda st: merged[st[0]]["makespan_jct_s"] / merged[st[1]]["makespan_jct_s"])
        src += (f". Most of it comes at {c} over {a} ({merged[a]['makespan_jct_s'] / merged[c]['makespan_jct_s']:.2f}x), "
                f"which adds {ADDS.get(c, c)}")
    waited = [f"{k} ({100 * ub[f'wait_{k}']:.0f} % of basic's TTFT)" for k in ("pe_hbm", "dram_buffer")
              if ub.get(f"wait_{k}", 0) >= attribution.WAIT_SHARE]
    if waited:
        src += f"; basic's requests also waited on {' and '.join(waited)}"
    return f"dualpath is {jb / jd:.2f}x basic on JCT; the gain comes from {src}."


ADDS = {"layerwise": "layer-wise prefill (KV loaded layer by layer, no whole prompt in HBM)",
        "dualpath-rr": "the decode-side read path (reads alternate between the sides)",
        "dualpath": "the paper's scheduler (each read on the less loaded side, prefill balanced across GPUs) "
                    "with the same two read paths",
        "oracle": "free I/O"}


def html_page(md_text: str, figures: dict[str, Path]) -> str:
    """A standalone page: the markdown's text as simple HTML, every figure embedded as a data URI."""
    body = []
    for line in md_text.splitlines():
        if line.startswith("![") and "](" in line:
            name = line[2:line.index("]")]
            data = base64.b64encode(figures[name].read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></figure>')
        elif line.startswith("|---"):
            continue
        elif line.startswith("| "):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if body and not body[-1].startswith("<tr>") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            text = html.escape(line[2:]).replace("**", "")
            body.append(f"<li>{text}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    out, in_table = [], False
    for item in body:  # wrap runs of rows in tables
        if item.startswith("<tr>") and not in_table:
            out.append("<table>")
            in_table = True
        elif not item.startswith("<tr>") and in_table:
            out.append("</table>")
            in_table = False
        out.append(item)
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>DualPath bench report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def build_report(paths, out_dir) -> dict[str, Path]:
    """Write report.md, report.html and figures/*.png into out_dir; returns the paths written."""
    from harness.report.figures import draw_all

    runs = load_runs(paths)
    out_dir = Path(out_dir)
    figures = draw_all(runs, out_dir / "figures")
    md_text = markdown(runs, figures, out_dir)
    (out_dir / "report.md").write_text(md_text, encoding="utf-8")
    (out_dir / "report.html").write_text(html_page(md_text, figures), encoding="utf-8")
    return {"report.md": out_dir / "report.md", "report.html": out_dir / "report.html", **figures}
