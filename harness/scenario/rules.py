"""Rules across keys, and the defaults they fill (the list is in harness/scenario/__init__.py)."""
from __future__ import annotations

from pathlib import Path

from engines.contract import SYSTEMS
from engines.costmodel.profiles import PROFILE_SUBDIRS, find_profile, looks_like_path as _looks_like_path
from traces.errors import InputError
from traces.presets import PRESETS
from traces.synth import check_agents, params_with

from harness.scenario.keys import (ARRIVAL_MODES, DEFAULT_SYSTEMS, RATE_MODES, SCHEMA, SET_SOURCE,
                                   SIM_MIN_POSITIVE_S, sim_bounds)
from harness.scenario.kinds import _Context, _hint, _join, _number_text_hint


def _absolute_if_path(value: str, base: Path, always: bool = False) -> str:
    if not (always or _looks_like_path(value)):
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())



# ----- cross-key rules and defaults ---------------------------------------------------------------
def _base(ctx: _Context, key: str, base_dir: Path) -> Path:
    """Relative paths in the file are relative to it; those given with --set to the working directory."""
    return Path.cwd() if ctx.where(key)[0] == SET_SOURCE else base_dir


def _check_rules(s: dict, ctx: _Context, base_dir: Path, repo_root: Path | None) -> dict:
    backend = s.setdefault("backend", "sim")
    s.setdefault("seed", 1)
    ours = backend in ("sim", "live")

    trace = s["trace"]
    if ("synth" in trace) == ("path" in trace):
        blame = [k for k in ("trace.path", "trace.synth") if ctx.where(k)[0] == SET_SOURCE and k[6:] in trace]
        ctx.fail((blame or ["trace"])[0], "give exactly one of trace.synth or trace.path" + (
            " (with --set, clear the other: --set trace.synth=null)" if "synth" in trace else ""))
    if "synth" in trace:
        for k in ("format", "block_size"):
            if k in trace:
                ctx.fail(f"trace.{k}", f"only with trace.path (synthetic traces: trace.synth.{k})"
                         if k == "block_size" else "only with trace.path")
        synth = trace["synth"]
        synth.setdefault("seed", s["seed"])
        params = {k: v for k, v in synth.items() if k not in ("preset", "agents", "seed")}
        try:
            check_agents(params_with(PRESETS[synth["preset"]], **params).validate(), synth["agents"])
        except InputError as exc:
            ctx.fail(_join("trace.synth", exc.field or ""), exc.problem)
    else:
        trace.setdefault("format", "auto")
        trace["path"] = _absolute_if_path(trace["path"], _base(ctx, "trace.path", base_dir), always=True)
        if not Path(trace["path"]).is_file():
            ctx.fail("trace.path", f"no such file {trace['path']!r}")

    for kind in ("model", "hardware"):
        if kind in s:
            base = _base(ctx, kind, base_dir)
            try:
                find_profile(kind, s[kind], repo_root, base)
            except InputError as exc:
                ctx.fail(kind, exc.problem)
            s[kind] = _absolute_if_path(s[kind], base)
        elif ours:
            ctx.fail(kind, f"required for backend {backend} (a name under {PROFILE_SUBDIRS[kind]}/ or a path)")
    if ours:
        if "cluster" not in s:
            ctx.fail("cluster", f"required for backend {backend} (prefill_nodes, decode_nodes)")
        for k in ("prefill_nodes", "decode_nodes"):
            if k not in s["cluster"]:
                ctx.fail(f"cluster.{k}", f"required for backend {backend}")
        _check_groups(s["cluster"], ctx)

    systems = s.setdefault("systems", list(DEFAULT_SYSTEMS[backend]))
    for i, name in enumerate(systems):
        if ours and name not in SYSTEMS:
            ctx.fail(f"systems[{i}]", f"must be one of {', '.join(SYSTEMS)} for backend {backend}, "
                     f"got {name!r}{_hint(name, SYSTEMS)}")
        if name in systems[:i]:
            ctx.fail(f"systems[{i}]", f"{name!r} is listed twice")

    arrival = s.setdefault("arrival", {})
    mode = arrival.setdefault("mode", "offline")
    if mode in RATE_MODES and "rate_aps" not in arrival:
        ctx.fail("arrival.rate_aps", f"required for mode {mode} (agents per second, > 0)")
    if mode not in RATE_MODES and "rate_aps" in arrival:
        ctx.fail("arrival.rate_aps", f"only for modes {', '.join(RATE_MODES)} (mode is {mode})")
    for k, only in (("shape", "gamma"), ("time_scale", "trace")):
        if k in arrival and mode != only:
            ctx.fail(f"arrival.{k}", f"only for mode {only} (mode is {mode})")
    if mode == "gamma":
        arrival.setdefault("shape", 1.0)
    if mode == "trace":
        if "synth" in trace:
            ctx.fail("arrival.mode", "trace replays the trace's timestamps, and a synthetic trace has none "
                     f"(with trace.synth: {', '.join(m for m in ARRIVAL_MODES if m != 'trace')})")
        arrival.setdefault("time_scale", 1.0)
    arrival.setdefault("seed", s["seed"])

    slo = s.get("slo")
    if slo is not None and "percentile" in slo and not {"ttft_s", "tpot_s", "e2e_s"} & set(slo):
        ctx.fail("slo.percentile", "needs at least one target (ttft_s, tpot_s, e2e_s)")
    s.setdefault("telemetry", {}).setdefault("window_s", 1.0)

    for k in ("endpoint", "max_concurrency", "abort"):
        if k in s and backend != "http":
            ctx.fail(k, f"only for backend http (backend is {backend})")
    if backend == "http":
        if "endpoint" not in s:
            ctx.fail("endpoint", "required for backend http (url, model, ...)")
        ep = s["endpoint"]
        ep.setdefault("ignore_eos", True)
        ep.setdefault("api", "completions")
        ep.setdefault("prompt", "text" if ep["api"] == "chat" else "token_ids")  # chat messages are text
        ep.setdefault("stall_timeout_s", 60.0)
        if ep["api"] == "chat" and ep["prompt"] == "token_ids":
            ctx.fail("endpoint.prompt", "chat messages are text: use prompt: text with api: chat "
                     "(token_ids needs api: completions)")
        if "tokenizer" in ep:
            if ep["prompt"] != "text":
                ctx.fail("endpoint.tokenizer", "only with endpoint.prompt: text (it sizes text prompts)")
            base = _base(ctx, "endpoint.tokenizer", base_dir)
            ep["tokenizer"] = _absolute_if_path(ep["tokenizer"], base, always=True)
            if not Path(ep["tokenizer"]).is_file():
                ctx.fail("endpoint.tokenizer", f"no such file {ep['tokenizer']!r} (a tokenizer.json)")
        for k, v in (ep.get("headers") or {}).items():
            ep["headers"][k] = str(v)
        for k in ("prompt", "messages", "stream"):
            if k in (ep.get("extra_body") or {}):
                ctx.fail(f"endpoint.extra_body.{k}", "set by the driver for every request (it streams the trace's "
                         "prompts); extra_body adds what a server needs beyond that")
        for k in ("max_failure_share", "min_ok_share"):
            if s.get("abort", {}).get(k, 0) > 1:
                ctx.fail(f"abort.{k}", f"must be a share from 0 to 1, got {s['abort'][k]:g}")

    if "sim" in s:
        _check_sim(s["sim"], ctx)
    if "capacity" in s:
        _check_capacity(s["capacity"], ctx)
    return {k: s[k] for k in SCHEMA.fields if k in s}  # schema order


GROUP_DEFAULTS = {"prefill": 2, "decode": 4}  # engines/sim/run.py: min(nodes, default)


def _check_groups(cluster: dict, ctx: _Context) -> None:
    """An expert-parallel group spans whole nodes: its size is at most the node count and divides it."""
    for role, default in GROUP_DEFAULTS.items():
        nodes, key = cluster[f"{role}_nodes"], f"cluster.{role}_group_nodes"
        given = key.split(".")[1] in cluster
        size = cluster[key.split(".")[1]] if given else min(nodes, default)
        divisors = ", ".join(str(d) for d in range(1, nodes + 1) if nodes % d == 0)
        if size > nodes or nodes % size:
            what = f"{size}" if given else f"{size} (the default)"
            ctx.fail(key if given else f"cluster.{role}_nodes",
                     f"a group of {what} nodes does not divide cluster.{role}_nodes ({nodes}): groups span whole "
                     f"nodes (allowed group sizes: {divisors})")


def _check_sim(sim: dict, ctx: _Context) -> None:
    """Each `sim` key is a simulator constant with a value it takes (the same check the simulator makes),
    within the bound that keeps a run finite (keys.SIM_BOUNDS)."""
    from engines.costmodel.constants import MAY_BE_ZERO, SimConstants

    for name, value in sim.items():
        try:
            SimConstants().with_overrides({name: value})
        except InputError as exc:
            ctx.fail(exc.field or f"sim.{name}", exc.problem + _number_text_hint(value))
        except OverflowError:  # an integer of hundreds of digits
            ctx.fail(f"sim.{name}", "expected a number, got an integer too large for a number")
        bounds = sim_bounds(name)
        if bounds is None:
            continue
        low, high = bounds
        if low == 0 and name not in MAY_BE_ZERO:
            low = SIM_MIN_POSITIVE_S
        if not low <= value <= high:
            ctx.fail(f"sim.{name}", f"must be in [{low:g}, {high:g}] (values outside make a run unbounded or "
                     f"meaningless), got {value:g}")


def _check_capacity(capacity: dict, ctx: _Context) -> None:
    """The search's rates and horizon fit together, counting harness/capacity.py's defaults for keys not given."""
    from harness.capacity import DEFAULTS, settings

    def value(k: str) -> tuple[float, str]:
        return (capacity[k], "") if k in capacity else (DEFAULTS[k], ", the default")

    (start, start_note), (top, top_note) = value("rate_aps_start"), value("rate_aps_max")
    if start > top:
        if "rate_aps_start" in capacity:
            ctx.fail("capacity.rate_aps_start", f"must be <= capacity.rate_aps_max ({top:g}{top_note})")
        ctx.fail("capacity.rate_aps_max", f"must be >= capacity.rate_aps_start ({start:g}{start_note})")
    warmup, warmup_note = value("warmup_s")
    if "horizon_s" in capacity and capacity["horizon_s"] <= warmup:
        ctx.fail("capacity.horizon_s", f"must be > capacity.warmup_s ({warmup:g} s{warmup_note}): requests "
                 "are judged between the two")
    horizon = settings({"capacity": capacity})["horizon_s"]
    if "max_horizon_s" in capacity and capacity["max_horizon_s"] < horizon:
        ctx.fail("capacity.max_horizon_s", f"must be >= the horizon ({horizon:g} s): a probe runs at least that long")

