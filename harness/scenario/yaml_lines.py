"""YAML with line numbers: parse a scenario or profile, recording the file and line of every key, and turn
everything YAML allows but a scenario cannot hold into an InputError at its line."""
from __future__ import annotations

from typing import Any

import yaml

from traces.errors import InputError

from harness.scenario.kinds import _join

MAX_YAML_VALUES = 100_000  # a scenario holds a few hundred; more is an alias bomb


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

