"""`backend: live`: run each system on a live cluster of real processes on this host (engines/live).

Per system: a fresh cluster (cold store) is started as separate processes, `dualpath engine --role
storage|pe|de|router --config FILE` on 127.0.0.1 free ports (storage, then the PEs and DEs, then the
router); each prints `READY {...}` once it listens. The open-loop driver (harness/driver.py) then replays
the trace against the router, exactly as `backend: http` does; the engines' and storage's /metrics byte
counters become links rows per telemetry window (harness/live_links.py) and, at the end, the router's
per-request breakdowns are joined into the requests rows. Every process is stopped (SIGTERM, then
SIGKILL) on every way out: the end, Ctrl-C, SIGTERM, a driver error, the crash of a part (which also
fails the requests it held, so the driver's abort rules end the run). A part dies with this process too
(Linux: PR_SET_PDEATHSIG).

The parts' sizes come from the scenario's `model` and `hardware` profiles: KV bytes per token and layer,
layers, the block size (`sim.kv_block_tokens`), the SNIC and CNIC rates (line rate x the sim's
efficiencies) and the DE memory, so that `--set backend=sim` simulates the same cluster.
"""
from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import yaml

from engines.live.transport import TRANSPORTS
from harness.driver import ABORT_DEFAULTS, Driver, DriverConfig
from harness import live_engines
from harness.live_links import LinkSampler
from traces.errors import InputError
from traces.schema import Trace

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
LIVE_DEFAULTS = {"transport": "tcp", "compute": "modeled", "time_scale": 1.0, "kv_cache": True}


def live_settings(scenario: dict) -> dict:
    live = {**LIVE_DEFAULTS, **(scenario.get("live") or {})}
    if live["transport"] not in TRANSPORTS:
        raise InputError(f"must be one of {', '.join(TRANSPORTS)}, got {live['transport']!r}", field="live.transport")
    if live["transport"] == "nixl":  # issue 17: where nixl-cu12 installed
        from engines.live.nixl import probe as probe_nixl
        try:
            probe_nixl()
        except ImportError as exc:
            raise InputError(str(exc), field="live.transport") from None
    if live["transport"] == "rdma":  # issue 17: only where ibv_get_device_list finds a device
        from engines.live.rdma import RdmaUnavailable, probe
        try:
            probe()
        except RdmaUnavailable as exc:
            raise InputError(f"rdma is not available here: {exc}", field="live.transport") from None
    if live["compute"] not in ("modeled", "torch"):
        raise InputError(f"must be modeled or torch, got {live['compute']!r}", field="live.compute")
    return live


def check(scenario: dict, trace: Trace) -> None:
    try:
        live = live_settings(scenario)
        cost = _cost(scenario)
        notes = rate_notes(scenario)
        if live["compute"] == "torch":  # issue 17: torch installed, a model profile the toy transformer takes
            from engines.live.torch_compute import check as check_torch
            try:
                check_torch(scenario["model"], cost.k.kv_block_tokens)
            except ValueError as exc:
                raise InputError(str(exc), field="live.compute") from None
    except InputError as exc:
        raise exc.at(scenario.get("_path")) from None
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _cost(scenario: dict):
    """The cost model of the live cluster: the scenario's profiles, with `live.snic_gbps` (a node's SNIC line
    rate) and `live.cnic_gbps` (a GPU's CNIC line rate) in place of the hardware profile's where set."""
    from engines.live.compute import cost_model
    cost = cost_model(scenario["model"], scenario["hardware"], scenario.get("sim"))
    live = scenario.get("live") or {}
    rates = {}
    if live.get("snic_gbps") is not None:
        rates.update(snic_count=1, snic_gbps=float(live["snic_gbps"]))
    if live.get("cnic_gbps") is not None:
        rates.update(cnic_gbps=float(live["cnic_gbps"]))
    return dataclasses.replace(cost, hw=dataclasses.replace(cost.hw, **rates)) if rates else cost


def rate_notes(scenario: dict) -> list[str]:
    """One line per live rate that differs from the hardware profile's (the simulator keeps the profile's)."""
    from engines.costmodel import hardware_spec
    hw, live, notes = hardware_spec(scenario["hardware"]), scenario.get("live") or {}, []
    for key, profile in (("snic_gbps", hw.snic_count * hw.snic_gbps), ("cnic_gbps", hw.cnic_gbps)):
        if live.get(key) is not None and abs(float(live[key]) - profile) > 1e-9 * profile:
            notes.append(f"live.{key} {float(live[key]):g} paces the live cluster, not hardware {hw.name}'s "
                         f"{profile:g}: `--set backend=sim` simulates the profile's rate")
    return notes


def _die_with_parent() -> None:  # runs in the child before exec
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux
        pass


class Cluster:
    """The processes of one live cluster; a context manager that always stops them."""

    def __init__(self, scenario: dict, system: str, trace: Trace | None = None):
        self.scenario = scenario
        self.trace = trace
        self.system = system
        self.live = live_settings(scenario)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="dualpath-live-"))
        self.ports: dict[str, dict] = {}

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _spawn(self, name: str, role: str, cfg: dict) -> dict:
        return self._ready(name, self._launch(name, role, cfg))

    def _launch(self, name: str, role: str, cfg: dict) -> subprocess.Popen:
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli_live", "--role", role, "--config", str(path)],
                                stdout=subprocess.PIPE, stderr=open(self.tmp / f"{name}.log", "w"), text=True,
                                preexec_fn=_die_with_parent)
        self.procs.append((name, proc))
        return proc

    def _ready(self, name: str, proc: subprocess.Popen) -> dict:
        """Waits for the part's READY line (its ports)."""
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            log = (self.tmp / f"{name}.log").read_text().strip().splitlines()
            raise RuntimeError(f"live cluster: {name} did not start: {(log or ['no output'])[-1]}")
        info = {**json.loads(line[6:]), "host": "127.0.0.1"}
        self.ports[name] = info
        return info

    def start(self) -> None:
        s, live = self.scenario, self.live
        cost = _cost(s)
        m, k = cost.model, cost.k
        cluster = s["cluster"]
        n_pe, n_de = int(cluster["prefill_nodes"]), int(cluster["decode_nodes"])
        storage_dir = live.get("storage_dir") or str(self.tmp / "kv")
        common = {"layers": m.layers, "block_tokens": k.kv_block_tokens, "bytes_per_token_layer": m.kv_bytes_per_token_layer,
                  "transport": live["transport"], "compute": live["compute"], "kv_cache": live["kv_cache"]}
        st = self._spawn("storage", "storage", {**common, "storage_dir": storage_dir, "snic_bytes_s": cost.snic_rate,
                                                "nodes": n_pe + n_de})
        storage = {"host": st["host"], "data_port": st["data_port"], "http_port": st["http_port"]}
        engine = {**common, "storage": storage, "cnic_bytes_s": cost.cnic_rate, "time_scale": live["time_scale"],
                  "model": s["model"], "hardware": s["hardware"], "sim": s.get("sim")}
        # the engines need only the storage service's ports: they start side by side (each imports for ~0.8 s)
        parts = [(f"pe{i}", self._launch(f"pe{i}", "pe", {**engine, "node": i, "index": i}), i) for i in range(n_pe)]
        parts += [(f"de{i}", self._launch(f"de{i}", "de", {**engine, "node": n_pe + i, "index": i}), n_pe + i)
                  for i in range(n_de)]
        started = [{**self._ready(name, proc), "node": node} for name, proc, node in parts]
        pes, des = started[:n_pe], started[n_pe:]
        hit_mean = new_mean = 1.0
        if self.trace is not None and self.trace.num_rounds:  # the scheduler's beta, as the simulator sets it
            prompt, hit = self.trace.prompt_tokens(), self.trace.expected_cached_tokens()
            hit_mean, new_mean = float(hit.mean()), float((prompt - hit).mean())
        r = self._spawn("router", "router", {
            "system": self.system, "block_tokens": k.kv_block_tokens, "kv_bytes_per_token": m.kv_bytes_per_token,
            "de_hbm_bytes": cost.decode_kv_capacity_bytes(), "alpha_tokens": cost.alpha_tokens(),
            "beta_tokens": cost.beta_tokens(hit_mean, new_mean), "z_factor": k.de_z_factor,
            "storage": storage, "pes": pes, "des": des, "model_name": "dualpath-live",
            "compute": live["compute"], "kv_cache": live["kv_cache"]})  # issue 17
        self.router_url = f"http://127.0.0.1:{r['http_port']}"
        self._wait_warm([f"pe{i}" for i in range(n_pe)] + [f"de{i}" for i in range(n_de)])
        print(f"live cluster ({self.system}): router {self.router_url} pids "
              + " ".join(f"{name}={p.pid}" for name, p in self.procs), file=sys.stderr, flush=True)
        self.metrics_urls = {name: f"http://127.0.0.1:{p['http_port']}/metrics" for name, p in self.ports.items()
                             if name != "router"}

    def _wait_warm(self, names: list[str]) -> None:
        """Every engine's `GET /warm`: returns once each can compute (compute: torch loads its model in each
        engine's compute process in parallel with the other parts' start-up), so the run measures serving,
        not start-up; RuntimeError naming the engine and why when one cannot."""
        deadline = time.monotonic() + START_TIMEOUT_S
        for name in names:
            url = f"http://127.0.0.1:{self.ports[name]['http_port']}/warm"
            try:
                with urllib.request.urlopen(url, timeout=max(1.0, deadline - time.monotonic())) as resp:
                    json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                why = json.loads(exc.read() or b"{}").get("error", f"HTTP {exc.code}")
                raise RuntimeError(f"live cluster: {name} did not start: {why}") from None
            except OSError as exc:
                raise RuntimeError(f"live cluster: {name} did not start: /warm: {exc}") from None

    def dead(self) -> list[str]:
        return [name for name, p in self.procs if p.poll() is not None]

    def stop(self) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for _, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(STOP_TIMEOUT_S)
            if p.stdout:
                p.stdout.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def pid_of(self, name: str) -> int:
        return next(p.pid for n, p in self.procs if n == name)

    def pids(self) -> list[int]:
        return [p.pid for _, p in self.procs]


class _JoinSink:
    """Holds the driver's request rows until the run ends, then joins the router's breakdowns."""

    def __init__(self, sink):
        self.sink = sink
        self.rows: list[dict] = []

    def requests(self, cols: dict) -> None:
        self.rows.append(cols)

    def agents(self, cols: dict) -> None:
        self.sink.agents(cols)

    def flush(self, breakdowns: dict) -> None:
        for cols in self.rows:
            n = len(cols["agent_id"])
            for c in ("pe", "de", "read_side", "read_bytes", "queue_s", "read_s", "prefill_s", "kv_transfer_s"):
                cols[c] = list(cols[c])  # the driver shares one list of nulls between columns
            for j in range(n):
                b = breakdowns.get(f"{cols['agent_id'][j]}/{cols['round'][j]}")
                if not b:
                    continue
                for c in ("pe", "de", "read_side", "read_bytes"):
                    if c in b:
                        cols[c][j] = b[c]
                for c in ("queue_s", "read_s", "prefill_s", "kv_transfer_s"):
                    if c in b:
                        cols[c][j] = b[c]
            self.sink.requests(cols)
        self.rows = []


async def _run(cluster: Cluster, scenario: dict, trace: Trace, system: str, start_s, not_before_s, sink,
               progress, until_s) -> dict:
    abort = {**ABORT_DEFAULTS, **(scenario.get("abort") or {})}
    cfg = DriverConfig(url=cluster.router_url, model="dualpath-live", timeout_s=600.0, token_ids=True,
                       seed=int(scenario.get("seed", 1)), stall_timeout_s=60.0,
                       max_consecutive_failures=int(abort["max_consecutive_failures"]),
                       window_requests=int(abort["window_requests"]),
                       max_failure_share=float(abort["max_failure_share"]))
    join = _JoinSink(sink)
    driver = Driver(cfg, trace, system, join, start_s=start_s, not_before_s=not_before_s, progress=progress)
    driver.stop_at_s = until_s
    crashed: list[str] = []

    async def watch():
        while True:
            await asyncio.sleep(0.2)
            dead = cluster.dead()
            if dead and not crashed:
                crashed.extend(dead)
    watcher = asyncio.create_task(watch())
    links = LinkSampler(system, cluster.metrics_urls, float(scenario["telemetry"]["window_s"]))
    sampler = asyncio.create_task(links.run())
    try:
        facts = await driver.run()
    finally:
        watcher.cancel()
        sampler.cancel()
        t_end = (time.perf_counter_ns() - driver.t0_ns) * 1e-9
        breakdowns = {}
        rows = await links.finish(t_end)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            try:
                async with s.get(cluster.router_url + "/breakdowns") as r:
                    breakdowns = await r.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
        join.flush(breakdowns)
        if rows["system"]:
            sink.links(rows)
        engine_urls = {name: f"http://127.0.0.1:{p['http_port']}" for name, p in cluster.ports.items()
                       if name.startswith(("pe", "de"))}
        steps = live_engines.rows(system, await live_engines.fetch(engine_urls), driver.t0_ns * 1e-9, t_end,
                                  float(scenario["telemetry"]["window_s"]))
        if steps["system"]:
            sink.engines(steps)
    if crashed:
        facts["driver"]["crashed"] = crashed
        if not facts["driver"].get("aborted") and facts["driver"].get("requests_failed"):
            facts["driver"]["aborted"] = f"aborted: cluster part(s) {', '.join(crashed)} died mid-run"
    return facts


def run_system(scenario: dict, trace: Trace, system: str, start_s: np.ndarray, not_before_s, sink,
               progress=None, until_s: float | None = None) -> dict:
    with Cluster(scenario, system, trace) as cluster:
        facts = asyncio.run(_run(cluster, scenario, trace, system, start_s, not_before_s, sink, progress, until_s))
    facts["live"] = {"transport": cluster.live["transport"], "time_scale": cluster.live["time_scale"],
                     "pids": cluster.pids()}
    return facts
