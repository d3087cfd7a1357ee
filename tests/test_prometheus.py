"""harness.prometheus: scraping on the telemetry window grid, bytes spread over aligned windows, odd labels.

The live tests run a Prometheus-like aiohttp server on 127.0.0.1 (a free port) in the test's own event loop
and stop it before they end; they wait for the server to have seen N scrapes (an event), never for time.
"""
from __future__ import annotations

import asyncio
import math
import time

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.prometheus import Scraper, parse, spread

URL = "http://node-a:9100/metrics"


class Sink:
    def __init__(self):
        self.link_rows: list[dict] = []
        self.engine_rows: list[dict] = []

    def links(self, batch):
        n = len(batch["bytes"])
        assert all(len(v) == n for v in batch.values())
        self.link_rows += [{k: batch[k][i] for k in batch} for i in range(n)]

    def engines(self, batch):
        self.engine_rows += [{k: batch[k][i] for k in batch} for i in range(len(batch["t"]))]


def exposition(rx: int, tx: int = 0, extra: str = "") -> str:
    return (f'# TYPE node_network_receive_bytes_total counter\n'
            f'node_network_receive_bytes_total{{device="mlx5_0"}} {rx}\n'
            f'node_network_transmit_bytes_total{{device="mlx5_0"}} {tx}\n'
            f'vllm:num_requests_running 3\nvllm:num_requests_waiting 1\n{extra}')


# ----- spreading a counter's delta over aligned windows ----------------------------------------------
@settings(max_examples=300, deadline=None)
@given(total=st.integers(0, 10**12), t0=st.floats(0, 100), length=st.floats(0, 20),
       window=st.sampled_from([0.001, 0.1, 0.25, 1.0, 3.0]))
def test_spread_is_whole_bytes_summing_to_the_delta_in_proportion_to_overlap(total, t0, length, window):
    t1 = t0 + length
    parts = spread(total, t0, t1, window)
    assert sum(b for _, b in parts) == total
    assert all(b > 0 for _, b in parts)
    ks = [k for k, _ in parts]
    assert ks == sorted(set(ks))
    if parts and t1 > t0:
        assert math.floor(t0 / window) - 1 <= ks[0] and ks[-1] <= math.floor(t1 / window) + 1
        for k, b in parts:
            overlap = max(0.0, min(t1, (k + 1) * window) - max(t0, k * window))
            assert abs(b - total * overlap / (t1 - t0)) <= 1 + total * 1e-9, (k, b)


def test_spread_examples():
    assert spread(100, 0.5, 1.5, 1.0) == [(0, 50), (1, 50)]
    assert spread(100, 0.0, 1.0, 1.0) == [(0, 100)]       # ends on a boundary: not in the next window
    assert spread(90, 0.5, 3.5, 1.0) == [(0, 15), (1, 30), (2, 30), (3, 15)]
    assert spread(7, 2.0, 2.0, 1.0) == [(2, 7)]
    assert spread(0, 0.0, 5.0, 1.0) == []


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0.001, 2.5), st.integers(0, 10**9)), min_size=1, max_size=30),
       window=st.sampled_from([0.1, 0.25, 1.0]), start=st.floats(0, 0.5))
def test_take_writes_aligned_windows_that_add_up(steps, window, start):
    """Scrapes at any times (late, missed, bunched): rows are the fixed windows, the bytes all there."""
    sink = Sink()
    scraper = Scraper([URL], "sys", sink, window, 0)
    t, rx = start, 10**6
    scraper.take(URL, parse(exposition(rx)), t)
    samples = [(t, rx)]
    for dt, moved in steps:
        t, rx = t + dt, rx + moved
        scraper.take(URL, parse(exposition(rx)), t)
        samples.append((t, rx))
        assert all(r["t_end"] <= t + 1e-9 for r in sink.link_rows), "a window written before its end was scraped"
    scraper.flush()
    rows = [r for r in sink.link_rows if r["direction"] == "rx"]
    assert sum(r["bytes"] for r in rows) == rx - 10**6
    assert not [r for r in sink.link_rows if r["direction"] == "tx"]  # tx never moved: no rows
    keys = set()
    for r in rows:
        k = round(r["t_start"] / window)
        assert r["t_start"] == k * window and r["t_end"] == (k + 1) * window
        assert (r["node"], r["link"], r["traffic"], r["system"]) == ("node-a:9100", "mlx5_0", "other", "sys")
        assert k not in keys, "one row per window and counter"
        keys.add(k)
    # each window holds what the counter, linear between scrapes, moved in it (to a byte per scrape)
    for r in rows:
        expected = 0.0
        for (ta, va), (tb, vb) in zip(samples, samples[1:]):
            overlap = max(0.0, min(tb, r["t_end"]) - max(ta, r["t_start"]))
            expected += (vb - va) * overlap / (tb - ta)
        assert abs(r["bytes"] - expected) <= len(samples) + 1e-6 * expected


def test_counter_reset_and_nan_values_are_skipped():
    sink = Sink()
    s = Scraper([URL], "sys", sink, 1.0, 0)
    for t, rx in ((0.0, 1000), (1.0, 3000), (2.0, 500), (3.0, float("nan")), (4.0, 900)):
        s.take(URL, [("node_network_receive_bytes_total", {"device": "eth0"}, rx)], t)
    s.flush()
    assert [(r["t_start"], r["bytes"]) for r in sink.link_rows] == [(0.0, 2000), (2.0, 200), (3.0, 200)]


@pytest.mark.parametrize("labels", ['{device=""}', '{interface=""}', '{device="",interface=""}', '{}'])
def test_byte_counters_without_a_device_are_ignored(labels):
    sink = Sink()
    s = Scraper([URL], "sys", sink, 1.0, 0)
    for t, v in ((0.0, 100), (1.5, 400), (3.0, 900)):
        s.take(URL, parse(f"node_network_receive_bytes_total{labels} {v}\n"
                          f'node_network_receive_bytes_total{{device="",interface="ib0"}} {v}\n'), t)
    s.flush()
    assert {r["link"] for r in sink.link_rows} == {"ib0"}  # an empty device falls back to the interface
    assert sum(r["bytes"] for r in sink.link_rows) == 800


# ----- live: a server, the scraper's own schedule ----------------------------------------------------------
class MetricsServer:
    """/metrics with byte counters that grow with time; each scrape answered after `delay_s`."""

    def __init__(self, delay_s: float, extra: str = ""):
        self.delay_s, self.extra = delay_s, extra
        self.scrapes: list[tuple[int, int]] = []  # (perf_counter_ns on arrival, rx counter served)
        self.enough = asyncio.Event()
        self.want = 0
        self.t_start_ns = time.perf_counter_ns()

    async def metrics(self, request):
        t = time.perf_counter_ns()
        rx = (t - self.t_start_ns) // 1000  # 1 MB/s
        self.scrapes.append((t, rx))
        if len(self.scrapes) > self.want:  # the scraper has taken `want` answers (one request at a time)
            self.enough.set()
        await asyncio.sleep(self.delay_s)  # a slow exporter: the answer comes later than the read
        return web.Response(text=exposition(rx, 2 * rx, self.extra))

    async def __aenter__(self):
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


async def scrape_until(server: MetricsServer, window_s: float, scrapes: int) -> tuple[Sink, Scraper, object]:
    """Run a scraper until it has taken `scrapes` answers (and sent the next request), then stop it."""
    sink = Sink()
    server.want = scrapes
    async with aiohttp.ClientSession() as session:
        scraper = Scraper([server.url], "ext", sink, window_s, 0)
        scraper.t0_ns = time.perf_counter_ns()  # as backend_http does: the run's clock, set before it runs
        task = asyncio.create_task(scraper.run(session))
        enough = asyncio.create_task(server.enough.wait())
        try:  # until the server saw enough scrapes, or the scraper ended (it must not, by itself)
            await asyncio.wait({task, enough}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        finally:
            enough.cancel()
            task.cancel()
            (outcome,) = await asyncio.gather(task, return_exceptions=True)
            await asyncio.gather(enough, return_exceptions=True)
    return sink, scraper, outcome


def test_scrapes_follow_the_window_grid_and_rows_are_aligned():
    """A slow exporter (80 ms per scrape, 250 ms windows) does not push the scrapes off the grid."""
    window, delay = 0.25, 0.08

    async def main():
        async with MetricsServer(delay) as server:
            sink, scraper, outcome = await scrape_until(server, window, 6)
        return server, sink, scraper, outcome

    server, sink, scraper, outcome = asyncio.run(main())
    assert isinstance(outcome, asyncio.CancelledError), outcome
    assert scraper.failures == 0
    times = [(t - scraper.t0_ns) * 1e-9 for t, _ in server.scrapes]
    for t in times:  # each at a window boundary (allowing for this VM's timer and loop), never drifting
        assert t - math.floor(t / window) * window < 0.06, times
    assert times[0] < 0.06, "the first scrape is the baseline at the run's start"
    grid = [math.floor(t / window) for t in times]
    assert grid == sorted(set(grid)), times
    node = f"127.0.0.1:{server.port}"
    rows = sink.link_rows
    assert rows and {(r["node"], r["link"]) for r in rows} == {(node, "mlx5_0")}
    for r in rows:
        k = round(r["t_start"] / window)
        assert (r["t_start"], r["t_end"]) == (k * window, (k + 1) * window)
    served = [rx for _, rx in server.scrapes[:6]]  # the 7th was in flight when the scraper stopped
    # every scrape was answered and counted: all the bytes between the first and the last are in the rows
    assert sum(r["bytes"] for r in rows if r["direction"] == "rx") == served[-1] - served[0]
    assert sum(r["bytes"] for r in rows if r["direction"] == "tx") == 2 * (served[-1] - served[0])
    # a window fully between two scrapes holds about 1 MB/s x 250 ms
    inner = [r["bytes"] for r in rows if r["direction"] == "rx" and 0 < r["t_start"] and r["t_end"] <= times[-2]]
    assert inner and all(abs(b - 250_000) < 0.5 * 250_000 for b in inner), inner
    assert sink.engine_rows and {(e["engine"], e["batch_requests"], e["queued_tokens"])
                                 for e in sink.engine_rows} == {(node, 3, 1)}


def test_an_empty_device_label_does_not_stop_the_scraper():
    async def main():
        async with MetricsServer(0.0, extra='node_network_receive_bytes_total{device=""} 12345\n') as server:
            sink, scraper, outcome = await scrape_until(server, 0.05, 4)
        return server, sink, scraper, outcome

    server, sink, scraper, outcome = asyncio.run(main())
    assert isinstance(outcome, asyncio.CancelledError), outcome  # it was still scraping when stopped
    assert len(server.scrapes) == 5 and scraper.failures == 0
    served = [rx for _, rx in server.scrapes[:4]]
    assert sum(r["bytes"] for r in sink.link_rows if r["direction"] == "rx") == served[-1] - served[0]
