"""`--set key.path=value` overrides: applied in order, each value YAML, `--set` recorded as its origin."""
from __future__ import annotations

from typing import Sequence

import yaml

from traces.errors import InputError

from harness.scenario.keys import SCHEMA, SET_SOURCE
from harness.scenario.kinds import FreeMapping, Mapping, ScalarMapping, _hint, _Kind, _Scalar
from harness.scenario.yaml_lines import CONSTRUCTOR_ERRORS, _constructor_problem


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

