"""`expected:` blocks: the paper's values a scenario reproduces, checked like every other key, and ours
against them (ratio, ok/miss).

An entry is `{figure, system, metric, value, tolerance, point, approx, note}`: `metric` is a dotted path
into a system's summary (`makespan_jct_s`, `latency.ttft_s.p50`, `ttft_breakdown_share.read_s`) or
`capacity_aps` (the largest agent rate within the SLO, from `dualpath run --capacity`); `point` selects
sweep points (its keys are keys of the scenario's `sweep:`/`zip:`); `approx: true` marks a value read off
a figure. An entry is `ok` when ours is within `tolerance` (a share, default 0.15) of the value.

The kinds here are used by harness/scenario.py's SCHEMA (duck-typed: `what` and `check(value, key, ctx)`),
so a wrong metric is one line naming the file, line and key.
"""
from __future__ import annotations

import math

from traces.errors import did_you_mean

DEFAULT_TOLERANCE = 0.15
CAPACITY_METRIC = "capacity_aps"
_STATS = ("mean", "p50", "p90", "p99", "p99.9", "max", "count")
_LATENCIES = ("ttft_s", "ttst_s", "tpot_s", "itl_s", "e2e_s", "jct_s", "ttft_from_sent_s")
_PARTS = ("queue_s", "alloc_s", "read_s", "prefill_s", "kv_transfer_s")
_RESOURCES = ("pe_compute", "de_compute", "snic_pe", "snic_de", "cnic", "dram")
# Every numeric path of a system's summary (harness/metrics.py summarize_system, plus attribution's).
METRICS = sorted({
    "makespan_jct_s", "duration_s", "snic_balance", "snic_balance_p90", "attention_balance",
    "attention_balance_early", "hit_rate_achieved", "hit_rate_expected", "busy_phase_s", CAPACITY_METRIC,
    "counts.agents", "counts.agents_done", "counts.rounds", "counts.requests.ok", "counts.requests.total",
    *(f"throughput.{k}" for k in ("requests_per_s", "prompt_tokens_per_s", "output_tokens_per_s", "agents_per_s")),
    *(f"latency.{lat}.{s}" for lat in _LATENCIES for s in _STATS),
    *(f"ttft_breakdown_share.{p}" for p in _PARTS if p != "kv_transfer_s"),
    *(f"ttft_breakdown_mean_s.{p}" for p in _PARTS),
    *(f"utilisation.{r}" for r in _RESOURCES), *(f"utilisation_whole_run.{r}" for r in _RESOURCES),
})
FIELDS = ("figure", "system", "metric", "value", "tolerance", "point", "approx", "note")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ExpectedList:
    """The `expected:` key: a list of entries (see the module docstring)."""

    what = "a list of {figure, system, metric, value, ...}"

    def check(self, value, key, ctx):
        if not isinstance(value, list) or not value:
            ctx.fail(key, "must be a non-empty list of {figure, system, metric, value, tolerance, point}")
        sweep_keys = getattr(ctx, "point_keys", {})
        out = []
        for i, entry in enumerate(value):
            k = f"{key}[{i}]"
            if not isinstance(entry, dict):
                ctx.fail(k, "must be a mapping {figure, system, metric, value, ...}")
            for name in entry:
                if name not in FIELDS:
                    ctx.fail(f"{k}.{name}",
                             f"unknown key{did_you_mean(str(name), FIELDS)} (allowed: {', '.join(FIELDS)})")
            for name in ("figure", "system", "metric", "value"):
                if entry.get(name) is None:
                    ctx.fail(f"{k}.{name}", "required")
            for name in ("figure", "system", "metric", "note"):
                if name in entry and not isinstance(entry[name], str):
                    ctx.fail(f"{k}.{name}", f"must be a string, got {entry[name]!r}")
            if entry["metric"] not in METRICS:
                ctx.fail(f"{k}.metric", f"unknown metric {entry['metric']!r}{did_you_mean(entry['metric'], METRICS)} "
                         "(a dotted path into a system's summary: makespan_jct_s, latency.ttft_s.p50, "
                         "throughput.prompt_tokens_per_s, snic_balance, capacity_aps, ...)")
            if not _number(entry["value"]) or entry["value"] <= 0:
                from harness.scenario.kinds import _number_text_hint
                hint = _number_text_hint(entry["value"])
                ctx.fail(f"{k}.value", f"must be a number > 0, got {entry['value']!r}{hint}")
            tol = entry.get("tolerance", DEFAULT_TOLERANCE)
            if not _number(tol) or not 0 < tol < 10:
                ctx.fail(f"{k}.tolerance", f"must be a share in (0, 10), e.g. 0.1 for 10 %, got {tol!r}")
            if not isinstance(entry.get("approx", False), bool):
                ctx.fail(f"{k}.approx", f"must be true or false, got {entry['approx']!r}")
            point = entry.get("point") or {}
            if not isinstance(point, dict):
                ctx.fail(f"{k}.point", "must be a mapping of sweep keys to values")
            for pk, pv in point.items():
                if pk not in sweep_keys:
                    ctx.fail(f"{k}.point.{pk}", "not a key of the scenario's sweep: or zip:"
                             + (f" (keys: {', '.join(sweep_keys)})" if sweep_keys else " (it has none)"))
                if pv not in sweep_keys[pk]:
                    ctx.fail(f"{k}.point.{pk}", f"{pv!r} is not one of the sweep's values "
                             f"({', '.join(map(str, sweep_keys[pk]))})")
            out.append({**{n: entry[n] for n in FIELDS if entry.get(n) is not None},
                        "tolerance": float(tol), "approx": bool(entry.get("approx", False))})
        return out


EXPECTED_KIND = ExpectedList()


# ----- ours against expected --------------------------------------------------------------------------
def dig(summary: dict, path: str):
    """The value at a dotted path (keys may hold dots themselves: `latency.ttft_s.p99.9`), else None."""
    node, rest = summary, path
    while rest:
        if not isinstance(node, dict):
            return None
        for key in sorted((k for k in node if rest == k or rest.startswith(k + ".")), key=len, reverse=True):
            node, rest = node[key], rest[len(key) + 1:]
            break
        else:
            return None
    return node if _number(node) else None


def ours(summary: dict, system: str, metric: str):
    if metric == CAPACITY_METRIC:
        return ((summary.get("capacity") or {}).get(system) or {}).get(CAPACITY_METRIC)
    return dig((summary.get("systems") or {}).get(system) or {}, metric)


def matches(point: dict, keys: dict) -> bool:
    return all(k in keys and keys[k] == v for k, v in point.items())


def compare(expected: list[dict], summary: dict, keys: dict | None = None, label: str = "") -> list[dict]:
    """One row per entry that applies to this run (its `point` matches `keys`): ours, ratio, ok/miss."""
    rows = []
    for e in expected or []:
        if not matches(e.get("point") or {}, keys or {}):
            continue
        got = ours(summary, e["system"], e["metric"])
        ratio = got / e["value"] if got is not None else None
        verdict = "-" if ratio is None else ("ok" if abs(ratio - 1) <= e["tolerance"] else "miss")
        rows.append({"run": label, "figure": e["figure"], "system": e["system"], "metric": e["metric"],
                     "expected": e["value"], "approx": e["approx"], "ours": got, "ratio": ratio,
                     "tolerance": e["tolerance"], "verdict": verdict, "note": e.get("note", "")})
    return rows


def _g(v, digits=4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def format_rows(rows: list[dict], changed: bool = False) -> str:
    """The ours-vs-expected table as text (after `dualpath run`'s table, and `dualpath suite`'s);
    `changed`: --set changed the scenario, so the paper's values may not apply."""
    if not rows:
        return ""
    runs = any(r["run"] for r in rows)
    head = (["run"] if runs else []) + ["figure", "system", "metric", "expected", "ours", "ratio", "verdict"]
    body = [([r["run"]] if runs else []) + [r["figure"], r["system"], r["metric"],
                                            ("~" if r["approx"] else "") + _g(r["expected"]), _g(r["ours"]),
                                            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                                            r["verdict"] if r["verdict"] == "-" else
                                            f"{r['verdict']} (±{100 * r['tolerance']:.0f}%)"]
            for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]
    misses = sum(r["verdict"] != "ok" for r in rows)
    lines.append(f"ours vs expected: {len(rows) - misses} ok, {misses} miss or missing, of {len(rows)} "
                 "(~ read off a figure)")
    if changed:
        lines.append("note: --set changed the scenario; the expected values are for the scenario as written")
    return "\n".join(lines)
