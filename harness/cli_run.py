"""`dualpath run SCENARIO.yaml [--set key=value ...] [-o DIR]`: run every system of a scenario and
write the results directory (DESIGN.md)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from traces.errors import InputError

DEFAULT_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "paper" / "offline-ds660b-64k.yaml"


def register(sub) -> None:
    r = sub.add_parser("run", help="run a scenario on its backend and write a results directory",
                       description="Run every system of a scenario (default: the paper's offline DS 660B 64K "
                       "experiment on the simulator) and write results/<name>-<time>/.")
    r.add_argument("scenario", nargs="?", default=str(DEFAULT_SCENARIO), help="scenario YAML (default: %(default)s)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override any scenario key, e.g. --set trace.synth.agents=256; repeatable")
    r.add_argument("-o", "--output", help="results directory (default: results/<name>-<YYYYmmdd-HHMMSS>)")
    r.add_argument("--json", action="store_true", help="print summary.json on stdout (only that)")
    r.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from harness import metrics
    from harness.arrivals import schedule
    from harness.cli import emit_json
    from harness.progress import progress
    from harness.results import ResultsWriter, new_run_dir
    from harness.scenario import load_scenario
    from harness.trace_input import scenario_trace

    scenario = load_scenario(args.scenario, args.overrides)
    backend = scenario["backend"]
    if backend != "sim":
        raise InputError(f"backend {backend!r} is not available yet in this version (allowed: sim)",
                         path=args.scenario, field="backend")
    from harness import backend_sim

    try:
        backend_sim.sim_constants(scenario)  # bad `sim:` keys fail before anything runs
    except InputError as exc:
        raise exc.at(args.scenario) from None
    with progress(None, "trace", unit="agent") as advance:
        trace = scenario_trace(scenario["trace"], progress=advance)
    start_s, not_before = schedule(scenario["arrival"], trace, int(scenario["seed"]))
    run_dir = Path(args.output) if args.output else new_run_dir(Path("results"), scenario["name"])
    rounds = trace.num_rounds
    with ResultsWriter(run_dir, scenario) as writer:
        for system in scenario["systems"]:
            writer.begin_system(system)
            t0 = time.perf_counter()
            with progress(rounds, f"{system:<12}", unit="req") as advance:
                facts = backend_sim.run_system({**scenario, "_path": args.scenario}, trace, system, start_s,
                                               not_before, writer, advance)
            wall = time.perf_counter() - t0
            facts["wall_s"] = wall
            facts["sim_requests_per_wall_s"] = rounds / wall if wall > 0 else None
            writer.end_system(facts)
    summary = writer.summary()
    if args.json:
        emit_json(summary)
    else:
        print(metrics.format_table(summary["systems"]))
        print(f"results: {run_dir}", file=sys.stderr)
    return 0
