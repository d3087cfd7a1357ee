"""`backend: http`: run a scenario's trace against an external OpenAI-compatible endpoint.

Before each system, `endpoint.reset_url` (if given) is POSTed so every system starts with a cold
cache (vLLM: /reset_prefix_cache, SGLang: /flush_cache). The API key is read from the environment
variable `endpoint.api_key_env` and never written anywhere.
"""
from __future__ import annotations

import asyncio

import aiohttp
import numpy as np

from harness.driver import Driver, DriverConfig, api_key_from
from harness.prometheus import Scraper
from traces.errors import InputError
from traces.schema import Trace


def driver_config(scenario: dict) -> DriverConfig:
    ep = scenario["endpoint"]
    name = ep.get("api_key_env")
    key = api_key_from(ep)
    if name and key is None:
        raise InputError(f"environment variable {name} is not set", field="endpoint.api_key_env")
    return DriverConfig(url=ep["url"], model=ep.get("model"), api_key=key, timeout_s=float(ep.get("timeout_s", 600.0)),
                        ignore_eos=bool(ep.get("ignore_eos", True)), token_ids=bool(ep.get("token_ids", True)),
                        max_concurrency=scenario.get("max_concurrency"), seed=int(scenario.get("seed", 1)))


def check(scenario: dict, trace: Trace) -> None:
    """Nothing to check before a run: the endpoint is not ours."""


async def reset_cache(url: str, api_key: str | None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            async with s.post(url, headers=headers) as resp:
                if resp.status >= 300:
                    raise InputError(f"resetting the cache failed: HTTP {resp.status}", field="endpoint.reset_url")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise InputError(f"resetting the cache failed: {type(exc).__name__}: {exc}".splitlines()[0],
                         field="endpoint.reset_url") from None


async def _run(cfg: DriverConfig, scenario: dict, trace: Trace, system: str, start_s, not_before_s, sink,
               progress, until_s: float | None) -> dict:
    ep = scenario["endpoint"]
    if ep.get("reset_url"):
        await reset_cache(ep["reset_url"], cfg.api_key)
    driver = Driver(cfg, trace, system, sink, start_s=start_s, not_before_s=not_before_s, progress=progress)
    driver.stop_at_s = until_s
    urls = ep.get("prometheus") or []
    scrape = None
    if urls:
        window = float(scenario["telemetry"]["window_s"])
        scraper = Scraper(urls, system, sink, window, 0)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

        async def scraping():
            scraper.t0_ns = driver.t0_ns
            await scraper.run(session)
        scrape = asyncio.create_task(scraping())
    try:
        facts = await driver.run()
    finally:
        if scrape is not None:
            scrape.cancel()
            await asyncio.gather(scrape, return_exceptions=True)
            await session.close()
    if urls:
        facts["driver"]["prometheus_failures"] = scraper.failures
    return facts


def run_system(scenario: dict, trace: Trace, system: str, start_s: np.ndarray, not_before_s, sink,
               progress=None, until_s: float | None = None) -> dict:
    """Replay the trace against the endpoint; with `until_s`, rounds scheduled after it are not sent."""
    cfg = driver_config(scenario)
    return asyncio.run(_run(cfg, scenario, trace, system, start_s, not_before_s, sink, progress, until_s))
