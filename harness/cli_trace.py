"""`dualpath trace ...`: synth, import, export, stats."""
from __future__ import annotations

import argparse
import math
import sys
import time

from traces.errors import InputError

SYNTH_FLAGS = {  # flag -> SynthParams field
    "--turns-mean": "turns_mean",
    "--append-mean": "append_mean",
    "--gen-mean": "gen_mean",
    "--max-context": "max_context",
    "--tool-latency-mean": "tool_latency_mean",
    "--block-size": "block_size",
}
# parameters that do not change Table 2's means: a preset's trace with other values still compares with the paper
NOT_IN_TABLE2 = ("tool_latency_mean", "tool_latency_sigma", "block_size")


def whole_number(text: str) -> int:
    """An integer flag that also takes `3e7` or `1_000` (a whole number however written), so that a large
    count is refused by its bound rather than by its spelling."""
    import argparse
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def register(sub) -> None:
    trace = sub.add_parser("trace", help="make, convert and inspect agentic traces")
    tsub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")
    tsub.required = True

    s = tsub.add_parser("synth", help="generate agentic trajectories (paper presets or your own means)",
                        description="Generate agentic trajectories. Targets (turns, append, gen means) are "
                        "the realised means of the trace, as `trace stats` reports them.")
    s.add_argument("--preset", help="paper-32k | paper-48k | paper-64k (paper Table 2) | smoke (4 rounds of "
                   "~200 + 64 tokens in a 4K context, for CI and laptops)")
    s.add_argument("--agents", type=whole_number, required=True, help="number of agents (trajectories)")
    s.add_argument("--seed", type=int, default=1, help="random seed (same seed, same bytes)")
    s.add_argument("-o", "--output", required=True, help="output file, .parquet or .jsonl")
    for flag, name in SYNTH_FLAGS.items():
        s.add_argument(flag, dest=name, help=f"override the preset's {name}")
    s.add_argument("--set", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="override any generator parameter (see README); repeatable")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.set_defaults(func=cmd_synth)

    i = tsub.add_parser("import", help="convert a Mooncake or Bailian JSONL trace into our format")
    i.add_argument("file")
    i.add_argument("--format", default="mooncake", choices=["mooncake", "bailian"])
    i.add_argument("--layout", default="auto", choices=["auto", "whole", "delta"],
                   help="Mooncake sessions: whole prompts per row (ours), delta rows (AIPerf's: new input "
                   "only), or auto: detected per session (default)")
    i.add_argument("--block-size", type=int, default=None, help="tokens per hash-id block (default 512 for "
                   "Mooncake, 16 for Bailian)")
    i.add_argument("-o", "--output", required=True, help="output file, .parquet or .jsonl")
    i.add_argument("--json", action="store_true", help="print the statistics as JSON")
    i.set_defaults(func=cmd_import)

    e = tsub.add_parser("export", help="write our trace as Mooncake rows (+session_id, round)")
    e.add_argument("file")
    e.add_argument("--format", default="mooncake", choices=["mooncake"])
    e.add_argument("--layout", default="whole", choices=["whole", "delta"],
                   help="whole: each row the round's whole prompt (default); delta: AIPerf's sessions (first "
                   "row timestamp and whole prompt, later rows delay ms and the new input only)")
    e.add_argument("--block-size", type=int, default=None, help="tokens per hash-id block (default: the "
                   "trace's block_size, 512)")
    e.add_argument("-o", "--output", required=True, help="output file, .jsonl")
    e.set_defaults(func=cmd_export)

    st = tsub.add_parser("stats", help="statistics of a trace (Table 2 means, lengths, hit rate)")
    st.add_argument("file")
    st.add_argument("--format", default="auto", choices=["auto", "parquet", "jsonl", "mooncake", "bailian"])
    st.add_argument("--block-size", type=int, default=None, help="Mooncake or Bailian block size (default 512 "
                    "and 16; Parquet and JSONL traces carry their own)")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=cmd_stats)


def _positive(value, field):
    if value is not None and value <= 0:
        raise InputError(f"must be > 0, got {value}", field=field)


def _number(text: str, name: str, field: str) -> int | float:
    """A parameter's value from the command line: a float, or an integer where it is written as one (the
    generator takes whole-number floats for its integer fields and refuses others)."""
    from traces.synth import INT_FIELDS

    try:
        return int(text) if name in INT_FIELDS and text.strip().lstrip("+-").isdigit() else float(text)
    except ValueError:
        named = f"{name}: " if field == "--set" else ""
        raise InputError(f"{named}expected a number, got {text!r}", field=field) from None


def synth_params(args: argparse.Namespace):
    from traces.presets import preset
    from traces.synth import SynthParams, params_with

    overrides = {}
    for flag, name in SYNTH_FLAGS.items():
        if getattr(args, name) is not None:
            overrides[name] = _number(getattr(args, name), name, flag)
    for item in args.params:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"expected NAME=VALUE, got {item!r}", field="--set")
        if key not in SynthParams.names():
            raise InputError(f"unknown parameter {key!r} (allowed: {', '.join(SynthParams.names())})",
                             field="--set")
        overrides[key] = _number(value, key, "--set")
    if args.preset:
        base = preset(args.preset)
    else:
        need = ["max_context", "turns_mean", "append_mean", "gen_mean"]
        missing = [n for n in need if overrides.get(n) is None]
        if missing:
            flags = ", ".join("--" + n.replace("_", "-") for n in missing)
            raise InputError(f"without --preset, give {flags}", field="--preset")
        base = SynthParams(**{n: overrides.pop(n) for n in need})
    return params_with(base, **overrides).validate()


def cmd_synth(args) -> int:
    from harness.progress import progress
    from traces.io import output_format, write_trace
    from traces.synth import check_agents, synthesize

    _positive(args.agents, "--agents")
    if args.seed < 0:
        raise InputError(f"must be >= 0, got {args.seed}", field="--seed")
    output_format(args.output)
    params = synth_params(args)
    check_agents(params, args.agents, "--agents")
    t0 = time.perf_counter()
    source = f"synth:{args.preset}" if args.preset else "synth"
    with progress(args.agents, "synth", unit="agent") as advance:
        trace = synthesize(params, args.agents, args.seed, source=source, progress=advance)
    write_trace(trace, args.output)
    elapsed = time.perf_counter() - t0
    print(f"wrote {trace.num_rounds:,} rounds of {args.agents:,} agents to {args.output} in {elapsed:.2f} s",
          file=sys.stderr)
    return _show_stats(trace, args.json, extra={"output": args.output, "seconds": round(elapsed, 3)})


def cmd_import(args) -> int:
    from traces.bailian import import_bailian
    from traces.io import output_format, write_trace
    from traces.mooncake import import_mooncake

    _positive(args.block_size, "--block-size")
    output_format(args.output)
    _not_ours(args.file, args.format)
    if args.format == "bailian":
        if args.layout != "auto":
            raise InputError("applies to Mooncake sessions only (Bailian rows are whole prompts)", field="--layout")
        trace = import_bailian(args.file, block_size=args.block_size)
    else:
        trace = import_mooncake(args.file, block_size=args.block_size, layout=args.layout)
    write_trace(trace, args.output)
    print(f"imported {trace.num_rounds:,} rounds ({trace.meta['agents']} agents) to {args.output}",
          file=sys.stderr)
    return _show_stats(trace, args.json, extra={"output": args.output})


def _not_ours(path: str, fmt: str) -> None:
    """Import reads other tools' rows; one of our own traces is refused with what to do instead."""
    import os

    from traces.io import JSONL_HEADER_KEY, json_lines

    if str(path).endswith(".parquet"):
        what = "Parquet"
    elif os.path.isfile(path):
        first = next((obj for _, obj in json_lines(path)), None)
        if not (isinstance(first, dict) and (JSONL_HEADER_KEY in first or "agent_id" in first)):
            return
        what = "JSONL"
    else:
        return  # the importer says what is wrong with it
    raise InputError(f"is already a dualpath trace ({what}), not {fmt} rows: use it directly (`trace: {{path: "
                     f"{path}}}` in a scenario, `dualpath trace stats|export {path}`)", path=path)


def cmd_export(args) -> int:
    from traces.io import read_trace
    from traces.mooncake import export_mooncake

    _positive(args.block_size, "--block-size")
    trace = read_trace(args.file)
    export_mooncake(trace, args.output, block_size=args.block_size, layout=args.layout)
    print(f"exported {trace.num_rounds:,} rounds ({args.layout} layout) to {args.output}", file=sys.stderr)
    return 0


def cmd_stats(args) -> int:
    from traces.io import detect_format, read_trace

    _positive(args.block_size, "--block-size")
    fmt = args.format
    if args.block_size is not None:
        fmt = detect_format(args.file) if fmt == "auto" else fmt
        if fmt not in ("mooncake", "bailian"):
            raise InputError(f"applies to Mooncake and Bailian rows only; a {fmt} trace states its own block size",
                             field="--block-size")
    trace = read_trace(args.file, fmt, block_size=args.block_size)
    return _show_stats(trace, args.json)


def _show_stats(trace, as_json: bool, extra: dict | None = None) -> int:
    from harness.cli import emit_json
    from traces.presets import TABLE2
    from traces.stats import FIELDS, format_stats, trace_stats

    stats = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in trace_stats(trace).items()}
    if as_json:
        emit_json({**stats, **(extra or {})})  # no NaN or Infinity: they are not JSON
        return 0
    table = format_stats(stats)
    preset = _paper_preset(trace)
    if preset in TABLE2:
        paper = dict(zip(("turns_mean", "append_mean", "gen_mean", "total_mean", "context_mean"), TABLE2[preset]))
        lines = []
        for key, line in zip(FIELDS, table.splitlines()):
            if key in paper:
                line += f"   paper {paper[key]:>7,}  ({stats[key] / paper[key] - 1:+.1%})"
            lines.append(line)
        table = "\n".join(lines)
    print(table)
    return 0


def _paper_preset(trace) -> str | None:
    """The paper preset a synthetic trace was made with, if none of its Table 2 parameters was overridden."""
    from traces.presets import PRESETS

    name = str(trace.meta.get("source", "")).removeprefix("synth:")
    params = trace.meta.get("params")
    if name not in PRESETS or not isinstance(params, dict):
        return None
    same = all(params.get(k) == v for k, v in PRESETS[name].as_dict().items() if k not in NOT_IN_TABLE2)
    return name if same else None
