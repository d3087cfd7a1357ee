"""`backend: http`: run a scenario's trace against an external OpenAI-compatible endpoint.

Before each system, `endpoint.reset_url` (if given) is POSTed so every system starts with a cold
cache (vLLM: /reset_prefix_cache, SGLang: /flush_cache); it is tried once before anything is written,
so a wrong one is bad input (exit 2, no results directory), and one failing later aborts the run. The
API key is read from the environment variable `endpoint.api_key_env` and never written anywhere.
"""
from __future__ import annotations

import asyncio

import aiohttp
import numpy as np

from harness.driver import ABORT_DEFAULTS, STALL_TIMEOUT_S, Driver, DriverConfig, api_key_from, words_for
from harness.prometheus import Scraper
from traces.errors import InputError
from traces.schema import Trace


def driver_config(scenario: dict) -> DriverConfig:
    ep = scenario["endpoint"]
    name = ep.get("api_key_env")
    key = api_key_from(ep)
    if name and key is None:
        raise InputError(f"environment variable {name} is not set", field="endpoint.api_key_env")
    abort = {**ABORT_DEFAULTS, **(scenario.get("abort") or {})}
    if ep.get("prompt") == "text":
        words_for(ep.get("tokenizer"))  # a tokenizer that cannot be read fails before anything runs
    return DriverConfig(url=ep["url"], model=ep.get("model"), api_key=key, timeout_s=float(ep.get("timeout_s", 600.0)),
                        ignore_eos=bool(ep.get("ignore_eos", True)), token_ids=bool(ep.get("token_ids", True)),
                        max_concurrency=scenario.get("max_concurrency"), seed=int(scenario.get("seed", 1)),
                        api=ep.get("api", "completions"), prompt=ep.get("prompt", "token_ids"),
                        tokenizer=ep.get("tokenizer"), headers=ep.get("headers"), extra_body=ep.get("extra_body"),
                        stall_timeout_s=float(ep.get("stall_timeout_s", STALL_TIMEOUT_S)),
                        max_consecutive_failures=int(abort["max_consecutive_failures"]),
                        window_requests=int(abort["window_requests"]),
                        max_failure_share=float(abort["max_failure_share"]))


def check(scenario: dict, trace: Trace) -> None:
    """Before anything is written: a reset_url that does not answer is bad input (file and key named)."""
    ep = scenario["endpoint"]
    if ep.get("reset_url"):
        try:
            asyncio.run(reset_cache(ep["reset_url"], api_key_from(ep), ep.get("headers")))
        except InputError as exc:
            raise exc.at(scenario.get("_path")) from None


async def reset_cache(url: str, api_key: str | None, headers: dict | None = None) -> None:
    headers = {**(headers or {}), **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            async with s.post(url, headers=headers) as resp:
                if resp.status >= 300:
                    raise InputError(f"resetting the cache failed: POST {url} answered HTTP {resp.status}",
                                     field="endpoint.reset_url")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        problem = f"resetting the cache failed: POST {url}: {type(exc).__name__}: {exc}".splitlines()[0]
        if api_key:
            problem = problem.replace(api_key, "<api key>")
        raise InputError(problem, field="endpoint.reset_url") from None


async def _run(cfg: DriverConfig, scenario: dict, trace: Trace, system: str, start_s, not_before_s, sink,
               progress, until_s: float | None) -> dict:
    ep = scenario["endpoint"]
    if ep.get("reset_url"):
        try:
            await reset_cache(ep["reset_url"], cfg.api_key, cfg.headers)
        except InputError as exc:  # checked before the run, so the endpoint failed since: the run is over
            return {"driver": {"requests_sent": 0, "requests_failed": 0, "aborted": f"aborted: {exc.problem}",
                               "commonest_error": exc.problem}}
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
        if scraper.warnings():
            facts["driver"]["warnings"] = scraper.warnings()
    return facts


def run_system(scenario: dict, trace: Trace, system: str, start_s: np.ndarray, not_before_s, sink,
               progress=None, until_s: float | None = None) -> dict:
    """Replay the trace against the endpoint; with `until_s`, rounds scheduled after it are not sent."""
    cfg = driver_config(scenario)
    return asyncio.run(_run(cfg, scenario, trace, system, start_s, not_before_s, sink, progress, until_s))
