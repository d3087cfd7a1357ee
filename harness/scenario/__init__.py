"""Scenario files: load, validate, apply `--set` overrides, fill defaults, dump.

The parts: keys.py (the key table), kinds.py (value kinds, where to blame), yaml_lines.py (YAML with line
numbers), overrides.py (`--set`), rules.py (cross-key rules and defaults), this module (the public API).

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
- every count, size, rate and time has a bound (keys.py, in the message); expert-parallel group sizes
  divide their node counts; `sim` constants stay within keys.SIM_BOUNDS; bounds that need the trace (run
  length, telemetry windows, memory) are harness/run_limits.py's, located here by `locate_error`;
- `arrival.mode: trace` needs a trace with timestamps (a synthetic trace has none); `capacity`
  rates are checked against harness/capacity.py's defaults for the ones not given;
- defaults filled: backend sim, systems [basic, dualpath] ([external] for http), arrival offline,
  trace.format auto, telemetry.window_s 1.0, seed 1, synth and arrival seeds = seed, gamma shape 1.0,
  trace time_scale 1.0, endpoint.ignore_eos true, endpoint.api completions, endpoint.prompt token_ids
  (text for chat), endpoint.stall_timeout_s 60 (`abort.*` defaults live in harness/driver.py). Other
  optional keys stay absent when not given.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import yaml

from engines.contract import SYSTEMS
from engines.costmodel.profiles import find_profile
from traces.errors import InputError

from harness.scenario.keys import (ARRIVAL_MODES, DEFAULT_SYSTEMS, ENDPOINT_APIS, MIN_WINDOW_S, NAME_DOC,
                                   NAME_PATTERN, PROMPT_FORMS, RATE_MODES, REPO_ROOT, SCHEMA, SET_SOURCE,
                                   URL_DOC, URL_PATTERN)
from harness.scenario.kinds import (Bool, FreeMapping, Int, ListOf, Mapping, Number, ScalarMapping, Str,
                                    _Context, _show)
from harness.scenario.overrides import apply_overrides
from harness.scenario.rules import _check_rules
from harness.scenario.yaml_lines import CONSTRUCTOR_ERRORS, MAX_YAML_VALUES, _compose, _read_text

__all__ = ["ARRIVAL_MODES", "Bool", "CONSTRUCTOR_ERRORS", "DEFAULT_SYSTEMS", "ENDPOINT_APIS", "FreeMapping", "Int",
           "ListOf", "MAX_YAML_VALUES", "MIN_WINDOW_S", "Mapping", "NAME_DOC", "NAME_PATTERN", "Number",
           "PROMPT_FORMS", "RATE_MODES", "REPO_ROOT", "SCHEMA", "SET_SOURCE", "SYSTEMS", "ScalarMapping", "Str",
           "URL_DOC", "URL_PATTERN", "apply_overrides", "dump_scenario", "load_scenario", "locate_error",
           "resolve_profile"]


# ----- profiles ----------------------------------------------------------------------------------
def resolve_profile(kind: str, name_or_path: str, repo_root: Path | None = None, *,
                    base_dir: Path | None = None) -> tuple[str, dict]:
    """Load a model or hardware profile by name (scenarios/<kind>s/NAME.yaml) or path: (name, mapping)."""
    path = find_profile(kind, name_or_path, repo_root, base_dir)
    data, _ = _compose(_read_text(str(path)), str(path))
    if not isinstance(data, dict):
        raise InputError(f"a {kind} profile is a YAML mapping, got {_show(data)}", path=str(path), line=1)
    return path.stem, data



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


def locate_error(exc: InputError, path: str | os.PathLike, overrides: Sequence[str] = ()) -> InputError:
    """An error about a scenario key found after loading (by a backend, from the trace) at the key's line
    in the file, or on `--set` when an override gave it; unchanged when it is located already."""
    path = str(path)
    if exc.line is not None or not exc.field or exc.path not in (None, path):
        return exc
    try:
        data, origins = _compose(_read_text(path), path)
        if isinstance(data, dict):
            apply_overrides(data, origins, overrides)
    except InputError:
        return exc
    key = exc.field
    while key and key not in origins:
        key = key[:max(key.rfind("."), key.rfind("["), 0)]
    if not key:
        return InputError(exc.problem, path=path, field=exc.field)
    source, line = origins[key]
    return InputError(exc.problem, path=source, line=line, field=exc.field)


# ----- sweeps and expected values (harness/sweep.py, harness/expected.py own these keys) ---------------
from harness.expected import EXPECTED_KIND  # noqa: E402 (they use the kinds above, lazily)
from harness.sweep import SWEEP_KIND, ZIP_KIND  # noqa: E402

SCHEMA.fields.update(sweep=SWEEP_KIND, zip=ZIP_KIND, expected=EXPECTED_KIND)
