"""The live router's overhead per request (issue 14).

    .venv/bin/python benchmarks/bench_router.py [--requests 300]

A 1P1D live cluster (the profiles of scenarios/live/io-bound-1p1d.yaml) whose modeled compute is scaled to
nothing (`live.time_scale` 1e-6) serves requests of 48 prompt tokens (less than a Full Block: no storage
read, no write-back) and `max_tokens` 1, so a request's latency is its control path alone. Measured, each
as the median and p90 of `--requests` requests sent one at a time:
- `floor`: `GET /v1/models` through the router (the HTTP round trip and nothing else);
- `router`: `POST /v1/completions` through the router (hit lookup, dispatch, PE /prefill, DE /decode);
- `direct`: the same request's engine calls made straight from this process, as the router makes them
  (storage /hit, then PE /prefill and DE /decode at once), without the router;
- the router's overhead: router - direct, request by request (the three are sent in turn, so the host's
  load drifts alike over them); and `router` throughput with 16 requests in flight;
- `dispatcher`: one request's submit + dispatch + prefill_done + decode_done in this process (engines/policy).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = 48
SYSTEM = "dualpath"
LAYERWISE = True  # as the router asks for SYSTEM


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _measure(cluster, n: int) -> dict:
    url = cluster.router_url
    parts = cluster.ports
    base = iter(range(10**6, 10**9, PROMPT))

    def body():
        start = next(base)
        return {"prompt": list(range(start, start + PROMPT)), "max_tokens": 1}

    async def timed(coro_fn):
        t = time.perf_counter()
        await coro_fn()
        return time.perf_counter() - t

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def floor():
            async with s.get(url + "/v1/models") as r:
                await r.read()

        async def router():
            async with s.post(url + "/v1/completions", json=body()) as r:
                assert r.status == 200, await r.text()
                await r.read()

        rid = iter(range(10**9))

        async def direct():
            b = body()
            r_id = f"direct{next(rid)}"
            pe, de = parts["pe0"], parts["de0"]
            async with s.post(f"http://127.0.0.1:{parts['storage']['http_port']}/hit", json={"keys": []}) as r:
                await r.json()

            async def prefill():
                async with s.post(f"http://127.0.0.1:{pe['http_port']}/prefill", json={
                        "rid": r_id, "prompt_tokens": PROMPT, "keys": [], "read_side": "none", "layerwise": LAYERWISE,
                        "de": {"host": "127.0.0.1", "data_port": de["data_port"]}}) as r:
                    assert "error" not in await r.json()

            async def decode():
                async with s.post(f"http://127.0.0.1:{de['http_port']}/decode", json={
                        "rid": r_id, "prompt": b["prompt"], "max_tokens": 1, "hit_blocks": 0}) as r:
                    assert b'"done"' in await r.read()
            await asyncio.gather(prefill(), decode())

        out = {"floor": [], "router": [], "direct": []}
        fns = (("floor", floor), ("router", router), ("direct", direct))
        for _, fn in fns:
            for _ in range(10):  # warm: connections, the PE->DE channel
                await fn()
        for _ in range(n):  # interleaved, so the host's load drifts alike over the three
            for name, fn in fns:
                out[name].append(await timed(fn))
        out["overhead"] = [r - d for r, d in zip(out["router"], out["direct"])]
        t = time.perf_counter()
        sem = asyncio.Semaphore(16)

        async def one():
            async with sem:
                await router()
        await asyncio.gather(*(one() for _ in range(n)))
        out["throughput"] = n / (time.perf_counter() - t)
    return out


def dispatcher_us(n: int = 20_000) -> float:
    from engines.policy import SYSTEMS, EngineView
    from engines.policy.dispatch import Dispatcher
    pes = [EngineView(id=0, node=0)]
    des = [EngineView(id=0, node=1, hbm_free_bytes=1e12)]
    d = Dispatcher(SYSTEMS["dualpath"], pes, des, nodes=2, alpha=1e9, beta=1e9, z_factor=1.05)
    t = time.perf_counter()
    for i in range(n):
        d.submit(i, PROMPT, 1e6, 0)
        (x,) = d.dispatch()
        d.prefill_done(x.pe, PROMPT)
        d.decode_done(x.de, PROMPT, 1e6)
    return (time.perf_counter() - t) / n * 1e6


def bench_router(requests: int) -> str:
    from harness import backend_live
    from harness.scenario import load_scenario
    scenario = load_scenario(str(ROOT / "scenarios" / "live" / "io-bound-1p1d.yaml"), ["live.time_scale=1.0e-6"])
    with backend_live.Cluster(scenario, SYSTEM) as cluster:
        out = asyncio.run(_measure(cluster, requests))
    med = {k: statistics.median(v) * 1e3 for k, v in out.items() if isinstance(v, list)}
    p90 = {k: _pct(v, 0.9) * 1e3 for k, v in out.items() if isinstance(v, list)}
    print(f"\n{'path':>8} {'median ms':>10} {'p90 ms':>8}")
    for k in med:
        print(f"{k:>8} {med[k]:>10.2f} {p90[k]:>8.2f}")
    disp = dispatcher_us()
    return (f"router overhead {med['overhead']:.2f} ms/request (median of router - direct, request by request; "
            f"router {med['router']:.2f}, direct {med['direct']:.2f}, HTTP floor {med['floor']:.2f}), "
            f"{out['throughput']:.0f} requests/s with 16 in flight, dispatcher {disp:.1f} us/request")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    print("SUMMARY\n" + bench_router(args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
