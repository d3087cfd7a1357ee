"""Scenario files: load, validate, apply `--set` overrides, fill defaults, dump.

A scenario is a YAML mapping (DESIGN.md "Scenario"). Every problem is an `InputError` that names the
file and line of the offending key (PyYAML node marks), its dotted path (`cluster.prefill_nodes`,
`systems[1]`) and what is allowed; a problem in a `--set` override names `--set` and the key instead.

Rules beyond the per-key types:
- `null` means "not set", in the file and in `--set key=null` (that is how an override removes a key);
- `trace` has exactly one of `synth` and `path`; a relative `trace.path` (or model/hardware path) is
  resolved against the scenario file's directory, one given with `--set` against the working directory;
- `model`, `hardware`, `cluster` and `sim` describe our engines: required (model, hardware,
  cluster.prefill_nodes/decode_nodes) for sim and live, allowed (ignored) for http, so one file can be
  run on several backends; `endpoint` and `max_concurrency` describe an external server: http only;
- a key is a plain name (not a list or mapping); an alias may not contain itself; seeds are integers
  >= 0; `telemetry.window_s` is at least 1 ms; `sim` keys are the simulator's constants
  (engines/costmodel/constants.py), checked here so that a wrong one is blamed on its line or on `--set`;
- `arrival.mode: trace` needs a trace with timestamps (a synthetic trace has none); `capacity`
  rates are checked against harness/capacity.py's defaults for the ones not given;
- defaults filled: backend sim, systems [basic, dualpath] ([external] for http), arrival offline,
  trace.format auto, telemetry.window_s 1.0, seed 1, synth and arrival seeds = seed, gamma shape 1.0,
  trace time_scale 1.0, endpoint.ignore_eos true, endpoint.api completions, endpoint.prompt token_ids
  (text for chat), endpoint.stall_timeout_s 60 (`abort.*` defaults live in harness/driver.py). Other
  optional keys stay absent when not given.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from engines.contract import BACKENDS, PLANNED_BACKENDS as UNAVAILABLE_BACKENDS, SYSTEMS
from engines.costmodel.profiles import PROFILE_SUBDIRS, find_profile, looks_like_path as _looks_like_path
from traces.errors import InputError, did_you_mean
from traces.io import FORMATS
from traces.presets import PRESETS
from traces.synth import SynthParams, params_with

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SYSTEMS = {"sim": ["basic", "dualpath"], "live": ["basic", "dualpath"], "http": ["external"]}
ARRIVAL_MODES = ("offline", "poisson", "gamma", "constant", "trace")
RATE_MODES = ("poisson", "gamma", "constant")
SET_SOURCE = "--set"
MAX_YAML_VALUES = 100_000  # a scenario holds a few hundred; more is an alias bomb
MIN_WINDOW_S = 1e-3  # telemetry windows: every window is a row per link, so 1e-7 s would never end
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
NAME_DOC = "letters, digits, '.', '_', '-'"
URL_PATTERN = r"https?://\S+"
URL_DOC = "an http:// or https:// URL"
ENDPOINT_APIS = ("completions", "chat")  # POST {url}/v1/completions | {url}/v1/chat/completions
PROMPT_FORMS = ("token_ids", "text")


# ----- value kinds (the schema's vocabulary) -------------------------------------------------------
class _Kind:
    what = "a value"

    def check(self, value, key: str, ctx: "_Context"):
        return value


class Str(_Kind):
    def __init__(self, choices: Sequence[str] | None = None, pattern: str | None = None,
                 pattern_doc: str | None = None, unavailable: dict[str, str] | None = None):
        self.choices, self.pattern, self.pattern_doc = choices, pattern, pattern_doc
        self.unavailable = unavailable or {}
        self.what = f"one of {', '.join(choices)}" if choices else (pattern_doc or "a string")

    def check(self, value, key, ctx):
        if not isinstance(value, str):
            ctx.fail(key, f"must be {self.what}, got {_show(value)}")
        if value in self.unavailable:
            ctx.fail(key, f"{value!r} ({self.unavailable[value]}) is not available in this version "
                     f"(allowed: {', '.join(self.choices or ())})")
        if self.choices is not None and value not in self.choices:
            ctx.fail(key, f"must be one of {', '.join(self.choices)}, got {_show(value)}{_hint(value, self.choices)}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            ctx.fail(key, f"must be {self.what}, got {_show(value)}")
        return value


class Number(_Kind):
    def __init__(self, *, integer: bool = False, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None):
        self.integer, self.gt, self.ge, self.lt = integer, gt, ge, lt
        noun = "an integer" if integer else "a number"
        bounds = [f"{op} {b:g}" for op, b in ((">", gt), (">=", ge), ("<", lt)) if b is not None]
        self.what = f"{noun} in ({gt:g}, {lt:g})" if gt is not None and lt is not None else " ".join([noun, *bounds])

    def check(self, value, key, ctx):
        fits = isinstance(value, int) if self.integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not fits:
            ctx.fail(key, f"must be {self.what}, got {_show(value)}{_number_text_hint(value)}")
        if not self.integer:
            try:
                value = float(value)
            except OverflowError:  # an integer of hundreds of digits
                ctx.fail(key, f"must be {self.what}, got an integer too large for a number")
            if not math.isfinite(value):
                ctx.fail(key, f"must be {self.what}, got {value}")
        if ((self.gt is not None and not value > self.gt) or (self.ge is not None and not value >= self.ge)
                or (self.lt is not None and not value < self.lt)):
            ctx.fail(key, f"must be {self.what}, got {value}")
        return value


def Int(minimum: int | None = None) -> Number:  # noqa: N802 (reads like the other kinds)
    return Number(integer=True, ge=minimum)


class Bool(_Kind):
    what = "true or false"

    def check(self, value, key, ctx):
        if not isinstance(value, bool):
            ctx.fail(key, f"must be true or false, got {_show(value)}")
        return value


class ListOf(_Kind):
    def __init__(self, item: _Kind, min_len: int = 1):
        self.item, self.min_len = item, min_len
        self.what = f"a list of {item.what}"

    def check(self, value, key, ctx):
        if not isinstance(value, list):
            ctx.fail(key, f"must be {self.what} (YAML [a, b]), got {_show(value)}")
        if len(value) < self.min_len:
            ctx.fail(key, f"must have at least {self.min_len} item(s)")
        return [self.item.check(v, f"{key}[{i}]", ctx) for i, v in enumerate(value)]


class Mapping(_Kind):
    """A mapping with known keys, checked in this order (the order of the resolved scenario)."""

    def __init__(self, fields: dict[str, _Kind], required: Sequence[str] = ()):
        self.fields, self.required = fields, tuple(required)
        self.what = "a mapping"

    def check(self, value, key, ctx):
        if not isinstance(value, dict):
            ctx.fail(key, f"must be a mapping of {', '.join(self.fields)}, got {_show(value)}")
        for k in value:
            if not isinstance(k, str):
                ctx.fail(_join(key, str(k)), "keys must be strings")
            if k not in self.fields:
                ctx.fail(_join(key, k), f"unknown key{_hint(k, self.fields)} (allowed: {', '.join(self.fields)})")
        out = {}
        for name, kind in self.fields.items():
            if value.get(name) is not None:
                out[name] = kind.check(value[name], _join(key, name), ctx)
        for name in self.required:
            if name not in out:
                ctx.fail(_join(key, name), "required")
        return out


class _Scalar(_Kind):
    what = "a scalar"


class FreeMapping(_Kind):
    what = "a mapping"

    def check(self, value, key, ctx):
        if not isinstance(value, dict):
            ctx.fail(key, f"must be {self.what}, got {_show(value)}")
        return value


class ScalarMapping(FreeMapping):
    what = "a mapping of names to scalars"

    def check(self, value, key, ctx):
        out = {}
        for k, v in super().check(value, key, ctx).items():
            if not isinstance(k, str):
                ctx.fail(_join(key, str(k)), "keys must be strings")
            if v is not None and not isinstance(v, (str, int, float, bool)):
                ctx.fail(_join(key, k), f"must be a scalar (number, string, true/false), got {_show(v)}")
            if v is not None:
                out[k] = v
        return out


def _synth_fields() -> dict[str, _Kind]:
    fields: dict[str, _Kind] = {"preset": Str(choices=tuple(PRESETS)), "agents": Int(1), "seed": Int(0)}
    for f in SynthParams.__dataclass_fields__.values():
        fields[f.name] = Number(integer=f.type in ("int", int))
    return fields


SCHEMA = Mapping({
    "name": Str(pattern=NAME_PATTERN, pattern_doc=f"a name of {NAME_DOC}"),
    "description": Str(),
    "backend": Str(choices=BACKENDS, unavailable=UNAVAILABLE_BACKENDS),
    "trace": Mapping({
        "synth": Mapping(_synth_fields(), required=("preset", "agents")),
        "path": Str(),
        "format": Str(choices=FORMATS),
        "block_size": Int(1),
        "agents": Int(1),
    }),
    "model": Str(),
    "hardware": Str(),
    "cluster": Mapping({"prefill_nodes": Int(1), "decode_nodes": Int(1), "prefill_group_nodes": Int(1),
                        "decode_group_nodes": Int(1), "dram_buffer_gb": Number(gt=0)}),
    "systems": ListOf(Str(pattern=NAME_PATTERN, pattern_doc=f"a system name of {NAME_DOC}")),
    "arrival": Mapping({"mode": Str(choices=ARRIVAL_MODES), "rate_aps": Number(gt=0), "shape": Number(gt=0),
                        "time_scale": Number(gt=0), "seed": Int(0)}),
    "slo": Mapping({"ttft_s": Number(gt=0), "tpot_s": Number(gt=0), "e2e_s": Number(gt=0),
                    "percentile": Number(gt=0, lt=100)}),
    "telemetry": Mapping({"window_s": Number(ge=MIN_WINDOW_S)}),
    "seed": Int(0),
    "sim": ScalarMapping(),
    "endpoint": Mapping({"url": Str(pattern=URL_PATTERN, pattern_doc=URL_DOC), "model": Str(),
                         "api_key_env": Str(), "reset_url": Str(pattern=URL_PATTERN, pattern_doc=URL_DOC),
                         "timeout_s": Number(gt=0), "ignore_eos": Bool(), "token_ids": Bool(),
                         "prometheus": ListOf(Str(pattern=URL_PATTERN, pattern_doc=URL_DOC)),
                         "api": Str(choices=ENDPOINT_APIS), "prompt": Str(choices=PROMPT_FORMS),
                         "tokenizer": Str(), "headers": ScalarMapping(), "extra_body": FreeMapping(),
                         "stall_timeout_s": Number(gt=0)},
                        required=("url",)),
    "max_concurrency": Int(1),
    "abort": Mapping({"max_consecutive_failures": Int(1), "window_requests": Int(1),
                      "max_failure_share": Number(gt=0), "min_ok_share": Number(ge=0)}),
    # ----- issue 14: the live cluster (backend live; the simulator accepts and ignores it) -----
    "live": Mapping({"transport": Str(choices=("tcp", "shm")), "compute": Str(choices=("modeled",)),
                     "time_scale": Number(gt=0), "storage_dir": Str()}),
    # ----- end issue 14 -----
    "capacity": Mapping({"rate_aps_start": Number(gt=0), "rate_aps_max": Number(gt=0),
                         "tolerance": Number(gt=0), "warmup_s": Number(ge=0), "window_s": Number(gt=0),
                         "max_probes": Int(1), "horizon_s": Number(gt=0), "lookback_s": Number(gt=0),
                         "max_horizon_s": Number(gt=0)}),
}, required=("name", "trace"))


# ----- where things are: key path -> (file or --set, line) -----------------------------------------
def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _parent(key: str) -> str:
    cut = max(key.rfind("."), key.rfind("["))
    return key[:cut] if cut > 0 else ""


def _show(value) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


_hint = did_you_mean


def _clip(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# What PyYAML's constructors raise, besides YAMLError, on a scalar its tag does not fit: `2024-13-45` (a date
# with month 13), a 5,000-digit integer, `!!float abc`, `!!float ` (IndexError), `!!bool x` (KeyError),
# `!!timestamp x` (AttributeError).
CONSTRUCTOR_ERRORS = (ValueError, OverflowError, IndexError, KeyError, AttributeError, TypeError)


def _constructor_problem(exc: BaseException, tag: str | None = None) -> str:
    if isinstance(exc, (ValueError, OverflowError)) and str(exc):
        return str(exc).split(";")[0].splitlines()[0]
    tag = (tag or "").replace("tag:yaml.org,2002:", "!!")
    return f"not a valid {tag} value" if tag else "not a value its tag allows"


def _number_text_hint(value) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (YAML reads this as text: write 1.0e3 rather than 1e3)"
    return ""


class _Context:
    """Turns a dotted key into the place to blame: the file and line, or `--set`."""

    def __init__(self, path: str, origins: dict[str, tuple[str, int | None]]):
        self.path, self.origins = path, origins

    def where(self, key: str) -> tuple[str, int | None]:
        k = key
        while True:
            if k in self.origins:
                return self.origins[k]
            if not k:
                return self.path, None
            k = _parent(k)

    def fail(self, key: str, problem: str):
        source, line = self.where(key)
        raise InputError(problem, path=source, line=line, field=key or None)


# ----- YAML with line numbers ----------------------------------------------------------------------
def _compose(text: str, path: str) -> tuple[Any, dict[str, tuple[str, int]]]:
    """Parse YAML, returning the data and the line of every key (and list item).

    Everything YAML allows but a scenario cannot hold is an InputError at its line: a key that is a list
    or mapping (`? [a, b]`), an alias inside the value it names (`&t {x: [*t]}`), aliases expanding to
    more than MAX_YAML_VALUES values, nesting too deep to parse, and scalars the YAML constructors
    reject (`2024-13-45`, `!!float abc`).
    """
    loader = yaml.SafeLoader(text)
    origins: dict[str, tuple[str, int]] = {}
    inside: set[int] = set()  # the collection nodes being built (an alias of one of them is a cycle)
    built = 0

    def fail(problem: str, key: str, node, at_key: bool = True) -> InputError:
        """The error at the key's line (or, `at_key=False` or unknown, at the node's own line)."""
        line = origins[key][1] if at_key and key in origins else node.start_mark.line + 1
        return InputError(problem, path=path, line=line, field=key or None)

    def scalar(node, key: str):
        try:
            return loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except CONSTRUCTOR_ERRORS as exc:  # PyYAML's constructors on values their tag does not fit
            raise fail(f"invalid YAML value {_clip(node.value)} ({_constructor_problem(exc, node.tag)})", key,
                       node, at_key=False) from None

    def build(node, key: str):
        nonlocal built
        built += 1
        if built > MAX_YAML_VALUES:
            raise fail(f"more than {MAX_YAML_VALUES:,} values (aliases expanding to that many?)", key, node)
        if isinstance(node, yaml.ScalarNode):
            return scalar(node, key)
        if id(node) in inside:
            raise fail("a YAML alias inside the value it names (a value that contains itself)", key, node)
        inside.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return build_mapping(node, key)
            if isinstance(node, yaml.SequenceNode):
                items = []
                for i, item in enumerate(node.value):
                    origins[f"{key}[{i}]"] = (path, item.start_mark.line + 1)
                    items.append(build(item, f"{key}[{i}]"))
                return items
            return scalar(node, key)
        finally:
            inside.discard(id(node))

    def build_mapping(node, key: str) -> dict:
        seen = set()
        for k_node, _ in node.value:
            if not isinstance(k_node, yaml.ScalarNode):
                raise InputError("a key must be a plain name, not a list or mapping", path=path,
                                 line=k_node.start_mark.line + 1, field=key or None)
            if k_node.tag != "tag:yaml.org,2002:merge":
                if k_node.value in seen:
                    raise InputError(f"duplicate key {k_node.value!r}", path=path,
                                     line=k_node.start_mark.line + 1, field=key or None)
                seen.add(k_node.value)
        loader.flatten_mapping(node)
        out = {}
        for k_node, v_node in node.value:
            if not isinstance(k_node, yaml.ScalarNode):  # from a merged mapping
                raise InputError("a key must be a plain name, not a list or mapping", path=path,
                                 line=k_node.start_mark.line + 1, field=key or None)
            k = scalar(k_node, key)
            name = _join(key, str(k))
            origins[name] = (path, k_node.start_mark.line + 1)
            out[k] = build(v_node, name)
        return out

    try:
        root = loader.get_single_node()
        if root is None:
            return None, origins
        origins[""] = (path, root.start_mark.line + 1)
        return build(root, ""), origins
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise InputError(f"invalid YAML: {problem}", path=path,
                         line=None if mark is None else mark.line + 1) from None
    except yaml.YAMLError as exc:
        raise InputError(f"invalid YAML: {exc}", path=path) from None
    except RecursionError:  # nesting thousands deep, or a merge key (<<) naming its own mapping
        raise InputError("invalid YAML: nested too deeply, or an alias inside the value it names",
                         path=path) from None
    finally:
        loader.dispose()


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InputError("no such file", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ({exc})", path=path) from None


# ----- --set overrides ---------------------------------------------------------------------------
def _kind_at(kind: _Kind, part: str, key: str) -> _Kind:
    """The kind of `part` under a mapping kind, or an error naming what is allowed."""
    if isinstance(kind, Mapping):
        if part not in kind.fields:
            raise InputError(f"unknown key{_hint(part, kind.fields)} (allowed: {', '.join(kind.fields)})",
                             path=SET_SOURCE, field=key)
        return kind.fields[part]
    return _Scalar() if isinstance(kind, ScalarMapping) else FreeMapping()


def apply_overrides(data: dict, origins: dict, overrides: Sequence[str]) -> None:
    """Apply `key.path=value` overrides in order (values are YAML), recording `--set` as their origin."""
    for raw in overrides:
        key, sep, text = raw.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or any(not p for p in parts):
            raise InputError(f"expected KEY.PATH=VALUE, got {raw!r}", path=SET_SOURCE)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise InputError(f"value is not valid YAML ({str(exc).splitlines()[0]})", path=SET_SOURCE,
                             field=key) from None
        except CONSTRUCTOR_ERRORS as exc:  # PyYAML's constructors on values their tag does not fit
            raise InputError(f"value is not valid YAML ({_constructor_problem(exc)})", path=SET_SOURCE,
                             field=key) from None
        except RecursionError:
            raise InputError("value is not valid YAML (nested too deeply)", path=SET_SOURCE, field=key) from None
        kind: _Kind = SCHEMA
        node = data
        for depth, part in enumerate(parts):
            sub_key = ".".join(parts[:depth + 1])
            kind = _kind_at(kind, part, sub_key)
            if depth == len(parts) - 1:
                break
            if not isinstance(kind, (Mapping, FreeMapping)):
                raise InputError(f"{sub_key} is {kind.what}, not a mapping", path=SET_SOURCE, field=key)
            child = node.get(part)
            if child is None:
                child = node[part] = {}
                origins.setdefault(sub_key, (SET_SOURCE, None))
            elif not isinstance(child, dict):
                raise InputError(f"{sub_key} is not a mapping in the scenario", path=SET_SOURCE, field=key)
            node = child
        node[parts[-1]] = value
        for k in [k for k in origins if k.startswith(key + ".") or k.startswith(key + "[")]:
            del origins[k]
        origins[key] = (SET_SOURCE, None)


def _absolute_if_path(value: str, base: Path, always: bool = False) -> str:
    if not (always or _looks_like_path(value)):
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


# ----- profiles ----------------------------------------------------------------------------------
def resolve_profile(kind: str, name_or_path: str, repo_root: Path | None = None, *,
                    base_dir: Path | None = None) -> tuple[str, dict]:
    """Load a model or hardware profile by name (scenarios/<kind>s/NAME.yaml) or path: (name, mapping)."""
    path = find_profile(kind, name_or_path, repo_root, base_dir)
    data, _ = _compose(_read_text(str(path)), str(path))
    if not isinstance(data, dict):
        raise InputError(f"a {kind} profile is a YAML mapping, got {_show(data)}", path=str(path), line=1)
    return path.stem, data


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
            params_with(PRESETS[synth["preset"]], **params).validate()
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


def _check_sim(sim: dict, ctx: _Context) -> None:
    """Each `sim` key is a simulator constant with a value it takes (the same check the simulator makes)."""
    from engines.costmodel.constants import SimConstants

    for name, value in sim.items():
        try:
            SimConstants().with_overrides({name: value})
        except InputError as exc:
            ctx.fail(exc.field or f"sim.{name}", exc.problem)
        except OverflowError:  # an integer of hundreds of digits
            ctx.fail(f"sim.{name}", "expected a number, got an integer too large for a number")


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


# ----- public API ----------------------------------------------------------------------------------
def load_scenario(path: str | os.PathLike, overrides: Sequence[str] = (), *,
                  repo_root: str | os.PathLike | None = None) -> dict:
    """Read, override (`key.path=value` strings), validate and resolve a scenario file."""
    path = str(path)
    data, origins = _compose(_read_text(path), path)
    if data is None:
        raise InputError("empty scenario (expected a mapping with name, trace, ...)", path=path)
    if not isinstance(data, dict):
        raise InputError(f"a scenario is a YAML mapping (name, backend, trace, ...), got {_show(data)}",
                         path=path, line=origins.get("", (path, None))[1])
    apply_overrides(data, origins, overrides)
    ctx = _Context(path, origins)
    resolved = SCHEMA.check(data, "", ctx)
    return _check_rules(resolved, ctx, Path(path).resolve().parent,
                        None if repo_root is None else Path(repo_root))


def dump_scenario(resolved: dict, path: str | os.PathLike) -> None:
    """Write a resolved scenario as YAML (keys in schema order, so equal scenarios give equal files)."""
    text = yaml.safe_dump(resolved, sort_keys=False, default_flow_style=False, allow_unicode=True)
    Path(path).write_text(text, encoding="utf-8")
