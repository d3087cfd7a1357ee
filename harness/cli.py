"""The `dualpath` command line.

Bad arguments and bad input are one line on stderr (`FILE:LINE: FIELD: problem` where a file is
involved) and exit code 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from traces.errors import InputError

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`prog: problem`) and exit code 2."""

    def error(self, message: str):  # noqa: D401 (argparse API)
        raise UsageError(f"{self.prog}: {message}")


class UsageError(Exception):
    pass


def build_parser() -> Parser:
    from harness import cli_trace

    parser = Parser(prog="dualpath", description="Benchmark and replay agentic LLM inference with "
                    "KV-cache loading from storage (DualPath reproduction).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    cli_trace.register(sub)
    try:
        from harness import cli_run
    except ImportError:  # pragma: no cover - during bootstrap only
        cli_run = None
    if cli_run is not None:
        cli_run.register(sub)
        from harness import cli_hw
        cli_hw.register(sub)
    from harness import mock_server
    mock_server.register(sub)
    from harness import cli_gate
    cli_gate.register(sub)
    from harness import cli_report
    cli_report.register(sub)
    from harness import cli_live, cli_suite
    cli_suite.register(sub)
    cli_live.register(sub)  # the live cluster's parts: dualpath engine, dualpath serve
    return parser


def emit_json(obj) -> None:
    """Write one JSON document to stdout (the only thing on stdout under --json).

    Strict JSON, as summary.json is (the same conversion, harness/results.py): NaN and infinities become
    null, numpy scalars plain numbers, keys strings, and anything else (a date) its string.
    """
    from harness.results import jsonable

    sys.stdout.write(json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command_at = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    debug = "--debug" in argv[:command_at]  # a global option: before the command
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as exc:
        if debug:
            raise
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    except InputError as exc:
        if debug:
            raise
        print(exc.render(), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("dualpath: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
