"""`dualpath run SCENARIO.yaml [--set key=value ...] [-o DIR] [--capacity]`: run every system of a scenario
on its backend (`sim`: the simulator; `http`: an OpenAI-compatible endpoint) and write the results
directory (DESIGN.md); with `--capacity`, search each system's largest Poisson agent rate within the
SLO instead (harness/capacity.py)."""
from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

from engines.contract import BACKENDS
from traces.errors import InputError

TABLE_LEGEND = ("(requests ok/total; JCT: until the last agent ends; SNIC bal: max/avg of storage-NIC read bytes over "
                "nodes per telemetry window, 1 = even; attn bal: max/avg of attention time over a prefill group's "
                "GPUs per step; hit: cached/prompt tokens)")
DEFAULT_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "paper" / "offline-ds660b-64k.yaml"


def register(sub) -> None:
    r = sub.add_parser("run", help="run a scenario on its backend and write a results directory",
                       description="Run every system of a scenario (default: the paper's offline DS 660B 64K "
                       "experiment on the simulator) and write results/<name>-<time>/.")
    r.add_argument("scenario", nargs="?", default=str(DEFAULT_SCENARIO), help="scenario YAML (default: %(default)s)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override any scenario key, e.g. --set trace.synth.agents=256; repeatable")
    r.add_argument("-o", "--output", help="results directory (default: results/<name>-<YYYYmmdd-HHMMSS>)")
    r.add_argument("--capacity", action="store_true",
                   help="search each system's largest Poisson agent arrival rate within the scenario's SLO")
    r.add_argument("--json", action="store_true", help="print summary.json on stdout (only that)")
    r.add_argument("--repeats", type=positive_int, default=1, metavar="N",
                   help="run each system N times into the same results directory (column `repeat`; the summary "
                   "per repeat and pooled), for `dualpath gate`'s statistics on noisy backends (default 1)")
    r.add_argument("--report", action="store_true", help="then write report.md, report.html and figures/ "
                   "into the results directory (dualpath report)")
    from harness import pool  # a scenario with sweep:/zip: runs every point (harness/cli_suite.py)
    pool.add_arguments(r)
    r.set_defaults(func=cmd_run)


def positive_int(text: str) -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def backend_module(scenario: dict, path: str):
    backend = scenario["backend"]
    if backend == "sim":
        from harness import backend_sim
        try:
            backend_sim.sim_constants(scenario)  # bad `sim:` keys fail before anything runs
        except InputError as exc:
            raise exc.at(path) from None
        return backend_sim
    if backend == "http":
        from harness import backend_http
        try:
            backend_http.driver_config(scenario)  # a missing API key fails before anything runs
        except InputError as exc:
            raise exc.at(path) from None
        return backend_http
    if backend == "live":  # issue 14
        from harness import backend_live
        try:
            backend_live.live_settings(scenario)
        except InputError as exc:
            raise exc.at(path) from None
        return backend_live
    raise InputError(f"backend {backend!r} is not available in this version (allowed: {', '.join(BACKENDS)})",
                     path=path, field="backend")


def cmd_run(args) -> int:
    from harness.scenario import load_scenario, locate_error

    scenario = load_scenario(args.scenario, args.overrides)
    from harness.sweep import is_sweep
    if is_sweep(scenario):
        from harness.cli_suite import run_sweep
        return run_sweep(args, scenario)
    for flag, on in (("--resume", getattr(args, "resume", False)),
                     ("--executor", getattr(args, "executor", "process") != "process"),
                     ("--ray-address", getattr(args, "ray_address", None))):
        if on:
            raise InputError(f"{flag} is for scenarios with sweep: or zip: (this one has neither)", field=flag)
    try:
        return _run_loaded(args, scenario)
    except InputError as exc:  # a key's problem found after loading: blame its line (or --set)
        raise locate_error(exc, args.scenario, args.overrides) from None


def _run_loaded(args, scenario: dict) -> int:
    from harness.results import new_run_dir

    backend = backend_module(scenario, args.scenario)

    made: list[Path] = []

    def run_dir() -> Path:  # made once the inputs are known good: a bad trace leaves no empty directory
        made.append(Path(args.output) if args.output else new_run_dir(Path("results"), scenario["name"]))
        return made[-1]
    terminated = on_sigterm_interrupt()
    try:
        if args.capacity:
            if args.repeats > 1:
                raise InputError("--repeats applies to runs, not to --capacity", field="--repeats")
            rc = run_capacity(args, scenario, backend, run_dir)
            return 143 if rc == 130 and terminated else rc
        return run_systems(args, scenario, backend, run_dir)
    except KeyboardInterrupt:  # the results writer has written the summary (status interrupted) and kept every row
        print(f"dualpath: {'terminated' if terminated else 'interrupted'}"
              + (": kept every request measured" if made else " before anything was written"), file=sys.stderr)
        if made:
            print(f"results: {made[-1]}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        terminated.restore()


def run_systems(args, scenario: dict, backend, make_run_dir) -> int:
    from harness import metrics
    from harness.arrivals import schedule
    from harness.cli import emit_json
    from harness.progress import progress
    from harness.results import ResultsWriter
    from harness.run_limits import RunLimitExceeded
    from harness.trace_input import scenario_trace

    with progress(None, "trace", unit="agent") as advance:
        trace = located(lambda: scenario_trace(scenario["trace"], progress=advance), scenario, args.scenario)
    start_s, not_before = schedule(scenario["arrival"], trace, int(scenario["seed"]))
    if scenario["backend"] == "sim":
        backend.check({**scenario, "_path": args.scenario}, trace, start_s)
    else:
        backend.check({**scenario, "_path": args.scenario}, trace)
    rounds = trace.num_rounds
    run_dir = make_run_dir()
    failures: list[str] = []
    repeats = getattr(args, "repeats", 1)
    with ResultsWriter(run_dir, scenario) as writer:
        if scenario["backend"] == "sim":
            from harness.attribution import profiles
            writer.meta["profiles"] = profiles(scenario)
        for repeat, system in ((r, s) for r in range(repeats) for s in scenario["systems"]):
            writer.begin_system(system, repeat)
            t0 = time.perf_counter()
            label = system if repeats == 1 else f"{system} #{repeat + 1}"
            try:
                with progress(rounds, f"{label:<12}", unit="req") as advance:
                    facts = backend.run_system({**scenario, "_path": args.scenario}, trace, system, start_s,
                                               not_before, writer, advance)
            except RunLimitExceeded as exc:  # a bound no check could see in advance: keep what was measured
                writer.close("aborted")
                failures.append(f"error: {system}: {exc}; kept every row measured")
                break
            wall = time.perf_counter() - t0
            facts["wall_s"] = wall
            if scenario["backend"] == "sim":
                facts["sim_requests_per_wall_s"] = rounds / wall if wall > 0 else None
            driver = facts.get("driver") or {}
            complete = not driver or (not driver.get("aborted") and not driver.get("requests_failed")
                                      and driver.get("requests_sent") == rounds)
            from harness.attribution import attribute  # every backend (http: from its scraped metrics)
            frames = writer.frames()
            facts.update(attribute(scenario, frames["requests"], frames["agents"], frames["links"],
                                   frames["engines"], system))
            summary = writer.end_system(facts, complete=complete, frames=frames)
            del frames
            for warning in summary.get("warnings", []) + list(driver.get("warnings") or []):
                print(f"{system}: warning: {warning}", file=sys.stderr)
            failure = run_failure(system, summary, rounds, scenario)
            if failure:
                failures.append(failure)
            if driver.get("aborted"):
                writer.close("aborted")  # the endpoint kept failing: the systems after it are not run
                break
    summary = writer.summary()
    if args.json:
        emit_json(summary)
    else:
        print(metrics.format_table(summary["systems"]))
        print(TABLE_LEGEND)
        from harness.attribution import ladder_lines, limited_line
        for line in [limited_line(k, v) for k, v in summary["systems"].items()] + ladder_lines(summary["systems"]):
            if line:
                print(line)
        from harness.expected import compare, format_rows
        if scenario.get("expected"):  # ours vs the paper's values the scenario carries
            print("\n" + format_rows(compare(scenario["expected"], summary), changed=_user_set(args)))
    if getattr(args, "report", False):
        from harness.cli_report import write_report
        write_report([run_dir], run_dir)
    for line in failures:
        print(line, file=sys.stderr)
    print(f"results: {run_dir}", file=sys.stderr)
    return 1 if failures else 0


def _user_set(args) -> bool:
    """Whether the user's --set changed the scenario (a sweep point's own keys do not count); unknown (a
    caller such as `dualpath compare`, which changes the hardware) counts as changed."""
    given = getattr(args, "user_overrides", getattr(args, "overrides", None))
    return given is None or bool(given)


def run_failure(system: str, summary: dict, rounds: int, scenario: dict) -> str | None:
    """One error line when a system aborted or completed less than abort.min_ok_share of its requests."""
    from harness.driver import ABORT_DEFAULTS

    min_ok = float((scenario.get("abort") or {}).get("min_ok_share", ABORT_DEFAULTS["min_ok_share"]))
    driver = summary.get("driver") or {}
    req = summary["counts"]["requests"]
    ok, failed, unsent = req["ok"], req["total"] - req["ok"], rounds - req["total"]
    if not driver.get("aborted") and (rounds == 0 or ok >= min_ok * rounds):
        return None
    counts = f"{ok} of {rounds} requests completed, {failed} failed" + (f", {unsent} not sent" if unsent > 0 else "")
    why = driver.get("aborted") or (f"fewer than abort.min_ok_share ({min_ok:g}) of its requests completed; "
                                    f"commonest error: {driver.get('commonest_error')}")
    return f"error: {system}: {why}; {counts}"


class on_sigterm_interrupt:  # noqa: N801 (used like a function)
    """SIGTERM does what Ctrl-C does (the run stops, the summary is written, every row is kept); the
    instance is true once SIGTERM came, so the command exits 143 instead of 130."""

    def __init__(self):
        self.came = False
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave SIGTERM alone
            self.previous = None

    def _handle(self, signum, frame) -> None:
        self.came = True
        handler = signal.getsignal(signal.SIGINT)  # asyncio's while a loop runs, else KeyboardInterrupt
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    def __bool__(self) -> bool:
        return self.came

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def located(make, scenario: dict, path: str):
    """Run `make()`; an InputError from the trace generator names the scenario file and trace key."""
    try:
        return make()
    except InputError as exc:
        if exc.path is not None:
            raise
        prefix = "trace.synth." if "synth" in scenario["trace"] else "trace."
        raise InputError(exc.problem, path=path, field=prefix + exc.field if exc.field else "trace") from None


def run_capacity(args, scenario: dict, backend, make_run_dir) -> int:
    import pandas as pd

    from harness import capacity
    from harness.arrivals import agent_start_times
    from harness.cli import emit_json
    from harness.results import claim_run_dir, run_meta, write_json
    from harness.run_limits import RunLimitExceeded
    from harness.trace_input import first_agents, scenario_trace
    from engines.sim import MemorySink

    slo = scenario.get("slo") or {}
    if not slo.get("ttft_s") and not slo.get("tpot_s"):
        raise InputError("--capacity needs slo.ttft_s and/or slo.tpot_s", path=args.scenario, field="slo")
    cfg = capacity.settings(scenario)
    from harness.run_limits import check_capacity
    try:
        check_capacity(scenario, cfg)
    except InputError as exc:
        raise exc.at(args.scenario) from None
    base_trace = None if "synth" in scenario["trace"] else located(lambda: scenario_trace(scenario["trace"]),
                                                                    scenario, args.scenario)
    if base_trace is not None:
        backend.check({**scenario, "_path": args.scenario}, base_trace)
    run_dir = claim_run_dir(make_run_dir(), scenario)
    results: dict[str, dict] = {}
    summary = {"run_id": run_dir.name, "status": "running", "capacity": results,
               "meta": {**run_meta(scenario, None), "settings": cfg}}

    def save(status: str) -> None:
        """capacity.csv and summary.json as they stand: written after every probe, so an interrupted
        search keeps every probe it finished."""
        table = pd.DataFrame([{"system": name, **p} for name, r in results.items() for p in r["probes"]])
        tmp = run_dir / ".capacity.csv.tmp"
        table.to_csv(tmp, index=False)
        tmp.replace(run_dir / "capacity.csv")
        summary["status"] = status
        for r in results.values():
            r["capacity_kind"] = capacity.outcome(r["capacity_aps"], r["probes"], cfg)
        first, second = (list(results) + [None, None])[:2]
        summary.pop("capacity_ratio", None)
        summary.pop("capacity_ratio_kind", None)
        if second is not None:
            value, kind = capacity.ratio(*((results[k]["capacity_aps"], results[k]["capacity_kind"])
                                            for k in (first, second)))
            if value is not None:
                summary["capacity_ratio"] = {f"{second}/{first}": value}
                summary["capacity_ratio_kind"] = kind
        write_json(run_dir / "summary.json", summary)

    def probe_for(system: str):
        def run_until(rate: float, horizon: float):
            needed = math.ceil(rate * horizon) + 1
            if base_trace is None:
                tcfg = {**scenario["trace"], "synth": {**scenario["trace"]["synth"], "agents": needed}}
                trace = located(lambda: scenario_trace(tcfg), scenario, args.scenario)
            else:
                trace = first_agents(base_trace, needed)
            n = len(trace.agent_starts())
            start = agent_start_times({"mode": "poisson", "rate_aps": rate, "seed": scenario["arrival"].get("seed")},
                                      n, int(scenario["seed"]))
            shortfall = None
            if n < needed and start[-1] < horizon:
                shortfall = (f"the trace has {n} agents: at {rate:g} agents/s they stop arriving at "
                             f"{start[-1]:.0f} s, before the {horizon:.0f} s horizon")
            sink = MemorySink()
            backend.run_system({**scenario, "_path": args.scenario}, trace, system, start, None, sink, None,
                               until_s=horizon + cfg["window_s"])
            req = pd.DataFrame(sink.tables.get("requests", {"t_scheduled": [], "t_first_token": [], "t_done": [],
                                                            "output_tokens": [], "status": []}))
            return req, shortfall
        return lambda rate: capacity.probe(lambda horizon: run_until(rate, horizon), rate, slo, cfg)

    def report(system: str, p: capacity.Probe) -> None:
        results[system]["probes"].append(vars(p))
        if p.passed:
            best = results[system]["capacity_aps"]
            results[system]["capacity_aps"] = p.rate_aps if best is None else max(best, p.rate_aps)
        print(capacity.format_probe(system, p), file=sys.stderr, flush=True)
        save("running")

    try:
        for system in scenario["systems"]:
            results[system] = {"capacity_aps": None, "probes": []}
            best, _ = capacity.search(probe_for(system), cfg, report=lambda p, s=system: report(s, p))
            results[system]["capacity_aps"] = best
    except RunLimitExceeded as exc:  # a probe outran the telemetry bound: keep every probe finished
        save("aborted")
        print(f"error: {exc}; kept {sum(len(r['probes']) for r in results.values())} probe(s)", file=sys.stderr)
        print(f"results: {run_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        save("interrupted")
        print(f"interrupted: kept {sum(len(r['probes']) for r in results.values())} probe(s) in {run_dir}",
              file=sys.stderr)
        return 130
    save("ok")
    if args.json:
        emit_json(summary)
    else:
        for name, r in results.items():
            print(f"{name:<12} capacity {capacity.describe(r['capacity_aps'], r['capacity_kind'], cfg)} "
                  f"({len(r['probes'])} probes)")
            short = [p for p in r["probes"] if p["short_trace"]]
            if short:
                print(f"{name:<12} note: the trace ran out of agents at {min(p['rate_aps'] for p in short):g} "
                      "agents/s; a longer trace could show a higher capacity", file=sys.stderr)
        kind = summary.get("capacity_ratio_kind")
        for k, v in summary.get("capacity_ratio", {}).items():
            sign = {"lower_bound": ">= ", "upper_bound": "<= ", "approximate": "~"}.get(kind, "")
            note = {"lower_bound": " (a lower bound: the second system passed every probe)",
                    "upper_bound": " (an upper bound: the first system passed every probe)",
                    "approximate": " (approximate: a search did not converge)"}.get(kind, "")
            print(f"capacity ratio {k}: {sign}{v:.2f}{note}")
        if len(results) >= 2 and "capacity_ratio" not in summary:
            print("capacity ratio: not known (both systems passed every probe, or one passed none)")
        if scenario.get("expected"):  # ours vs the paper's values the scenario carries
            from harness.expected import compare, format_rows
            print("\n" + format_rows(compare(scenario["expected"], summary), changed=_user_set(args)))
        print(f"results: {run_dir}", file=sys.stderr)
    return 0
