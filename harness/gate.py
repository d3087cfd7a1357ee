"""The regression gate: compare a candidate run against a baseline, metric by metric, and say what regressed.

Inputs (baseline and candidate alike): a results directory, a summary file (a `summary.json`, under any
name), or a directory of several runs (a sweep or a suite), compared point by point: the points are the
rows of its `index.parquet` (columns `point` and `run_dir`, relative to the index) when it has one, else
every directory under it holding a `summary.json`, named by their relative path. Everything is read
through `harness.results.load_summary` (the summaries are all the gate compares: the tables are not read).

Comparable means: the same results schema, scenario `name`, `systems` and `trace`. Differences in any
other scenario key (`sim`, `hardware`, `model`, `cluster`, `arrival`, ...) and in code version are
listed, never refused. Wall-clock and metadata (`wall_s`, requests per wall second, `meta`) are never
compared.

How a metric is judged (`Rule`: metric, direction, tolerance):
- simulator results on both sides (deterministic): exactly: worse than the baseline by more than 1e-9
  relative fails, whatever the tolerance (the row's rule says `exact`); a rule given with `--rule`
  replaces this by its tolerance;
- anything else (http, live: noisy): a bootstrap confidence interval of candidate/baseline
  (`harness.bootstrap`: requests within repeats for latency statistics, repeats for per-run numbers),
  failing only when the whole interval is past the tolerance; with one repeat a side the verdict is
  marked weak (the interval holds no run-to-run noise);
- `failed_requests` (and capacity, which is one search per system): their value per repeat, compared
  with the tolerance.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness import bootstrap, metrics
from harness.results import load_summary
from traces.errors import InputError

EXACT_RELATIVE = 1e-9
DIRECTIONS = ("lower", "higher")
NEVER_COMPARED = ("wall_s", "sim_requests_per_wall_s", "meta", "duration_wall_s")
DETERMINISTIC_BACKENDS = ("sim",)
COMPARABLE_KEYS = ("name", "systems", "trace")
IGNORED_KEYS = ("description",)  # scenario keys that are words, not settings
SEED = 20260221  # the gate's own bootstrap seed: the same inputs give the same verdict


@dataclass(frozen=True)
class Rule:
    metric: str          # a path in a system's summary (`latency.ttft_s.p99`), or `failed_requests`, `capacity_aps`
    direction: str       # lower | higher is better
    tolerance: float     # relative change allowed in the worse direction
    given: bool = False  # from --rule (on simulator results: the tolerance instead of exact)

    def describe(self) -> str:
        return f"{self.direction} {_percent(self.tolerance)}"


DEFAULT_RULES = (
    Rule("makespan_jct_s", "lower", 0.05),
    Rule("throughput.output_tokens_per_s", "higher", 0.05),
    Rule("latency.ttft_s.mean", "lower", 0.05),
    Rule("latency.ttft_s.p99", "lower", 0.10),
    Rule("latency.tpot_s.mean", "lower", 0.05),
    Rule("latency.tpot_s.p99", "lower", 0.10),
    Rule("capacity_aps", "higher", 0.05),
    Rule("snic_balance", "lower", 0.05),
    Rule("hit_rate_achieved", "higher", 0.01),
    Rule("failed_requests", "lower", 0.0),
)
COUNTED = ("failed_requests", "capacity_aps")  # compared per repeat, never bootstrapped


def parse_rule(text: str) -> Rule:
    """`METRIC:DIRECTION:TOLERANCE`, the tolerance a fraction (0.05) or a percentage (5%)."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise InputError(f"{text!r} is not METRIC:DIRECTION:TOLERANCE (e.g. latency.ttft_s.p99:lower:10%)",
                         field="--rule")
    metric, direction, tol = parts
    if metric.split(".")[0] in NEVER_COMPARED:
        raise InputError(f"{metric} is wall-clock or metadata and never compared", field="--rule")
    if direction not in DIRECTIONS:
        raise InputError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}", field="--rule")
    try:
        value = float(tol[:-1]) / 100 if tol.endswith("%") else float(tol)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"tolerance {tol!r} is not a number >= 0 (0.05 or 5%)", field="--rule")
    return Rule(metric, direction, value, given=True)


def rules_with(overrides: list[Rule]) -> list[Rule]:
    """The default rules, each replaced by a given rule for the same metric; new metrics appended."""
    given = {r.metric: r for r in overrides}
    out = [given.pop(r.metric, r) for r in DEFAULT_RULES]
    return out + list(given.values())


# ----- reading the two sides -----------------------------------------------------------------------
def load_points(path: str) -> dict[str, dict]:
    """{point name: summary} of a results directory ('' is its only point), a summary file, or a
    directory of runs (see the module doc)."""
    p = Path(path)
    if p.is_file():
        return {"": _checked(load_summary(p), p)}
    if not p.is_dir():
        raise InputError("no such results directory or summary file", path=path)
    if (p / "summary.json").exists():
        return {"": _checked(load_summary(p / "summary.json"), p)}
    index = p / "index.parquet"
    if index.exists():
        import pandas as pd
        try:
            rows = pd.read_parquet(index, columns=["point", "run_dir"])
        except Exception as exc:  # noqa: BLE001 (pyarrow raises several kinds)
            raise InputError(f"not an index of points with columns point, run_dir ({exc})".splitlines()[0],
                             path=str(index)) from None
        dirs = {str(point): p / str(d) for point, d in zip(rows["point"], rows["run_dir"])}
    else:
        dirs = {str(s.parent.relative_to(p)): s.parent for s in sorted(p.rglob("summary.json"))}
    if not dirs:
        raise InputError("not a results directory (no summary.json), summary file or directory of runs", path=path)
    return {name: _checked(load_summary(d / "summary.json") if (d / "summary.json").exists() else None, d)
            for name, d in dirs.items()}


def _checked(summary: dict | None, where: Path) -> dict:
    if summary is None:
        raise InputError("no summary.json (a run killed before writing it cannot be gated)", path=str(where))
    if not isinstance(summary.get("systems", summary.get("capacity")), dict) or "meta" not in summary:
        raise InputError("not a dualpath summary (no `systems` or `capacity`, or no `meta`)", path=str(where))
    return summary


def scenario_of(summary: dict) -> dict:
    return (summary.get("meta") or {}).get("scenario") or {}


def system_entries(summary: dict) -> dict[str, list[dict]]:
    """{system: [the summary of each repeat]}; a capacity search is one repeat holding `capacity_aps`."""
    if "systems" in summary:
        return {name: list(s.get("repeats") or [s]) for name, s in summary["systems"].items()}
    return {name: [{"capacity_aps": c.get("capacity_aps")}] for name, c in summary["capacity"].items()}


def kind_of(summary: dict) -> str:
    return "run" if "systems" in summary else "capacity"


# ----- comparability -------------------------------------------------------------------------------
def not_comparable(base: dict, cand: dict) -> str | None:
    """Why two summaries cannot be compared (one line), or None."""
    sb, sc = scenario_of(base), scenario_of(cand)
    vb, vc = (base.get("meta") or {}).get("schema", 1), (cand.get("meta") or {}).get("schema", 1)
    if vb != vc:
        return f"results schema {vb} vs {vc}"
    if kind_of(base) != kind_of(cand):
        return f"a {kind_of(base)} vs a {kind_of(cand)}"
    if sb.get("name") != sc.get("name"):
        return f"scenario name {sb.get('name')!r} vs {sc.get('name')!r}"
    if sorted(sb.get("systems") or []) != sorted(sc.get("systems") or []):
        return f"systems {sb.get('systems')} vs {sc.get('systems')}"
    if sb.get("trace") != sc.get("trace"):
        return f"trace {_short(sb.get('trace'))} vs {_short(sc.get('trace'))}"
    return None


def differences(base: dict, cand: dict) -> list[str]:
    """What differs between two comparable runs, besides the candidate itself: settings and code."""
    sb, sc = scenario_of(base), scenario_of(cand)
    out = []
    for key in sorted(set(sb) | set(sc)):
        if key in COMPARABLE_KEYS or key in IGNORED_KEYS:
            continue
        for path, b, c in _diff(sb.get(key), sc.get(key), key):
            out.append(f"{path}: {_short(b)} -> {_short(c)}")
    mb, mc = base.get("meta") or {}, cand.get("meta") or {}
    for label, b, c in (("code version", (mb.get("versions") or {}).get("dualpath-bench"),
                         (mc.get("versions") or {}).get("dualpath-bench")),
                        ("git commit", _commit(mb), _commit(mc))):
        if b != c:
            out.append(f"{label}: {_short(b)} -> {_short(c)}")
    eb, ec = system_entries(base), system_entries(cand)
    rb = sorted({len(v) for v in eb.values()})
    rc = sorted({len(v) for v in ec.values()})
    if rb != rc:
        out.append(f"repeats: {'/'.join(map(str, rb))} -> {'/'.join(map(str, rc))}")
    return out


def _diff(b, c, path: str):
    if isinstance(b, dict) or isinstance(c, dict):
        b, c = (b if isinstance(b, dict) else {}), (c if isinstance(c, dict) else {})
        for k in sorted(set(b) | set(c), key=str):
            yield from _diff(b.get(k), c.get(k), f"{path}.{k}")
    elif b != c:
        yield path, b, c


def _commit(meta: dict) -> str | None:
    git = meta.get("git") or {}
    if not git.get("commit"):
        return None
    return git["commit"][:12] + ("+dirty" if git.get("dirty") else "")


def _short(value, limit: int = 60) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ----- comparing ---------------------------------------------------------------------------------
@dataclass
class Row:
    point: str
    system: str
    metric: str
    baseline: float | None
    candidate: float | None
    change: float | None        # candidate/baseline - 1
    rule: str                   # "exact" or "lower 5%"
    interval: tuple[float, float] | None  # of candidate/baseline, for noisy results
    verdict: str                # ok | improved | REGRESSED | missing | new
    weak: bool = False

    @property
    def failed(self) -> bool:
        return self.verdict in ("REGRESSED", "missing")


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)        # differences and run problems, above the table
    failures: list[str] = field(default_factory=list)     # run problems that fail the gate by themselves

    @property
    def regressed(self) -> bool:
        return bool(self.failures) or any(r.failed for r in self.rows)


def gate(baseline: str, candidate: str, rules: list[Rule]) -> Outcome:
    """Compare every point, system and rule; raises InputError when the two cannot be compared."""
    base_points, cand_points = load_points(baseline), load_points(candidate)
    if set(base_points) != set(cand_points):
        only_b = sorted(set(base_points) - set(cand_points))
        only_c = sorted(set(cand_points) - set(base_points))
        raise InputError("not comparable with the baseline: points differ (only in baseline: "
                         f"{', '.join(only_b) or '-'}; only in candidate: {', '.join(only_c) or '-'})",
                         path=candidate)
    outcome = Outcome()
    for point in sorted(base_points):
        b, c = base_points[point], cand_points[point]
        why = not_comparable(b, c)
        if why:
            at = f" (point {point})" if point else ""
            raise InputError(f"not comparable with the baseline{at}: {why}", path=candidate)
        prefix = f"{point}: " if point else ""
        outcome.notes += [prefix + d for d in differences(b, c)]
        if b.get("status", "ok") != "ok":
            raise InputError(f"the baseline run did not finish (status {b.get('status')}){' at ' + point if point else ''}",
                             path=baseline)
        if c.get("status", "ok") != "ok":
            outcome.failures.append(f"{prefix}the candidate run did not finish (status {c.get('status')})")
        outcome.rows += compare_point(point, b, c, rules)
    for rule in rules:
        if rule.given and not any(r.metric == rule.metric for r in outcome.rows):
            raise InputError(f"metric {rule.metric!r} is in no system of either summary", field="--rule")
    return outcome


def compare_point(point: str, base: dict, cand: dict, rules: list[Rule]) -> list[Row]:
    exact = all(scenario_of(s).get("backend", "sim") in DETERMINISTIC_BACKENDS for s in (base, cand))
    eb, ec = system_entries(base), system_entries(cand)
    rows = []
    for system in eb:
        for rule in rules:
            bv = [metric_value(r, rule.metric) for r in eb[system]]
            cv = [metric_value(r, rule.metric) for r in ec.get(system, [])] or [None]
            if all(v is None for v in bv) and all(v is None for v in cv):
                continue
            rows.append(compare_metric(point, system, rule, eb[system], ec.get(system, []), bv, cv, exact))
    return rows


def metric_value(entry: dict, metric: str) -> float | None:
    if metric == "failed_requests":
        req = (entry.get("counts") or {}).get("requests")
        return None if not req else float(req["total"] - req["ok"])
    node = entry
    for part in metric.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        return None
    return float(node)


def compare_metric(point, system, rule: Rule, base_runs, cand_runs, bv, cv, exact: bool) -> Row:
    b_point, c_point = _pooled(base_runs, bv, rule.metric), _pooled(cand_runs, cv, rule.metric)
    row = Row(point, system, rule.metric, b_point, c_point, _change(b_point, c_point), rule.describe(), None, "ok")
    if b_point is None:
        row.verdict = "new"
        return row
    if c_point is None:
        row.verdict = "missing"
        return row
    worse = (lambda ratio, tol: ratio > 1 + tol) if rule.direction == "lower" else (lambda ratio, tol: ratio < 1 - tol)
    better = (lambda ratio, tol: ratio < 1 - tol) if rule.direction == "lower" else (lambda ratio, tol: ratio > 1 + tol)
    ratio = 1 + row.change
    if exact and not rule.given:
        row.rule = "exact"
        row.verdict = "REGRESSED" if worse(ratio, EXACT_RELATIVE) else "improved" if better(ratio, EXACT_RELATIVE) else "ok"
        return row
    if exact or rule.metric in COUNTED:
        row.weak = not exact and (len(base_runs) < 2 or len(cand_runs) < 2)
        row.verdict = "REGRESSED" if worse(ratio, rule.tolerance) else "improved" if better(ratio, rule.tolerance) else "ok"
        return row
    seed = (SEED + zlib.crc32(f"{point}/{system}/{rule.metric}".encode())) % 2**32
    lo, hi = _interval(base_runs, cand_runs, bv, cv, rule.metric, seed)
    row.interval = (lo, hi)
    row.weak = len(base_runs) < 2 or len(cand_runs) < 2
    # the whole interval past the tolerance: its better end is still worse than allowed
    row.verdict = ("REGRESSED" if worse(lo if rule.direction == "lower" else hi, rule.tolerance) else
                   "improved" if better(hi if rule.direction == "lower" else lo, rule.tolerance) else "ok")
    return row


def _latency_metric(metric: str) -> tuple[str, str] | None:
    parts = metric.split(".")
    if len(parts) == 3 and parts[0] == "latency" and (parts[2] == "mean" or parts[2].startswith("p")):
        return parts[1], parts[2]
    return None


def _pooled(runs: list[dict], values: list, metric: str) -> float | None:
    """The value over every repeat: the pooled histogram's statistic for latency, else the mean."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    latency = _latency_metric(metric)
    if latency and len(runs) > 1:
        name, stat = latency
        pooled = metrics.combined_stats(runs, name)
        key = stat if stat in pooled else None
        if key and pooled[key] is not None:
            return float(pooled[key])
    if metric == "failed_requests":
        return float(sum(present)) / len(present)
    return float(np.mean(present))


def _interval(base_runs, cand_runs, bv, cv, metric: str, seed: int) -> tuple[float, float]:
    latency = _latency_metric(metric)
    if latency:
        name, stat = latency
        try:
            bootstrap.statistic(stat)
        except ValueError:
            latency = None
        else:
            hists = [[metrics.histogram_buckets(((r.get("latency") or {}).get(name) or {}).get("hdr"))
                      for r in runs] for runs in (base_runs, cand_runs)]
            if all(c.sum() for h in hists for _, c in h):
                return bootstrap.ratio_interval_requests(hists[0], hists[1], stat, seed=seed)
    b = [v for v in bv if v is not None]
    c = [v for v in cv if v is not None]
    return bootstrap.ratio_interval_runs(b, c, seed=seed)


def _change(b: float | None, c: float | None) -> float | None:
    if b is None or c is None:
        return None
    if b == 0:
        return 0.0 if c == 0 else math.copysign(math.inf, c)
    return c / b - 1


def _percent(x: float) -> str:
    return f"{100 * x:g}%"
