"""Scrape Prometheus endpoints during a run, once per telemetry window.

Byte counters (`*_bytes_total` with a device/interface label, e.g. node-exporter's
`node_network_receive_bytes_total{device="mlx5_0"}`) become links rows: bytes moved in the window
(counter deltas), direction rx for receive/read counters and tx otherwise, traffic `other`. Server
gauges of running and waiting requests (vLLM `vllm:num_requests_running` / `_waiting`, SGLang
`sglang:num_running_reqs` / `num_queue_reqs`) become engines rows with role `server`. Everything else
is ignored. A scrape that fails is counted, never fatal.
"""
from __future__ import annotations

import asyncio
import math
import re
import time
from urllib.parse import urlparse

import aiohttp

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfINFNa]+)(?:\s+\d+)?\s*$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")


def parse(text: str) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of every sample line of a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line.strip())
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = dict(LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, value))
    return out


class Scraper:
    def __init__(self, urls: list[str], system: str, sink, window_s: float, t0_ns: int):
        self.urls = urls
        self.system = system
        self.sink = sink
        self.window_s = window_s
        self.t0_ns = t0_ns
        self.last: dict[tuple, float] = {}
        self.failures = 0

    def _now(self) -> float:
        return (time.perf_counter_ns() - self.t0_ns) * 1e-9

    async def run(self, session: aiohttp.ClientSession) -> None:
        t_prev = self._now()
        while True:
            await asyncio.sleep(self.window_s)
            t = self._now()
            await asyncio.gather(*(self._scrape(session, url, t_prev, t) for url in self.urls))
            t_prev = t

    async def _scrape(self, session: aiohttp.ClientSession, url: str, t0: float, t1: float) -> None:
        try:
            async with asyncio.timeout(max(1.0, self.window_s)):
                async with session.get(url) as resp:
                    if resp.status != 200:
                        self.failures += 1
                        return
                    text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError):
            self.failures += 1
            return
        self.take(url, parse(text), t0, t1)

    def take(self, url: str, samples, t0: float, t1: float) -> None:
        node = urlparse(url).netloc or url
        links = {k: [] for k in ("system", "t_start", "t_end", "node", "link", "direction", "bytes", "traffic")}
        running = waiting = None
        for name, labels, value in samples:
            if name.endswith("_bytes_total") and ("device" in labels or "interface" in labels):
                dev = labels.get("device") or labels.get("interface")
                key = (url, name, dev)
                prev = self.last.get(key)
                self.last[key] = value
                if prev is None or value < prev or not math.isfinite(value):
                    continue  # first sample, or a counter reset
                links["system"].append(self.system)
                links["t_start"].append(t0)
                links["t_end"].append(t1)
                links["node"].append(node)
                links["link"].append(re.sub(r"[^a-z0-9_:.-]", "_", dev.lower()))
                links["direction"].append("rx" if ("receive" in name or "_rx" in name or "read" in name) else "tx")
                links["bytes"].append(int(value - prev))
                links["traffic"].append("other")
            elif name in RUNNING:
                running = (running or 0) + value
            elif name in WAITING:
                waiting = (waiting or 0) + value
        if links["bytes"]:
            self.sink.links(links)
        if running is not None or waiting is not None:
            self.sink.engines({
                "system": [self.system], "t": [t1], "engine": [node], "role": ["server"],
                "batch_requests": [int(running or 0)], "batch_tokens": [0], "attention_s": [math.nan],
                "step_s": [math.nan], "queued_tokens": [int(waiting or 0)], "read_queue_tokens": [0]})
