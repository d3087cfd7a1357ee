"""`dualpath trace ...`: synth, import, export, stats."""
from __future__ import annotations

import argparse
import sys
import time

from traces.errors import InputError

SYNTH_FLAGS = {  # flag -> SynthParams field
    "--turns-mean": ("turns_mean", float),
    "--append-mean": ("append_mean", float),
    "--gen-mean": ("gen_mean", float),
    "--max-context": ("max_context", int),
    "--tool-latency-mean": ("tool_latency_mean", float),
    "--block-size": ("block_size", int),
}


def register(sub) -> None:
    trace = sub.add_parser("trace", help="make, convert and inspect agentic traces")
    tsub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")
    tsub.required = True

    s = tsub.add_parser("synth", help="generate agentic trajectories (paper presets or your own means)",
                        description="Generate agentic trajectories. Targets (turns, append, gen means) are "
                        "the realised means of the trace, as `trace stats` reports them.")
    s.add_argument("--preset", help="paper-32k | paper-48k | paper-64k (paper Table 2)")
    s.add_argument("--agents", type=int, required=True, help="number of agents (trajectories)")
    s.add_argument("--seed", type=int, default=1, help="random seed (same seed, same bytes)")
    s.add_argument("-o", "--output", required=True, help="output file, .parquet or .jsonl")
    for flag, (name, typ) in SYNTH_FLAGS.items():
        s.add_argument(flag, dest=name, type=typ, help=f"override the preset's {name}")
    s.add_argument("--set", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="override any generator parameter (see README); repeatable")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.set_defaults(func=cmd_synth)

    i = tsub.add_parser("import", help="convert a Mooncake JSONL trace into our format")
    i.add_argument("file")
    i.add_argument("--format", default="mooncake", choices=["mooncake"])
    i.add_argument("--block-size", type=int, default=None, help="tokens per hash-id block (default 512)")
    i.add_argument("-o", "--output", required=True, help="output file, .parquet or .jsonl")
    i.add_argument("--json", action="store_true", help="print the statistics as JSON")
    i.set_defaults(func=cmd_import)

    e = tsub.add_parser("export", help="write our trace as Mooncake rows (+session_id, round)")
    e.add_argument("file")
    e.add_argument("--format", default="mooncake", choices=["mooncake"])
    e.add_argument("--block-size", type=int, default=None, help="tokens per hash-id block (default: the "
                   "trace's block_size, 512)")
    e.add_argument("-o", "--output", required=True, help="output file, .jsonl")
    e.set_defaults(func=cmd_export)

    st = tsub.add_parser("stats", help="statistics of a trace (Table 2 means, lengths, hit rate)")
    st.add_argument("file")
    st.add_argument("--format", default="auto", choices=["auto", "parquet", "jsonl", "mooncake"])
    st.add_argument("--block-size", type=int, default=None, help="Mooncake block size (default 512)")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=cmd_stats)


def _positive(value, field):
    if value is not None and value <= 0:
        raise InputError(f"must be > 0, got {value}", field=field)


def synth_params(args: argparse.Namespace):
    from traces.presets import preset
    from traces.synth import SynthParams, params_with

    overrides = {name: getattr(args, name) for name, _ in SYNTH_FLAGS.values()}
    for item in args.params:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"expected NAME=VALUE, got {item!r}", field="--set")
        if key not in SynthParams.names():
            raise InputError(f"unknown parameter {key!r} (allowed: {', '.join(SynthParams.names())})",
                             field="--set")
        try:
            overrides[key] = int(value) if key in ("max_context", "block_size") else float(value)
        except ValueError:
            raise InputError(f"{key}: expected a number, got {value!r}", field="--set") from None
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
    from traces.synth import synthesize

    _positive(args.agents, "--agents")
    output_format(args.output)
    params = synth_params(args)
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
    from traces.io import output_format, write_trace
    from traces.mooncake import import_mooncake

    _positive(args.block_size, "--block-size")
    output_format(args.output)
    trace = import_mooncake(args.file, block_size=args.block_size)
    write_trace(trace, args.output)
    print(f"imported {trace.num_rounds:,} rounds ({trace.meta['agents']} agents) to {args.output}",
          file=sys.stderr)
    return _show_stats(trace, args.json, extra={"output": args.output})


def cmd_export(args) -> int:
    from traces.io import read_trace
    from traces.mooncake import export_mooncake

    _positive(args.block_size, "--block-size")
    trace = read_trace(args.file)
    export_mooncake(trace, args.output, block_size=args.block_size)
    print(f"exported {trace.num_rounds:,} rounds to {args.output}", file=sys.stderr)
    return 0


def cmd_stats(args) -> int:
    from traces.io import read_trace

    _positive(args.block_size, "--block-size")
    trace = read_trace(args.file, args.format, block_size=args.block_size)
    return _show_stats(trace, args.json)


def _show_stats(trace, as_json: bool, extra: dict | None = None) -> int:
    from harness.cli import emit_json
    from traces.presets import TABLE2
    from traces.stats import FIELDS, format_stats, trace_stats

    stats = trace_stats(trace)
    if as_json:
        emit_json({**stats, **(extra or {})})
        return 0
    table = format_stats(stats)
    preset = str(trace.meta.get("source", "")).removeprefix("synth:")
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
