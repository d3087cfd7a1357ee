"""How fast the HTTP driver itself is: dispatch rate and streamed-token ingest, against a null server.

    .venv/bin/python benchmarks/bench_driver.py [--probe-s 10] [--runs 3] [--rate-budget-s 170]
                                                [--no-peer] [--no-profile] [--nice N]

The null server (benchmarks/null_server.py) runs as a separate process pinned to one core; this
process (the driver) is pinned to the other (the less busy one at start), so every driver figure is
the driver on one core.

1. Rate ceiling: constant arrivals of one-round agents (64-token prompts, 16 output tokens) for
   `--probe-s` seconds per rate, doubling 50, 100, 200, ... req/s until two rates in a row fail (or
   the driver cannot keep up at all), then bisecting between the highest passing rate and the next
   failing one (to within 10 %), then re-running the answer until it has `--runs` runs (most must
   pass; the summary gives their medians). A probe passes when the dispatch lag p99 (t_sent -
   t_scheduled) is <= 2 ms, the achieved rate ((sent - 1) / span of t_sent) is within 1 % of the
   requested one, and every request was sent and succeeded. The pacer lag (t_dispatched -
   t_scheduled, the harness's own lag as the driver stamps it) is shown beside it. This machine may be
   shared: the `other` column shows the CPU other processes used during each probe; a failure with
   other > 25 % of a core is marked `noisy` and not counted. A rate passes on its first passing probe
   and fails after two counted failures (at most 3 probes); `--rate-budget-s` bounds the search.
   Then a closed-loop figure: 4,000 short requests due at once, at most 32 in flight (the request
   throughput with no pacing, and the driver's CPU per request).
2. Streamed-token ingest: S concurrent streams of T output tokens each, all started at t = 0; tokens/s =
   sum(output_tokens) / the driver's wall time, median of `--runs`; the driver process's CPU time over
   the same run shows it is one core. References on the same server, same core: bare aiohttp reading
   the bytes (iter_any), bare aiohttp iterating lines, and bare iter_any + split events + json.loads
   (what the driver's reader does, less its bookkeeping).
3. A peer on the same server, if installed: AIPerf (`pip install aiperf` into /tmp/aiperf-venv, never into
   .venv; the script installs it there when it is missing and pip can reach it), at the driver's rate
   ceiling and at the first streaming setting, pinned to the driver's core. AIPerf needs a tokenizer;
   the script trains a small word-level one on AIPerf's bundled Shakespeare text (no network).
4. A cProfile breakdown of the driver (one rate probe, one streaming run), by function.

`--nice -10` raises the driver, server and peer above other work on a shared machine (root only).
Prints tables and a final SUMMARY block. Takes about 4-5 minutes.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import math
import os
import pstats
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from engines.sim import MemorySink
from harness.driver import SPIN_S, Driver, DriverConfig
from traces.presets import PRESETS
from traces.synth import params_with, synthesize

REPO = Path(__file__).resolve().parents[1]
NULL_SERVER = REPO / "benchmarks" / "null_server.py"
AIPERF_VENV = Path(os.environ.get("AIPERF_VENV", "/tmp/aiperf-venv"))
AIPERF_TOK = Path("/tmp/aiperf-tok")

PROMPT_TOKENS, OUTPUT_TOKENS = 64, 16
LAG_P99_MAX_S = 0.002
RATE_TOLERANCE = 0.01
LEAD_S = 0.5                 # the first arrival is scheduled this long after the run starts
RATE_START, RATE_MAX = 50, 25_600
BISECT_TO = 1.10             # stop bisecting when fail / pass <= this
NOISY_PCT = 25.0             # a probe during which other processes used more CPU than this (% of a core)
STREAM_CASES = [(64, 4000), (256, 2000)]


# ----- processes and cores ------------------------------------------------------------------------
def busy_s() -> dict[int, float]:
    """Busy seconds per CPU since boot (everything but idle and iowait), from /proc/stat."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                out[int(name[3:])] = (sum(v[:8]) - v[3] - v[4]) / tick
    return out


def cores() -> tuple[set[int] | None, set[int] | None, dict[int, float]]:
    """(driver core, server core, background load per core): the driver gets the least busy core over
    a 0.5 s sample (another process may be running), the server the next one."""
    cpus = sorted(os.sched_getaffinity(0))
    b0 = busy_s()
    time.sleep(0.5)
    b1 = busy_s()
    load = {c: (b1.get(c, 0) - b0.get(c, 0)) / 0.5 for c in cpus}
    if len(cpus) < 2:
        return None, None, load
    order = sorted(cpus, key=lambda c: (round(load[c], 1), c))
    return {order[0]}, {order[1]}, load


def others_pct(busy0: dict, busy1: dict, wall: float, *own_cpu_s: float) -> float:
    """CPU used by every other process over an interval, in % of one core."""
    total = sum(busy1.values()) - sum(busy0.values())
    return 100 * max(0.0, total - sum(own_cpu_s)) / max(wall, 1e-9)


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (children not included), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NullServer:
    def __init__(self, cpus: set[int] | None):
        self.cpus = cpus
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> "NullServer":
        tmp = tempfile.mkdtemp(prefix="null_server.")
        ready = Path(tmp) / "port"
        cpus = self.cpus
        self.proc = subprocess.Popen(
            [sys.executable, str(NULL_SERVER), "--port", "0", "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        deadline = time.monotonic() + 15
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise SystemExit(f"bench_driver: the null server did not start: {self.proc.stderr.read()}")
            time.sleep(0.02)
        self.port = int(ready.read_text())
        shutil.rmtree(tmp, ignore_errors=True)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=10)
            self.served = err.strip()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----- traces -------------------------------------------------------------------------------------
def one_round_trace(agents: int, prompt: int, gen: int):
    """`agents` one-round agents, each a `prompt`-token prompt and exactly `gen` output tokens."""
    p = params_with(PRESETS["paper-32k"], turns_mean=1, turns_max_ratio=1, append_mean=prompt,
                    first_append_mean=prompt, first_append_sigma=0.0, gen_mean=gen, gen_sigma=0.0,
                    gen_max=max(gen, 1), max_context=max(4096, 2 * (prompt + gen)))
    trace = synthesize(p, agents, seed=1)
    assert (trace.col("gen_tokens") == gen).all() and (trace.col("append_tokens") == prompt).all()
    return trace


# ----- one driver run -----------------------------------------------------------------------------
def run_driver(url: str, trace, start_s: np.ndarray, server: NullServer, *, watchdog_s: float | None = None,
               profile: cProfile.Profile | None = None, max_concurrency: int | None = None) -> dict:
    sink = MemorySink()
    cfg = DriverConfig(url=url, model="null", timeout_s=60.0, max_concurrency=max_concurrency)
    driver = Driver(cfg, trace, "bench", sink, start_s=start_s)

    async def go():
        dog = None
        if watchdog_s is not None:
            async def watchdog():
                await asyncio.sleep(watchdog_s)
                driver.aborted = f"watchdog: still running after {watchdog_s:.0f} s"
                release = getattr(driver.pacer, "release_all", None)  # newer drivers: wake every waiter
                (release or driver.pacer.wake.set)()
            dog = asyncio.create_task(watchdog())
        try:
            return await driver.run()
        finally:
            if dog is not None:
                dog.cancel()

    srv0, sys0 = server.cpu_s(), busy_s()
    cpu0, t0 = time.process_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    facts = asyncio.run(go())["driver"]
    if profile is not None:
        profile.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    srv = server.cpu_s() - srv0
    # the driver freezes the GC for its run (gc.freeze); undo it between runs of this long process
    gc.unfreeze()
    gc.collect()
    req = {k: np.asarray(v) for k, v in sink.tables.get("requests", {}).items() if k in REQ_COLS}
    return {"facts": facts, "req": req, "cpu_s": cpu, "wall_s": wall, "server_cpu_s": srv,
            "others_pct": others_pct(sys0, busy_s(), wall, cpu, srv), "scheduled": len(start_s)}


def pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else math.nan


def timer_overshoot() -> tuple[float, float]:
    """How late asyncio's timed waits wake here (p50, max in ms) over waits of 2-20 ms: the pacer naps in
    shrinking steps until SPIN_S before a deadline and yield-spins the rest (harness/driver.py)."""
    async def go():
        over = []
        for d in np.linspace(0.002, 0.020, 37):
            t0 = time.perf_counter()
            await asyncio.sleep(float(d))
            over.append(time.perf_counter() - t0 - d)
        return np.array(over) * 1e3
    over = asyncio.run(go())
    return float(np.median(over)), float(over.max())


REQ_COLS = ("t_scheduled", "t_dispatched", "t_sent", "t_first_token", "t_done", "output_tokens", "status")


# ----- 1. rate ceiling ----------------------------------------------------------------------------
def rate_probe(url: str, rate: float, duration: float, server: NullServer) -> dict:
    n = max(2, int(round(rate * duration)))
    trace = one_round_trace(n, PROMPT_TOKENS, OUTPUT_TOKENS)
    start = LEAD_S + np.arange(n) / rate
    r = run_driver(url, trace, start, server, watchdog_s=LEAD_S + duration + 5.0)
    q = r["req"]
    sent = len(q.get("t_sent", []))
    t_sent = q["t_sent"].astype(float) if sent else np.zeros(0)
    pacer = (q["t_dispatched"] - q["t_scheduled"]).astype(float) if sent else np.zeros(0)
    disp = (t_sent - q["t_scheduled"]) if sent else np.zeros(0)
    errors = int((q["status"] != "ok").sum()) if sent else 0
    span = float(t_sent.max() - t_sent.min()) if sent > 1 else math.nan
    achieved = (sent - 1) / span if sent > 1 and span > 0 else math.nan
    out = {
        "rate": rate, "scheduled": n, "sent": sent, "errors": errors, "achieved": achieved,
        "pacer_p50_ms": pct(pacer, 50) * 1e3, "pacer_p99_ms": pct(pacer, 99) * 1e3,
        "disp_p50_ms": pct(disp, 50) * 1e3, "disp_p99_ms": pct(disp, 99) * 1e3,
        "disp_max_ms": float(disp.max()) * 1e3 if sent else math.nan,
        "cpu_pct": 100 * r["cpu_s"] / max(r["facts"]["wall_s"], 1e-9),
        "srv_pct": 100 * r["server_cpu_s"] / max(r["facts"]["wall_s"], 1e-9),
        "cpu_us_per_req": 1e6 * r["cpu_s"] / max(sent, 1), "others_pct": r["others_pct"],
    }
    why = []
    if sent < n:
        why.append(f"{n - sent} not sent")
    if errors:
        why.append(f"{errors} errors")
    if not out["disp_p99_ms"] <= LAG_P99_MAX_S * 1e3:
        why.append("lag p99")
    if not abs(achieved / rate - 1) <= RATE_TOLERANCE:
        why.append("rate")
    out["passed"] = not why
    out["noisy"] = out["others_pct"] > NOISY_PCT
    out["why"] = ",".join(why) or "-"
    return out


RATE_HEAD = (f"{'requested':>9} {'achieved':>9} {'ach/req':>7} {'sent':>6} {'err':>4} "
             f"{'pacer p50':>9} {'pacer p99':>9} {'disp p50':>8} {'disp p99':>8} {'disp max':>8} "
             f"{'drv cpu':>7} {'srv cpu':>7} {'other':>6}  verdict")


def rate_line(p: dict) -> str:
    return (f"{p['rate']:>9.0f} {p['achieved']:>9.1f} {p['achieved'] / p['rate']:>7.4f} {p['sent']:>6d} "
            f"{p['errors']:>4d} {p['pacer_p50_ms']:>7.3f}ms {p['pacer_p99_ms']:>7.3f}ms "
            f"{p['disp_p50_ms']:>6.3f}ms {p['disp_p99_ms']:>6.3f}ms {p['disp_max_ms']:>6.1f}ms "
            f"{p['cpu_pct']:>6.0f}% {p['srv_pct']:>6.0f}% {p['others_pct']:>5.0f}%  "
            f"{'PASS' if p['passed'] else 'FAIL (' + p['why'] + ')' + (' noisy' if p['noisy'] else '')}")


def rate_ceiling(url: str, duration: float, runs: int, server: NullServer, budget_s: float) -> dict:
    print(f"\n== 1. Rate ceiling: one-round agents, {PROMPT_TOKENS}-token prompts, {OUTPUT_TOKENS} output tokens, "
          f"constant arrivals, {duration:g} s per rate ==")
    print("   pass: dispatch lag p99 <= 2 ms, achieved within 1 % of requested, all sent, no errors")
    print("   pacer = t_dispatched - t_scheduled (the harness's own lag, as the driver stamps t_dispatched); disp = "
          "t_sent - t_scheduled;")
    print(f"   drv/srv cpu = CPU time / wall (the driver's includes the pacer's {SPIN_S * 1e3:g} ms yield-spin before "
          "each deadline); other = CPU of all other processes, % of one core")
    print("   " + RATE_HEAD, flush=True)
    probes = []
    t_end = time.perf_counter() + budget_s

    def probe(rate) -> dict:
        p = rate_probe(url, rate, duration, server)
        probes.append(p)
        print("   " + rate_line(p), flush=True)
        return p

    def verdict(rate) -> bool:
        """Up to 3 probes; the first pass decides. A failure while other processes used more than
        NOISY_PCT of a core is not counted as the driver's; two counted failures decide."""
        counted = 0
        for _ in range(3):
            p = probe(rate)
            if p["passed"]:
                return True
            counted += not p["noisy"]
            if counted >= 2 or time.perf_counter() > t_end:
                break
        return False

    def saturated(rate) -> bool:
        """The driver cannot keep up at all (not a lag tail that a noisy neighbour could cause)."""
        last = [p for p in probes if p["rate"] == rate][-1]
        return last["sent"] < last["scheduled"] or not last["achieved"] >= rate * (1 - RATE_TOLERANCE) \
            or last["disp_p50_ms"] > LAG_P99_MAX_S * 1e3

    # Doubling: a failure is not the end while the driver keeps up (a lag tail at a low rate can be
    # noise, or the pacer's timer overshoot); stop after two failing rates in a row, or saturation.
    lo, fails = None, []
    rate, in_a_row = RATE_START, 0
    while rate <= RATE_MAX and time.perf_counter() < t_end:
        if verdict(rate):
            lo, in_a_row = rate, 0
        else:
            fails.append(rate)
            in_a_row += 1
            if in_a_row >= 2 or saturated(rate):
                break
        rate *= 2
    if lo is None:
        return {"probes": probes, "answer": None, "confirm": [], "first_fail": min(fails) if fails else None}
    above = [f for f in fails if f > lo]
    hi = min(above) if above else None
    while hi is not None and hi / lo > BISECT_TO and time.perf_counter() < t_end:
        mid = round((lo + hi) / 2 / 10) * 10
        if mid in (lo, hi):
            break
        if verdict(mid):
            lo = mid
        else:
            hi = mid
    # Confirm: the answer gets `runs` runs in all; most of the counted (not noisy) ones must pass, else
    # step down 10 %.
    confirm: list = []
    answer = None
    for _ in range(3):
        runs_here = [p for p in probes if p["rate"] == lo]
        while len(runs_here) < runs:
            runs_here.append(probe(lo))
        confirm = runs_here
        passes = sum(p["passed"] for p in runs_here)
        counted_fails = sum(not p["passed"] and not p["noisy"] for p in runs_here)
        if passes > counted_fails:
            answer = lo
            break
        lo = round(lo * 0.9 / 10) * 10
    return {"probes": probes, "answer": answer, "confirm": confirm, "first_fail": hi}


def request_throughput(url: str, runs: int, server: NullServer, n: int = 4000, conc: int = 32) -> dict:
    """Closed loop: n short requests all due at t = 0, at most `conc` in flight: the driver's request
    throughput with no pacing (an upper bound for any open-loop rate) and its CPU per request."""
    trace = one_round_trace(n, PROMPT_TOKENS, OUTPUT_TOKENS)
    rs = []
    for _ in range(runs):
        r = run_driver(url, trace, np.zeros(n), server, max_concurrency=conc)
        sent = len(r["req"]["t_sent"])
        rs.append({"rps": sent / r["facts"]["wall_s"], "us_req": 1e6 * r["cpu_s"] / sent,
                   "cpu_pct": 100 * r["cpu_s"] / r["wall_s"], "srv_pct": 100 * r["server_cpu_s"] / r["wall_s"],
                   "others_pct": r["others_pct"], "errors": int((r["req"]["status"] != "ok").sum())})
    med = statistics.median(x["rps"] for x in rs)
    mid = min(rs, key=lambda x: abs(x["rps"] - med))
    out = {**mid, "rps": med, "runs": [x["rps"] for x in rs], "n": n, "conc": conc}
    print(f"\n   closed loop, no pacing: {n} requests due at once, <= {conc} in flight: {med:,.0f} req/s (median; runs "
          f"{' '.join(f'{x:,.0f}' for x in out['runs'])}), {mid['us_req']:.0f} us driver CPU/request, driver CPU "
          f"{mid['cpu_pct']:.0f}%, server {mid['srv_pct']:.0f}%, other {mid['others_pct']:.0f}%, "
          f"errors {mid['errors']}",
          flush=True)
    return out


# ----- 2. streamed tokens -------------------------------------------------------------------------
def stream_run(url: str, streams: int, tokens: int, server: NullServer, profile=None) -> dict:
    trace = one_round_trace(streams, PROMPT_TOKENS, tokens)
    r = run_driver(url, trace, np.zeros(streams), server, profile=profile)
    q = r["req"]
    out_tok = int(q["output_tokens"].sum())
    wall = r["facts"]["wall_s"]
    errors = int((q["status"] != "ok").sum())
    return {"tokens": out_tok, "expected": streams * tokens, "wall_s": wall, "tok_s": out_tok / wall,
            "cpu_s": r["cpu_s"], "cpu_pct": 100 * r["cpu_s"] / wall, "srv_pct": 100 * r["server_cpu_s"] / wall,
            "errors": errors, "cpu_us_per_tok": 1e6 * r["cpu_s"] / max(out_tok, 1), "others_pct": r["others_pct"]}


async def _bare(url: str, streams: int, tokens: int, mode: str) -> int:
    """Bare aiohttp: `streams` concurrent requests; count bytes (iter_any) or lines (readline)."""
    body = json.dumps({"prompt": list(range(1000, 1000 + PROMPT_TOKENS)), "max_tokens": tokens,
                       "stream": True}).encode()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, read_bufsize=1 << 22,
                                     timeout=aiohttp.ClientTimeout(total=None)) as s:
        async def one() -> int:
            n = 0
            async with s.post(url + "/v1/completions", data=body,
                              headers={"Content-Type": "application/json"}) as resp:
                if mode == "bytes":
                    async for chunk in resp.content.iter_any():
                        n += chunk.count(b"token_ids")
                elif mode == "events":  # split events ourselves, parse each, as the driver's reader does
                    tail = b""
                    async for chunk in resp.content.iter_any():
                        parts = (tail + chunk).split(b"\n\n")
                        tail = parts.pop()
                        for ev in parts:
                            if ev.startswith(b"data: {"):
                                obj = json.loads(ev[6:])
                                for ch in obj.get("choices") or ():
                                    ids = ch.get("token_ids")
                                    if ids:
                                        n += len(ids)
                else:
                    async for line in resp.content:
                        if line.startswith(b"data: {\"object"):
                            n += 1
            return n
        return sum(await asyncio.gather(*(one() for _ in range(streams))))


def bare_run(url: str, streams: int, tokens: int, mode: str, server: NullServer) -> dict:
    srv0, sys0 = server.cpu_s(), busy_s()
    cpu0, t0 = time.process_time(), time.perf_counter()
    n = asyncio.run(_bare(url, streams, tokens, mode))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    srv = server.cpu_s() - srv0
    return {"tokens": n, "tok_s": n / wall, "cpu_pct": 100 * cpu / wall, "wall_s": wall, "cpu_s": cpu,
            "srv_pct": 100 * srv / wall, "cpu_us_per_tok": 1e6 * cpu / max(n, 1),
            "others_pct": others_pct(sys0, busy_s(), wall, cpu, srv)}


def stream_ingest(url: str, runs: int, server: NullServer) -> list[dict]:
    print(f"\n== 2. Streamed-token ingest: S concurrent streams x T tokens, all started at t = 0 "
          f"(median of {runs} runs) ==")
    print(f"   {'streams':>7} {'tokens':>6} {'client':<22} {'tok/s (median)':>14} {'runs tok/s':<30} "
          f"{'cpu/wall':>8} {'srv cpu':>7} {'other':>6} {'us/tok':>6} {'ok':>3}")
    results = []
    for streams, tokens in STREAM_CASES:
        for client in ("driver", "aiohttp lines (floor)", "aiohttp bytes (floor)", "bytes+split+json"):
            rs = []
            for _ in range(runs):
                if client == "driver":
                    rs.append(stream_run(server.url, streams, tokens, server))
                else:
                    mode = "lines" if "lines" in client else "events" if "json" in client else "bytes"
                    rs.append(bare_run(server.url, streams, tokens, mode, server))
            med = statistics.median(r["tok_s"] for r in rs)
            mid = min(rs, key=lambda r: abs(r["tok_s"] - med))
            ok = all(r["tokens"] == streams * tokens for r in rs) and all(r.get("errors", 0) == 0 for r in rs)
            res = {"streams": streams, "tokens": tokens, "client": client, "tok_s": med,
                   "runs": [r["tok_s"] for r in rs], "cpu_pct": mid["cpu_pct"], "srv_pct": mid.get("srv_pct"),
                   "us_tok": mid.get("cpu_us_per_tok"), "ok": ok, "cpu_s": mid.get("cpu_s"),
                   "wall_s": mid["wall_s"], "others_pct": mid["others_pct"]}
            results.append(res)
            runs_txt = " ".join(f"{x / 1e3:.0f}k" for x in res["runs"])
            print(f"   {streams:>7} {tokens:>6} {client:<22} {med:>14,.0f} {runs_txt:<30} "
                  f"{res['cpu_pct']:>7.0f}% {res['srv_pct']:>6.0f}% {res['others_pct']:>5.0f}% {res['us_tok']:>6.2f} "
                  f"{'yes' if ok else 'NO':>3}", flush=True)
    return results


# ----- 3. AIPerf ----------------------------------------------------------------------------------
def aiperf_ready(log: list[str]) -> str | None:
    """Return None when AIPerf and a local tokenizer are usable, else why not."""
    exe = AIPERF_VENV / "bin" / "aiperf"
    if not exe.exists():
        py = shutil.which("python3.11") or shutil.which("python3")
        steps = [[py, "-m", "venv", str(AIPERF_VENV)], [str(AIPERF_VENV / "bin" / "pip"), "install", "-q", "aiperf"]]
        for step in steps:
            log.append("$ " + " ".join(step))
            p = subprocess.run(step, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                return f"`{' '.join(step)}` failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-400:]}"
    if not (AIPERF_TOK / "tokenizer.json").exists():
        code = (
            "import os, sys, aiperf\n"
            "from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders\n"
            "from transformers import PreTrainedTokenizerFast\n"
            "corpus = os.path.join(os.path.dirname(aiperf.__file__), 'dataset/generator/assets/shakespeare.txt')\n"
            "tok = Tokenizer(models.WordLevel(unk_token='[UNK]'))\n"
            "tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()\n"
            "tok.decoder = decoders.WordPiece(prefix='##')\n"
            "tok.train([corpus], trainers.WordLevelTrainer(special_tokens=['[UNK]'], vocab_size=30000))\n"
            "PreTrainedTokenizerFast(tokenizer_object=tok, unk_token='[UNK]').save_pretrained(sys.argv[1])\n")
        p = subprocess.run([str(AIPERF_VENV / "bin" / "python"), "-c", code, str(AIPERF_TOK)],
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            return f"building a local tokenizer failed: {p.stderr.strip()[-400:]}"
    return None


def run_aiperf(url: str, extra: list[str], cpus: set[int] | None, timeout_s: float) -> dict:
    art = Path(tempfile.mkdtemp(prefix="aiperf."))
    cmd = [str(AIPERF_VENV / "bin" / "aiperf"), "profile", "--model", "null", "--tokenizer", str(AIPERF_TOK),
           "--url", url, "--endpoint-type", "completions", "--streaming",
           "--synthetic-input-tokens-mean", str(PROMPT_TOKENS), "--synthetic-input-tokens-stddev", "0",
           "--output-tokens-stddev", "0", "--use-legacy-max-tokens", "--use-server-token-count",
           "--extra-inputs", "ignore_eos:true", "--ui", "none", "--no-gpu-telemetry", "--no-server-metrics",
           "--artifact-dir", str(art), "--export-level", "records", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=art,
                           preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        rc, tail = p.returncode, (p.stdout + p.stderr).strip()[-600:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = 124, f"timed out after {timeout_s:.0f} s: {str(exc.stdout or '')[-300:]}"
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"cmd": " ".join(cmd), "rc": rc, "wall_s": wall, "cpu_s": cpu, "dir": art, "tail": tail, "records": []}
    jl = art / "profile_export.jsonl"
    if jl.exists():
        with open(jl) as f:
            out["records"] = [json.loads(line) for line in f if line.strip()]
    js = art / "profile_export_aiperf.json"
    if js.exists():
        out["summary"] = json.loads(js.read_text())
    return out


def _aiperf_metric(summary: dict | None, key: str, stat: str = "avg"):
    if not summary:
        return None
    node = summary.get(key) or (summary.get("records") or {}).get(key)
    if isinstance(node, dict):
        return node.get(stat)
    return None


def aiperf_rate(url: str, rate: float, duration: float, cpus) -> dict:
    r = run_aiperf(url, ["--request-rate", f"{rate:g}", "--request-rate-mode", "constant",
                         "--benchmark-duration", f"{duration:g}", "--output-tokens-mean", str(OUTPUT_TOKENS)],
                   cpus, timeout_s=duration + 120)
    recs = [x for x in r["records"] if x.get("metadata", {}).get("benchmark_phase", "profiling") == "profiling"]
    res = {"rate": rate, "rc": r["rc"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "cmd": r["cmd"], "tail": r["tail"]}
    if not recs:
        return res
    issued = np.array([x["metadata"]["credit_issued_ns"] for x in recs], dtype=np.int64)
    start = np.array([x["metadata"]["request_start_ns"] for x in recs], dtype=np.int64)
    order = np.argsort(issued, kind="stable")
    issued, start = issued[order], start[order]
    ideal = (np.arange(len(issued)) * (1e9 / rate)).astype(np.int64)
    origin = int((issued - ideal).min())    # the schedule's origin: AIPerf records no scheduled time
    sched = origin + ideal
    pacer = (issued - sched) * 1e-9
    disp = (start - sched) * 1e-9
    span = (start.max() - start.min()) * 1e-9
    errors = sum(1 for x in recs if x.get("error"))
    res.update({"sent": len(recs), "errors": errors, "achieved": (len(recs) - 1) / span if span > 0 else math.nan,
                "pacer_p50_ms": pct(pacer, 50) * 1e3, "pacer_p99_ms": pct(pacer, 99) * 1e3,
                "disp_p50_ms": pct(disp, 50) * 1e3, "disp_p99_ms": pct(disp, 99) * 1e3,
                "disp_max_ms": float(disp.max()) * 1e3,
                "reported_rps": _aiperf_metric(r.get("summary"), "request_throughput")})
    return res


def aiperf_stream(url: str, streams: int, tokens: int, cpus) -> dict:
    r = run_aiperf(url, ["--concurrency", str(streams), "--request-count", str(streams),
                         "--output-tokens-mean", str(tokens)], cpus, timeout_s=240)
    recs = [x for x in r["records"] if x.get("metadata", {}).get("benchmark_phase", "profiling") == "profiling"]
    res = {"streams": streams, "tokens": tokens, "rc": r["rc"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
           "cmd": r["cmd"], "tail": r["tail"]}
    if not recs:
        return res
    start = min(x["metadata"]["request_start_ns"] for x in recs)
    end = max(x["metadata"]["request_end_ns"] for x in recs)
    toks = sum((x.get("metrics", {}).get("output_token_count") or {}).get("value", 0) or 0 for x in recs)
    res.update({"sent": len(recs), "errors": sum(1 for x in recs if x.get("error")), "out_tokens": toks,
                "span_s": (end - start) * 1e-9, "tok_s": toks / ((end - start) * 1e-9),
                "reported_tok_s": _aiperf_metric(r.get("summary"), "output_token_throughput")})
    return res


def peer(url: str, rate: float | None, duration: float, cpus) -> dict:
    print("\n== 3. Peer on the same null server: AIPerf (pinned to the driver's core) ==")
    log: list[str] = []
    why = aiperf_ready(log)
    for line in log:
        print("   " + line)
    if why:
        print(f"   AIPerf not run: {why}")
        return {"skipped": why}
    out: dict = {}
    ver = subprocess.run([str(AIPERF_VENV / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('aiperf'))"],
                         capture_output=True, text=True).stdout.strip()
    out["version"] = ver
    print(f"   aiperf {ver} in {AIPERF_VENV}; tokenizer: local word-level ({AIPERF_TOK})")
    if rate:
        a = aiperf_rate(url, rate, duration, cpus)
        out["rate"] = a
        print(f"   constant {rate:g} req/s for {duration:g} s, {PROMPT_TOKENS}-token prompts, {OUTPUT_TOKENS} output "
              f"tokens  (exit {a['rc']}, wall incl. start-up {a['wall_s']:.1f} s, CPU {a['cpu_s']:.1f} s all "
              "processes)")
        if "sent" in a:
            print("   " + f"{'requested':>9} {'achieved':>9} {'ach/req':>7} {'sent':>6} {'err':>4} "
                  f"{'credit p50':>10} {'credit p99':>10} {'start p50':>9} {'start p99':>9} {'start max':>9}")
            print("   " + f"{rate:>9.0f} {a['achieved']:>9.1f} {a['achieved'] / rate:>7.4f} {a['sent']:>6d} "
                  f"{a['errors']:>4d} {a['pacer_p50_ms']:>8.3f}ms {a['pacer_p99_ms']:>8.3f}ms "
                  f"{a['disp_p50_ms']:>7.3f}ms {a['disp_p99_ms']:>7.3f}ms {a['disp_max_ms']:>7.1f}ms")
            print("   credit = credit_issued_ns - schedule (AIPerf's pacer); start = request_start_ns - schedule; the "
                  "schedule's origin is fitted (AIPerf records no scheduled time), so lags are >= 0 by construction; "
                  f"AIPerf's own request throughput: {a.get('reported_rps') or float('nan'):.1f} req/s")
        else:
            print(f"   no records: {a['tail']}")
    streams, tokens = STREAM_CASES[0]
    s = aiperf_stream(url, streams, tokens, cpus)
    out["stream"] = s
    print(f"   streaming: {streams} concurrent x {tokens} tokens (exit {s['rc']}, wall incl. start-up "
          f"{s['wall_s']:.1f} s, CPU {s['cpu_s']:.1f} s all processes)")
    if "sent" in s:
        print(f"   {s['out_tokens']:,} tokens in {s['span_s']:.2f} s (first request start to last end) = "
              f"{s['tok_s']:,.0f} tok/s; AIPerf's own output token throughput: "
              f"{s.get('reported_tok_s') or float('nan'):,.0f} tok/s; errors {s['errors']}")
    else:
        print(f"   no records: {s['tail']}")
    return out


# ----- 4. profile ---------------------------------------------------------------------------------
def profile_top(prof: cProfile.Profile, n: int = 14) -> list[str]:
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    lines = []
    for (file, line, func), (cc, nc, tt, ct, _) in rows:
        short = file.replace(str(REPO) + "/", "")
        short = short.split("site-packages/")[-1] if "site-packages" in short else short
        short = short.split("/lib/python3.11/")[-1]
        lines.append(f"{100 * tt / total:5.1f}%  {tt:6.2f}s self  {ct:6.2f}s cum  {nc:>9,} calls  "
                     f"{short}:{line}({func})")
    return lines


KEY_FUNCS = [  # (label, path fragment, function): cumulative time, the call-tree view
    ("Pacer.run (timer naps, yield-spin, building requests ahead: below)", "harness/driver.py", "run"),
    ("AgentContext.prompt (stand-in ids, numpy rng)", "harness/prompts.py", "prompt"),
    ("request_body", "harness/http_client.py", "request_body"),
    ("aiohttp ClientSession._request (send, headers)", "aiohttp/client.py", "_request"),
    ("_read_stream (the SSE loop, all below)", "harness/http_client.py", "_read_stream"),
    ("  aiohttp StreamReader reads (iter_any)", "aiohttp/streams.py", "__anext__"),
    ("  _take_line (split lines, parse)", "harness/http_client.py", "_take_line"),
    ("    json.loads", "json/__init__.py", "loads"),
    ("    _take_chunk", "harness/http_client.py", "_take_chunk"),
    ("aiohttp protocol data_received (chunk parsing)", "aiohttp/client_proto.py", "data_received"),
    ("Driver._record (row, np.diff of chunk times)", "harness/driver.py", "_record"),
    ("Driver._flush", "harness/driver.py", "_flush"),
    ("epoll (incl. idle wait)", "~", "<method 'poll' of 'select.epoll' objects>"),
]


def profile_key(prof: cProfile.Profile) -> list[str]:
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())
    out = []
    for label, frag, func in KEY_FUNCS:
        ct = sum(v[3] for (f, _, fn), v in st.stats.items() if fn == func and frag in f)
        out.append(f"{100 * ct / total:5.1f}%  {label}")
    return out


def profiles(url: str, rate: float, server: NullServer) -> None:
    print("\n== 4. Where the driver's time goes (cProfile; self time, top functions) ==")
    prof = cProfile.Profile()
    n = int(rate * 4)
    run_driver(url, one_round_trace(n, PROMPT_TOKENS, OUTPUT_TOKENS), LEAD_S + np.arange(n) / rate, server,
               watchdog_s=LEAD_S + 10, profile=prof)
    print(f"   rate probe: {n} requests at {rate:g} req/s (profiled, so slower than unprofiled); cumulative:")
    for line in profile_key(prof):
        print("   " + line)
    print("   self time, top functions:")
    for line in profile_top(prof):
        print("   " + line)
    prof = cProfile.Profile()
    streams, tokens = 64, 2000
    stream_run(url, streams, tokens, server, profile=prof)
    print(f"   streaming: {streams} x {tokens} tokens; cumulative:")
    for line in profile_key(prof):
        print("   " + line)
    print("   self time, top functions:")
    for line in profile_top(prof):
        print("   " + line)


# ----- main ---------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe-s", type=float, default=10.0, help="seconds of arrivals per probed rate")
    ap.add_argument("--runs", type=int, default=3, help="runs per streaming case and for the rate confirmation")
    ap.add_argument("--rate-budget-s", type=float, default=170.0,
                    help="time for the rate search; it stops probing new rates after this")
    ap.add_argument("--no-peer", action="store_true", help="skip AIPerf")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile breakdown")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness change for the driver, server and peer (e.g. -10 on a shared machine; needs root)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    if args.nice:
        os.nice(args.nice)   # inherited by the server and AIPerf
    drv_cpus, srv_cpus, load = cores()
    if drv_cpus:
        os.sched_setaffinity(0, drv_cpus)
    print("bench_driver: the harness's HTTP driver against a null streaming server")
    print(f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, {os.cpu_count()} CPUs; "
          f"driver pinned to {sorted(drv_cpus) if drv_cpus else 'any'}, server to "
          f"{sorted(srv_cpus) if srv_cpus else 'any'}; niceness {os.nice(0)}")
    busy_bg = sum(load.values())
    print("background load before start: " + ", ".join(f"cpu{c} {100 * v:.0f}%" for c, v in sorted(load.items()))
          + ("   WARNING: other processes are using CPU; lags and rates below are affected (see 'other')"
             if busy_bg > 0.15 else ""))
    p50, worst = timer_overshoot()
    print(f"asyncio timer overshoot (sleeps of 2-20 ms): p50 {p50:.2f} ms, max {worst:.2f} ms; the pacer's spin "
          f"margin is {SPIN_S * 1e3:g} ms after naps that allow for it")
    with NullServer(srv_cpus) as server:
        print(f"null server: {server.url} (pid {server.proc.pid})")
        # warm-up: imports, trace solver, first connections
        stream_run(server.url, 8, 200, server)
        rate_probe(server.url, 100, 1.0, server)

        ceiling = rate_ceiling(server.url, args.probe_s, args.runs, server, args.rate_budget_s)
        closed = request_throughput(server.url, args.runs, server)
        streams = stream_ingest(server.url, args.runs, server)
        aip = None
        if not args.no_peer:
            try:
                aip = peer(server.url, ceiling["answer"] or 400, args.probe_s, drv_cpus)
            except Exception as exc:  # the peer is optional: report, do not fail the benchmark
                aip = {"skipped": f"{type(exc).__name__}: {exc}"}
                print(f"   AIPerf failed: {aip['skipped']}")
        if not args.no_profile and ceiling["answer"]:
            profiles(server.url, ceiling["answer"], server)
    print(f"\n({getattr(server, 'served', '')})")

    # ----- summary
    ans = ceiling["answer"]
    print("\n" + "=" * 100)
    print("SUMMARY (driver on one core; null server on the other)")
    if ans:
        conf = ceiling["confirm"]
        med = lambda k: statistics.median(p[k] for p in conf)  # noqa: E731
        print(f"  rate ceiling (dispatch p99 <= 2 ms, achieved within 1 %): {ans:g} req/s  "
              f"[{sum(p['passed'] for p in conf)}/{len(conf)} runs pass ({sum(p['noisy'] for p in conf)} noisy); "
              f"median of them: other processes {med('others_pct'):.0f}% of a core, achieved "
              f"{med('achieved'):.1f} req/s, pacer lag p50/p99 {med('pacer_p50_ms'):.3f}/{med('pacer_p99_ms'):.3f} ms, "
              f"dispatch lag p50/p99 {med('disp_p50_ms'):.3f}/{med('disp_p99_ms'):.3f} ms, driver CPU "
              f"{med('cpu_pct'):.0f}% of a core incl. the pacer's spin]")
        if ceiling.get("first_fail"):
            f = [p for p in ceiling["probes"] if p["rate"] == ceiling["first_fail"]][0]
            print(f"  next failing rate: {f['rate']:g} req/s ({f['why']}; dispatch p99 "
                  f"{f['disp_p99_ms']:.2f} ms, achieved {f['achieved']:.1f})")
    else:
        print("  rate ceiling: no probed rate passed")
    print("  probes (P pass, F fail, * noisy): " + " ".join(
        f"{p['rate']:g}:{'P' if p['passed'] else 'F'}{'*' if p['noisy'] and not p['passed'] else ''}"
        for p in ceiling["probes"]))
    print(f"  closed loop (no pacing, <= {closed['conc']} in flight): {closed['rps']:,.0f} req/s, "
          f"{closed['us_req']:.0f} us driver CPU/request")
    for s in streams:
        if s["client"] == "driver":
            print(f"  streamed tokens, {s['streams']} x {s['tokens']}: {s['tok_s']:,.0f} tok/s (median), driver CPU "
                  f"{s['cpu_s']:.2f} s over {s['wall_s']:.2f} s wall = {s['cpu_pct']:.0f}% of one core, "
                  f"{s['us_tok']:.2f} us CPU/token")
    for s in streams:
        if s["client"] != "driver":
            print(f"  floor, {s['client']}, {s['streams']} x {s['tokens']}: {s['tok_s']:,.0f} tok/s")
    if aip is None:
        print("  AIPerf: not run (--no-peer)")
    elif "skipped" in aip:
        print(f"  AIPerf: not run: {aip['skipped']}")
    else:
        a = aip.get("rate") or {}
        if "sent" in a:
            print(f"  AIPerf {aip['version']} at {a['rate']:g} req/s: achieved {a['achieved']:.1f} req/s, credit lag "
                  f"p50/p99 {a['pacer_p50_ms']:.3f}/{a['pacer_p99_ms']:.3f} ms, request-start lag p50/p99 "
                  f"{a['disp_p50_ms']:.3f}/{a['disp_p99_ms']:.3f} ms, errors {a['errors']}")
        elif a:
            print(f"  AIPerf at {a['rate']:g} req/s: no records (exit {a['rc']})")
        s = aip.get("stream") or {}
        if "sent" in s:
            print(f"  AIPerf streaming {s['streams']} x {s['tokens']}: {s['tok_s']:,.0f} tok/s (AIPerf reports "
                  f"{s.get('reported_tok_s') or float('nan'):,.0f}), CPU {s['cpu_s']:.1f} s over {s['wall_s']:.1f} s "
                  "wall incl. start-up (all its processes)")
        elif s:
            print(f"  AIPerf streaming: no records (exit {s['rc']})")
    print(f"  total benchmark time: {time.perf_counter() - t_start:.0f} s")
    print("=" * 100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
