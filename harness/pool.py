"""Run many points (sweep points, or a suite's scenarios) `-j N` at a time on a process pool or on Ray, each
into its own results directory, and keep `index.parquet` (one row per point and system) up to date after
every point, so an interrupted run keeps what finished and `--resume` runs only the points left.

A point is a task: {scenario, point, keys, path, overrides, dir, capacity, cost}. It runs `dualpath run` in a
worker (harness/cli_run.py's cmd_run, output in DIR/run.log); a point that fails is a row with its status
and error, and the others go on. Ray is the field's scheduler for this; we build none of our own.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import pandas as pd

from traces.errors import InputError

EXECUTORS = ("process", "ray")
RAY_HINT = "the ray executor needs Ray: pip install -e '.[ray]'"
FINISHED = "ok"  # a point whose summary.json says this is not run again by --resume
HEADLINE = {"jct_s": "makespan_jct_s", "ttft_p50_s": "latency.ttft_s.p50", "ttft_p99_s": "latency.ttft_s.p99",
            "tpot_p50_s": "latency.tpot_s.p50", "prompt_tokens_per_s": "throughput.prompt_tokens_per_s",
            "snic_balance": "snic_balance", "capacity_aps": "capacity_aps"}


def add_arguments(p) -> None:
    """The options of a run of many points (`dualpath run` of a sweep, `dualpath suite`)."""
    from harness.cli_run import positive_int
    p.add_argument("-j", "--jobs", type=positive_int, default=1, metavar="N",
                   help="points run at a time (default 1)")
    p.add_argument("--executor", choices=EXECUTORS, default="process",
                   help="process: a local process pool (default); ray: Ray tasks (pip install -e '.[ray]')")
    p.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (else a local one is started "
                   "and stopped); the output directory must be on storage every node sees")
    p.add_argument("--resume", action="store_true", help="skip the points the output directory holds finished")


# ----- one point, in a worker ---------------------------------------------------------------------------
def summary_status(run_dir: Path) -> str | None:
    from harness.results import load_summary
    try:
        return load_summary(run_dir / "summary.json").get("status")
    except (InputError, OSError, ValueError):
        return None


def rows_for(task: dict, status: str, error: str = "") -> list[dict]:
    """The index rows of a point: one per system (from its summary.json when there is one)."""
    from harness.expected import ours
    from harness.results import load_summary

    base = {"scenario": task["scenario"], "point": task["point"], **task["keys"], "path": task["dir"]}
    run_dir = Path(task["dir"])
    summary = {}
    if (run_dir / "summary.json").is_file():
        with contextlib.suppress(InputError, OSError, ValueError):
            summary = load_summary(run_dir / "summary.json")
    systems = list((summary.get("systems") or summary.get("capacity") or {}))
    if not systems:
        return [{**base, "system": None, "status": status, "error": error}]
    return [{**base, "system": s, "status": status, "error": error,
             **{col: ours(summary, s, metric) for col, metric in HEADLINE.items()}} for s in systems]


def run_point(task: dict) -> list[dict]:
    """Run one point into task['dir'] (removing what an unfinished earlier try left) and return its rows."""
    os.environ["DUALPATH_PROGRESS"] = "0"
    run_dir = Path(task["dir"])
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    from harness import cli_run

    args = argparse.Namespace(scenario=task["path"], overrides=task["overrides"], output=str(run_dir),
                              capacity=task["capacity"], json=False, repeats=1, report=False,
                              user_overrides=task.get("user_overrides", []))
    error = ""
    with open(run_dir / "run.log", "w", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            rc = cli_run.cmd_run(args)
        except InputError as exc:
            rc, error = 2, exc.render()
        except Exception as exc:  # noqa: BLE001 - a bug in one point is that point's failure, not the sweep's
            traceback.print_exc()
            rc, error = 1, f"{type(exc).__name__}: {exc}"
        if error:
            print(error)
    status = {0: "ok", 130: "interrupted", 143: "interrupted"}.get(rc, "failed")
    if status == "failed" and not error:
        error = _last_error(run_dir / "run.log")
    return rows_for(task, status, error)


def _last_error(log: Path) -> str:
    lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "failed")


def _ignore_sigint() -> None:  # workers: Ctrl-C is the parent's to handle (it stops them with SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----- the index ----------------------------------------------------------------------------------------
def write_index(rows: list[dict], path: Path) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in frame.columns:  # a key whose values mix types (a number and a name) is stored as text
        kinds = {type(v) for v in frame[col] if v is not None and not (isinstance(v, float) and pd.isna(v))}
        if len(kinds) > 1 and not kinds <= {int, float}:
            frame[col] = frame[col].map(lambda v: None if v is None else str(v))
        elif kinds and kinds <= {list, dict}:
            frame[col] = frame[col].map(str)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return frame


# ----- the executors ------------------------------------------------------------------------------------
def run_all(tasks: list[dict], index_path: Path, jobs: int, executor: str, ray_address: str | None,
            resume: bool) -> tuple[pd.DataFrame, dict]:
    """Run every task not finished (all of them without `resume`); returns (index, counts)."""
    from harness.progress import progress

    done_rows: dict[str, list[dict]] = {}
    todo = []
    for t in tasks:
        if resume and summary_status(Path(t["dir"])) == FINISHED:
            done_rows[t["dir"]] = rows_for(t, "ok")
        else:
            todo.append(t)
    todo.sort(key=lambda t: -t.get("cost", 0.0))  # the largest first (the index keeps the tasks' order)
    counts = {"points": len(tasks), "skipped": len(done_rows), "ran": 0}
    order = [t["dir"] for t in tasks]

    def record(task: dict, rows: list[dict]) -> None:
        done_rows[task["dir"]] = rows
        counts["ran"] += 1
        write_index([r for d in order if d in done_rows for r in done_rows[d]], index_path)

    interrupted = False
    with progress(len(todo), "points", unit="point") as advance:
        try:
            (_run_ray if executor == "ray" else _run_processes)(todo, jobs, ray_address, record, advance)
        except KeyboardInterrupt:
            interrupted = True
    for t in tasks:  # the points never started are rows too, so the index says what is left
        if t["dir"] not in done_rows:
            done_rows[t["dir"]] = rows_for(t, "not run")
    frame = write_index([r for d in order for r in done_rows[d]], index_path)
    counts["interrupted"] = interrupted
    return frame, counts


def _run_processes(todo, jobs, _address, record, advance) -> None:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    if not todo:
        return
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), initializer=_ignore_sigint)
    futures = {pool.submit(run_point, t): t for t in todo}
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                record(futures[f], _result(f, futures[f], BrokenProcessPool))
                advance(1)
    except KeyboardInterrupt:
        for f in pending:
            f.cancel()
        for proc in list((pool._processes or {}).values()):  # a running point writes its summary on SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        for f in pending:
            if not f.cancelled():
                with contextlib.suppress(Exception):
                    record(futures[f], _result(f, futures[f], BrokenProcessPool, timeout=60))
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(future, task, broken, timeout=None) -> list[dict]:
    try:
        return future.result(timeout=timeout)
    except broken:
        return rows_for(task, "interrupted" if summary_status(Path(task["dir"])) == "interrupted" else "failed",
                        "the worker process died (killed, or out of memory)")
    except Exception as exc:  # noqa: BLE001
        return rows_for(task, "failed", f"{type(exc).__name__}: {exc}")


def ray_module():
    try:
        import ray
    except ImportError:
        raise InputError(RAY_HINT, field="--executor") from None
    return ray


def _run_ray(todo, jobs, address, record, advance) -> None:
    ray = ray_module()
    if not todo:
        return
    started = not ray.is_initialized()
    if started:
        import logging
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=min(jobs, len(todo)), include_dashboard=False, **quiet)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_point)
    queue, running = list(todo), {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                t = queue.pop(0)
                running[remote.remote(t)] = t
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                t = running.pop(ref)
                try:
                    rows = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task that raised or whose worker died
                    rows = rows_for(t, "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                record(t, rows)
                advance(1)
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref)  # KeyboardInterrupt in the task: the point writes its summary (interrupted)
        deadline = time.monotonic() + 60
        for ref, t in running.items():
            with contextlib.suppress(Exception):
                record(t, ray.get(ref, timeout=max(1.0, deadline - time.monotonic())))
        raise
    finally:
        if started:
            ray.shutdown()


def report_exit(counts: dict, frame: pd.DataFrame, index_path: Path) -> int:
    """Print how the points went (stderr) and return the exit code: 130 interrupted, 1 a point failed."""
    by_point = frame.drop_duplicates("path") if len(frame) else frame
    failed = by_point[by_point["status"] == "failed"] if len(frame) else by_point
    for _, row in failed.iterrows():
        print(f"error: point {row['scenario']}/{row['point']}: {row['error']} (log: {row['path']}/run.log)",
              file=sys.stderr)
    now = int(((by_point["status"] == "ok").sum() if len(frame) else 0)) - counts["skipped"]
    left = counts["points"] - now - counts["skipped"] - len(failed)
    print(f"points: {counts['points']} ({now} finished now, {counts['skipped']} already finished, "
          f"{len(failed)} failed{f', {left} left' if left else ''}); index: {index_path}", file=sys.stderr)
    if counts["interrupted"]:
        print("dualpath: interrupted: kept every finished point; --resume runs the rest", file=sys.stderr)
        return 130
    return 1 if len(failed) else 0
