"""The live cluster's per-link byte counters as `links.parquet` rows, one per telemetry window.

The parts' `/metrics` (`dualpath_link_bytes_total{device, direction, traffic}`) are scraped at every window
boundary of the run's clock; a row holds what a counter moved in that window ([k w, (k+1) w), the last one
ends with the run), so the rows of a counter add up to its total, and idle windows have no rows (as the
simulator's). The window is the scenario's `telemetry.window_s`, widened to a whole multiple of it of at
least MIN_WINDOW_S: a scrape of every part takes a few ms, and the report's figures need equal windows.
"""
from __future__ import annotations

import asyncio
import math
import time

import aiohttp

from engines.contract import LINK_COLUMNS
from harness.prometheus import parse

MIN_WINDOW_S = 0.2
COUNTER = "dualpath_link_bytes_total"


def window_for(window_s: float) -> float:
    return window_s * max(1, math.ceil(MIN_WINDOW_S / window_s - 1e-9))


class LinkSampler:
    def __init__(self, system: str, metrics_urls: dict[str, str], window_s: float):
        self.system = system
        self.urls = metrics_urls
        self.width = window_for(window_s)
        self.last: dict[tuple, float] = {}      # counter -> its value at the last scrape
        self.t_last = 0.0
        self.rows = {c: [] for c in LINK_COLUMNS}
        self.t0 = time.perf_counter()

    async def scrape(self, session: aiohttp.ClientSession) -> dict[tuple, float]:
        async def one(url):
            try:
                async with session.get(url) as r:
                    return parse(await r.text())
            except (aiohttp.ClientError, TimeoutError):
                return []  # a part that is gone: its counters keep their last values
        now: dict[tuple, float] = {}
        for samples in await asyncio.gather(*(one(u) for u in self.urls.values())):
            for name, labels, value in samples:
                if name == COUNTER:
                    now[(labels["device"], labels["direction"], labels["traffic"])] = value
        return now

    def close_window(self, now: dict[tuple, float], t_end: float) -> None:
        for key, value in now.items():
            moved = int(value - self.last.get(key, 0.0))
            if moved <= 0:
                continue
            device, direction, traffic = key
            node, _, link = device.partition("_")
            for col, v in (("system", self.system), ("t_start", self.t_last), ("t_end", t_end), ("node", node),
                           ("link", link), ("direction", direction), ("bytes", moved), ("traffic", traffic)):
                self.rows[col].append(v)
            self.last[key] = value
        self.t_last = t_end

    async def run(self) -> None:
        """Scrape at every window boundary until cancelled."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            k = 1
            while True:
                await asyncio.sleep(max(0.0, self.t0 + k * self.width - time.perf_counter()))
                now = await self.scrape(s)
                self.close_window(now, k * self.width)
                k += 1

    async def finish(self, t_end: float) -> dict:
        """The last (partial) window, ending at `t_end` on the run's clock; every row."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            self.close_window(await self.scrape(s), max(t_end, self.t_last))
        return self.rows
