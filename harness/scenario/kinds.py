"""The scenario schema's vocabulary: value kinds (Str, Number, Int, Bool, ListOf, Mapping, ...) and the
context that turns a dotted key into the place to blame (the file and line, or `--set`)."""
from __future__ import annotations

import math
import re
from typing import Sequence

from traces.errors import InputError, did_you_mean


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


def _bound(b: float) -> str:
    return f"{int(b):,}" if float(b).is_integer() and abs(b) < 1e15 else f"{b:g}"


def _shown(value: float) -> str:
    if isinstance(value, int) and len(str(abs(value))) > 15:
        return f"an integer of {len(str(abs(value)))} digits"
    return _bound(value) if abs(value) < 1e15 else f"{value:.3g}"


class Number(_Kind):
    """A number (or integer) within bounds; the bounds are in every message about it."""

    def __init__(self, *, integer: bool = False, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None):
        self.integer, self.gt, self.ge, self.lt, self.le = integer, gt, ge, lt, le
        noun = "an integer" if integer else "a number"
        low = f"({_bound(gt)}" if gt is not None else f"[{_bound(ge)}" if ge is not None else None
        high = f"{_bound(lt)})" if lt is not None else f"{_bound(le)}]" if le is not None else None
        if low and high:
            self.what = f"{noun} in {low}, {high}"
        else:
            bounds = [f"{op} {_bound(b)}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]
            self.what = " ".join([noun, *bounds])

    def check(self, value, key, ctx):
        fits = isinstance(value, int) if self.integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not fits:
            ctx.fail(key, f"must be {self.what}, got {_show(value)}{_number_text_hint(value, self.integer)}")
        if not self.integer:
            try:
                value = float(value)
            except OverflowError:  # an integer of hundreds of digits
                ctx.fail(key, f"must be {self.what}, got an integer too large for a number")
            if not math.isfinite(value):
                ctx.fail(key, f"must be {self.what}, got {value}")
        if ((self.gt is not None and not value > self.gt) or (self.ge is not None and not value >= self.ge)
                or (self.lt is not None and not value < self.lt) or (self.le is not None and not value <= self.le)):
            ctx.fail(key, f"must be {self.what}, got {_shown(value)}")
        return value


def Int(minimum: int | None = None, maximum: int | None = None) -> Number:  # noqa: N802 (reads like the other kinds)
    return Number(integer=True, ge=minimum, le=maximum)


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


def _number_text_hint(value, integer: bool = False) -> str:
    """PyYAML (YAML 1.1) reads `1e12`, `1e-300` and `1.0e3` as text: a number needs a dot and a signed
    exponent (`1.0e+12`). Say how to write the number meant."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    if integer and number.is_integer() and abs(number) < 1e30:
        return f" (YAML reads {value.strip()} as text: write the whole number, {int(number)})"
    mantissa, _, exponent = f"{number:.15g}".partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    suggested = f"{mantissa}e{'' if exponent[:1] in '+-' else '+'}{exponent}" if exponent else mantissa
    return f" (YAML reads {value.strip()} as text: write {suggested})"


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

