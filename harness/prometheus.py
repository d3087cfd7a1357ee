"""Scrape Prometheus endpoints during a run, on the telemetry window grid.

Byte counters (`*_bytes_total` with a non-empty device/interface label, e.g. node-exporter's
`node_network_receive_bytes_total{device="mlx5_0"}`) become links rows: direction rx for
receive/read counters and tx otherwise, traffic `other`. Server gauges of running and waiting requests
(vLLM `vllm:num_requests_running` / `_waiting`, SGLang `sglang:num_running_reqs` / `num_queue_reqs`)
become engines rows with role `server`, at the time of the scrape. Everything else (a byte counter
whose device is empty, too) is ignored. A scrape that fails is counted, never fatal.

Windows are those of DESIGN.md's links contract: fixed, `[k w, (k+1) w)` from the run's start for
`w = telemetry.window_s`. Each endpoint is scraped at the run's start and then at every window
boundary (deadlines `k w` on the run's clock, so lateness never accumulates; a deadline already past
is skipped, not caught up). A scrape's time is the middle of its request; the bytes a counter moved
between two scrapes are spread over the windows that interval covers, in proportion to the overlap
(whole bytes, summing exactly to the counter's delta). A window's row (one per counter that moved
in it) is written once a scrape has passed its end; at the end of the run, whatever was measured of
the last windows.
"""
from __future__ import annotations

import asyncio
import math
import re
import time
from urllib.parse import urlparse

import aiohttp

from engines.contract import LINK_COLUMNS, spread_whole_bytes as spread

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
    """Scrapes `urls` on the window grid of a run that started at `t0_ns` (perf_counter_ns) into `sink`."""

    def __init__(self, urls: list[str], system: str, sink, window_s: float, t0_ns: int):
        self.urls = urls
        self.system = system
        self.sink = sink
        self.window_s = window_s
        self.t0_ns = t0_ns
        self.last: dict[tuple, tuple[float, float]] = {}   # (url, metric, device) -> (t, counter value)
        self.pending: dict[tuple, int] = {}                 # (url, metric, device, window) -> bytes
        self.failures = 0
        self.tries: dict[str, int] = {url: 0 for url in urls}
        self.scraped: dict[str, int] = {url: 0 for url in urls}
        self.last_error: dict[str, str] = {}

    def _now(self) -> float:
        return (time.perf_counter_ns() - self.t0_ns) * 1e-9

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Scrape now, then at every window boundary, until cancelled; then write what is pending."""
        try:
            k = 0
            while True:
                await asyncio.gather(*(self._scrape(session, url) for url in self.urls))
                k = max(k + 1, math.floor(self._now() / self.window_s) + 1)  # the next deadline not yet past
                delay = k * self.window_s - self._now()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            self.flush()

    async def _scrape(self, session: aiohttp.ClientSession, url: str) -> None:
        sent = self._now()
        self.tries[url] = self.tries.get(url, 0) + 1
        try:
            async with asyncio.timeout(max(1.0, self.window_s)):
                async with session.get(url) as resp:
                    if resp.status != 200:
                        self.failures += 1
                        self.last_error[url] = f"HTTP {resp.status}"
                        return
                    text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError) as exc:
            self.failures += 1
            self.last_error[url] = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__).splitlines()[0]
            return
        self.scraped[url] = self.scraped.get(url, 0) + 1
        self.take(url, parse(text), (sent + self._now()) / 2)

    def warnings(self) -> list[str]:
        """One line per URL whose every scrape failed (its NIC and engine telemetry is missing)."""
        return [f"Prometheus {url}: every scrape failed ({n} tries; last: {self.last_error.get(url, '?')}): "
                "links.parquet and engines.parquet hold nothing from it"
                for url, n in self.tries.items() if n and not self.scraped.get(url)]

    def take(self, url: str, samples, t: float) -> None:
        """One scrape of `url` whose counters were read at time `t` (seconds from the run's start)."""
        node = urlparse(url).netloc or url
        running = waiting = None
        for name, labels, value in samples:
            if name.endswith("_bytes_total"):
                dev = labels.get("device") or labels.get("interface")
                if not dev:
                    continue  # no link to put the bytes on
                key = (url, name, dev)
                prev = self.last.get(key)
                if not math.isfinite(value):
                    continue
                self.last[key] = (t, value)
                if prev is None or value < prev[1]:
                    continue  # the first sample, or a counter reset
                for k, nbytes in spread(int(value - prev[1]), prev[0], t, self.window_s):
                    self.pending[(*key, k)] = self.pending.get((*key, k), 0) + nbytes
            elif name in RUNNING:
                running = (running or 0) + value
            elif name in WAITING:
                waiting = (waiting or 0) + value
        self._write_links(lambda u, k: u == url and (k + 1) * self.window_s <= t)
        if running is not None or waiting is not None:
            self.sink.engines({
                "system": [self.system], "t": [t], "engine": [node], "role": ["server"],
                "batch_requests": [int(running or 0)], "batch_tokens": [0], "attention_s": [math.nan],
                "step_s": [math.nan], "queued_tokens": [int(waiting or 0)], "read_queue_tokens": [0]})

    def flush(self) -> None:
        """Write every pending window (the run is over: the last ones hold what was measured of them)."""
        self._write_links(lambda u, k: True)

    def _write_links(self, done) -> None:
        ready = sorted((key for key in self.pending if done(key[0], key[3])), key=lambda key: (key[3], key[:3]))
        if not ready:
            return
        rows = {c: [] for c in LINK_COLUMNS}
        for key in ready:
            url, name, dev, k = key
            nbytes = self.pending.pop(key)
            rows["system"].append(self.system)
            rows["t_start"].append(k * self.window_s)
            rows["t_end"].append((k + 1) * self.window_s)
            rows["node"].append(urlparse(url).netloc or url)
            rows["link"].append(re.sub(r"[^a-z0-9_:.-]", "_", dev.lower()))
            rows["direction"].append("rx" if ("receive" in name or "_rx" in name or "read" in name) else "tx")
            rows["bytes"].append(nbytes)
            rows["traffic"].append("other")
        self.sink.links(rows)
