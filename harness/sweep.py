"""Sweeps: `sweep: {key.path: [values]}` (the cross product) and `zip: {key.path: [values]}` (paired
lists) in a scenario; every point is the scenario with those keys set (the `--set` machinery of
harness/scenario.py), named by them (`agents=1024_preset=paper-64k`).

The kinds here are used by harness/scenario.py's SCHEMA (duck-typed: `what` and `check(value, key, ctx)`):
a key path that is not a scenario key, a value its key does not take, zip lists of unequal length, a key
in both, are one line naming the file, line and key. `points()` expands a loaded scenario; harness/pool.py
runs the points.
"""
from __future__ import annotations

import itertools
import json
import math
import re
from typing import Sequence

from traces.errors import InputError

POINT_KEYS_RESERVED = ("name", "sweep", "zip", "expected")
MAX_POINTS = 10_000


class SweepKeys:
    """`sweep:` or `zip:`: a mapping of dotted scenario key paths to non-empty lists of values."""

    what = "a mapping of key.path to a list of values"

    def __init__(self, paired: bool):
        self.paired = paired

    def check(self, value, key, ctx):
        from harness import scenario as sc
        from harness.scenario.overrides import _kind_at

        if not isinstance(value, dict) or not value:
            ctx.fail(key, "must be a mapping of key.path to a list of values, "
                     "e.g. {trace.synth.agents: [512, 1024]}")
        seen = getattr(ctx, "point_keys", None)
        if seen is None:
            seen = ctx.point_keys = {}
        out = {}
        for path, values in value.items():
            k = f"{key}.{path}"
            if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
                ctx.fail(k, "a key is a dotted scenario key path such as trace.synth.agents")
            if path.split(".")[0] in POINT_KEYS_RESERVED:
                ctx.fail(k, f"{path.split('.')[0]} cannot be swept")
            if path in seen:
                ctx.fail(k, "is swept twice (in both sweep: and zip:)")
            kind = sc.SCHEMA
            for depth, part in enumerate(path.split(".")):
                if depth and not isinstance(kind, (sc.Mapping, sc.FreeMapping)):
                    ctx.fail(k, f"{'.'.join(path.split('.')[:depth])} is {kind.what}, not a mapping")
                try:
                    kind = _kind_at(kind, part, path)
                except InputError as exc:
                    ctx.fail(k, exc.problem)
            if not isinstance(values, list) or not values:
                ctx.fail(k, "must be a non-empty list of values (YAML [a, b])")
            for i, v in enumerate(values):
                if v is None:
                    ctx.fail(f"{k}[{i}]", "null is not a point value")
                kind.check(v, f"{k}[{i}]", ctx)
            if self.paired and out and len(values) != len(next(iter(out.values()))):
                ctx.fail(k, f"zip: lists are paired, so all have one length; this has {len(values)}, "
                         f"{next(iter(out))} has {len(next(iter(out.values())))}")
            out[path] = values
            seen[path] = values
        return out


SWEEP_KIND, ZIP_KIND = SweepKeys(paired=False), SweepKeys(paired=True)


def is_sweep(scenario: dict) -> bool:
    return bool(scenario.get("sweep") or scenario.get("zip"))


def points(scenario: dict) -> list[dict]:
    """Every point's key values, in order: the cross product of `sweep:` times the rows of `zip:`."""
    sweep, zipped = scenario.get("sweep") or {}, scenario.get("zip") or {}
    count = math.prod(len(v) for v in sweep.values()) * (len(next(iter(zipped.values()))) if zipped else 1)
    if count > MAX_POINTS:
        raise InputError(f"{count:,} points (at most {MAX_POINTS:,}); split the sweep",
                         field="sweep" if sweep else "zip")
    crossed = [dict(zip(sweep, combo)) for combo in itertools.product(*sweep.values())] if sweep else [{}]
    rows = [dict(zip(zipped, row)) for row in zip(*zipped.values())] if zipped else [{}]
    return [{**a, **b} for a in crossed for b in rows]


def _text(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "x"


def point_name(keys: dict) -> str:
    """`agents=1024_preset=paper-64k`: each key by its last part (the whole path where two share one)."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    names = [leaf if leaves.count(leaf) == 1 else k.replace(".", "-") for leaf, k in zip(leaves, keys)]
    return "_".join(f"{n}={_text(v)}" for n, v in zip(names, keys.values())) or "default"


def point_overrides(scenario: dict, keys: dict, fixed: dict | None = None) -> list[str]:
    """The `--set` strings that make a point: its keys, no sweep, and the expected entries that apply to it
    (`fixed`: swept keys the user set with --set, which select entries as the point's keys do)."""
    from harness.expected import matches

    chosen = {**(fixed or {}), **keys}
    expected = [{k: v for k, v in e.items() if k != "point"} for e in scenario.get("expected") or []
                if matches(e.get("point") or {}, chosen)]
    return ([f"{k}={json.dumps(v)}" for k, v in keys.items()] + ["sweep=null", "zip=null"]
            + [f"expected={json.dumps(expected) if expected else 'null'}"])


def fixed_by_overrides(scenario: dict, overrides: Sequence[str]) -> dict:
    """Swept keys that `--set` gives one value: they leave the sweep (a zip: key leaves its list alone, the
    others stay paired), so `--set trace.synth.agents=256` on a sweep over agents runs the one value."""
    import yaml

    fixed = {}
    for raw in overrides:
        key, _, text = raw.partition("=")
        key = key.strip()
        for block in ("sweep", "zip"):
            if key in (scenario.get(block) or {}):
                del scenario[block][key]
                fixed[key] = yaml.safe_load(text) if text.strip() else None
    return fixed


def load_point(path: str, point: Sequence[str], keys: dict) -> dict:
    """The point's resolved scenario (`point`: its `--set` strings); a problem one of the point's values
    causes names the sweep key's line."""
    from harness.scenario import SET_SOURCE, _compose, _read_text, load_scenario

    try:
        return load_scenario(path, point)
    except InputError as exc:
        key = next((k for k in keys if (exc.field or "").startswith(k)), None)
        if exc.path != SET_SOURCE or key is None:
            raise
        _, origins = _compose(_read_text(path), path)
        block = next((b for b in ("sweep", "zip") if f"{b}.{key}" in origins), None)
        source = origins[f"{block}.{key}"] if block else (path, None)
        raise InputError(f"at point {point_name(keys)}: {exc.problem}", path=source[0], line=source[1],
                         field=f"{block}.{exc.field}" if block else exc.field) from None


def expand(path: str, overrides: Sequence[str] = ()) -> tuple[dict, list[tuple[str, dict, list[str]]]]:
    """Load a scenario and check every point before anything runs: (scenario, [(name, keys, overrides)])."""
    from harness.scenario import load_scenario

    scenario = load_scenario(path, overrides)
    fixed = fixed_by_overrides(scenario, overrides)
    try:
        every = points(scenario)
    except InputError as exc:
        from harness.scenario import _compose, _read_text
        raise exc.at(path, _compose(_read_text(path), path)[1].get(exc.field, (path, None))[1]) from None
    out = []
    for keys in every:
        point = list(overrides) + point_overrides(scenario, keys, fixed)
        load_point(path, point, keys)
        out.append((point_name(keys), keys, point))
    names = [n for n, _, _ in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise InputError(f"two points are both named {dup!r} (values that differ only in characters a "
                         "directory name cannot hold)", path=path, field="sweep")
    return scenario, out


def needs_capacity(scenario: dict) -> bool:
    """A scenario whose expected values are capacities runs as `dualpath run --capacity`."""
    from harness.expected import CAPACITY_METRIC
    return any(e["metric"] == CAPACITY_METRIC for e in scenario.get("expected") or [])
