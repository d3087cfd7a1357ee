"""The open-loop driver: replays a trace against an OpenAI-compatible endpoint.

Open loop across agents (each agent starts at its scheduled time whatever the server is doing), closed
loop inside an agent (round r+1 is scheduled when round r ends, plus its tool latency, and not before
its trace timestamp in trace replay). Latency counts from the *scheduled* time, so a backlog in the
client or a cap on requests in flight (`max_concurrency`) shows up in TTFT: no coordinated omission.

One pacer task wakes agents at their scheduled times (timed naps to within a few milliseconds, then a
short yield-spin) and builds each request ahead of its time, in a moment when no other send is due.
The driver measures itself: `pacer_lag_s` (ready to send - scheduled: the harness's own delay, which
includes building the request when a round is due the moment the previous one ends; column
`t_dispatched`) and `dispatch_lag_s` (send - scheduled, adding any wait for the concurrency cap).
Garbage collection is frozen after set-up so a full collection cannot stall the schedule. Rows reach
the results writer in small batches as the run goes.

Every failed request counts toward the abort rules (connection errors, timeouts, stalls, HTTP 4xx/5xx,
malformed or cut streams): the run aborts when `max_consecutive_failures` requests in a row fail, or
when more than `max_failure_share` of the last `window_requests` did; requests in flight are then
cancelled (not recorded) and agents waiting for later rounds are released at once, so a dead, refusing
or hanging endpoint ends the run by itself, keeping every row measured.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import gc
import heapq
import math
import os
import time
from dataclasses import dataclass

import aiohttp
import numpy as np

from engines.contract import output_digest
from harness.http_client import PATHS, READ_BUFSIZE, Completion, complete, request_body
from harness.prompts import AgentContext, TextContext, Words, hash_prompt, hash_text, load_tokenizer
from traces.schema import Trace

PREPARE_S = 0.05           # a request is built up to this long before its send time, in a quiet moment ...
QUIET_S = 0.005            # ... with no other send due within this (a round due as soon as the previous one
                           # ends is built after it: that time is the harness's own lag)
SPIN_S = 0.0015            # the last stretch before a deadline is waited by yielding, not by a timer
NAP_FRACTION = 0.85        # timed waits here overshoot by up to ~6 % of their length (and more in VMs) ...
TIMER_ROUNDING_S = 0.001   # ... plus epoll's rounding up to whole ms: nap short, then nap again
FLUSH_ROWS, FLUSH_S = 256, 1.0
ABORT_DEFAULTS = {"max_consecutive_failures": 20, "window_requests": 100, "max_failure_share": 0.5,
                  "min_ok_share": 0.5}  # scenario `abort.*`; min_ok_share decides the exit code (cli_run)
STALL_TIMEOUT_S = 60.0     # endpoint.stall_timeout_s: a stream with no byte for this long is a timeout
REQUEST_ID_HEADER = "X-Request-Id"  # "<agent_id>/<round>": lets a server's own log be joined to our rows


@dataclass
class DriverConfig:
    url: str                      # the server root; requests go to {url}/v1/completions or .../chat/completions
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 600.0
    ignore_eos: bool = True
    token_ids: bool = True        # ask for the generated token ids (vLLM, SGLang; token-id prompts only)
    max_concurrency: int | None = None
    seed: int = 1
    api: str = "completions"      # completions | chat
    prompt: str = "token_ids"     # token_ids | text
    tokenizer: str | None = None  # a tokenizer.json sizing text prompts exactly
    headers: dict | None = None
    extra_body: dict | None = None
    stall_timeout_s: float | None = STALL_TIMEOUT_S
    max_consecutive_failures: int = ABORT_DEFAULTS["max_consecutive_failures"]
    window_requests: int = ABORT_DEFAULTS["window_requests"]
    max_failure_share: float = ABORT_DEFAULTS["max_failure_share"]


@functools.lru_cache(maxsize=4)
def words_for(tokenizer: str | None) -> Words:
    """The stand-in words of text prompts (one per tokenizer: loading one and filtering the list costs)."""
    return Words(load_tokenizer(tokenizer) if tokenizer else None)


def endpoint_url(url: str, api: str) -> str:
    """{url}/v1/completions or {url}/v1/chat/completions; a url given as OpenAI clients take it
    (ending in /v1) works too."""
    root = url.rstrip("/")
    return (root[:-3] if root.endswith("/v1") else root) + PATHS[api]


def error_kind(error: str | None) -> str:
    """What a failure was, without its details: `HTTP 400`, `ClientConnectorError`, `malformed stream`."""
    return (error or "unknown").split(":")[0][:80]


class Pacer:
    """Wakes waiters at their scheduled times (seconds on the run's perf_counter clock).

    `send_at(t, build)` returns a future that resolves at t (a timed nap to within a few ms, napping
    again while it can since naps here overshoot by a share of their length, then a yield-spin) with
    (wake time, build()). `build` (the request) runs ahead of t, in a quiet moment: at most PREPARE_S
    before t and with no other send due within QUIET_S, so building one request never delays another's
    send; when sends are too dense for a quiet moment it runs QUIET_S before its own send."""

    def __init__(self, t0_ns: int):
        self.t0_ns = t0_ns
        self.heap: list = []    # sends: (t, seq, future, built request)
        self.preps: list = []   # requests to build: (earliest build time, seq, send time, build, future)
        self.seq = 0
        self.wake = asyncio.Event()

    def now(self) -> float:
        return (time.perf_counter_ns() - self.t0_ns) * 1e-9

    def send_at(self, t: float, build) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self.preps, (t - PREPARE_S, self.seq, t, build, fut))
        self.seq += 1
        if self.preps[0][4] is fut:
            self.wake.set()
        return fut

    def _send(self, t: float, seq: int, fut: asyncio.Future, item) -> None:
        heapq.heappush(self.heap, (t, seq, fut, item))
        if self.heap[0][2] is fut:
            self.wake.set()

    def release_all(self) -> None:
        """Wake every waiter now, with no request (the run is ending)."""
        now = self.now()
        for heap in (self.heap, self.preps):
            while heap:
                fut = heapq.heappop(heap)[-1 if heap is self.preps else 2]
                if not fut.done():
                    fut.set_result((now, None))

    def _release(self) -> tuple[float, float]:
        """Send and build what is due; return (next send time, next time a build may run)."""
        sends, preps = self.heap, self.preps
        now = self.now()
        if sends and sends[0][0] <= now:
            while sends and sends[0][0] <= now:
                _, _, fut, item = heapq.heappop(sends)
                if not fut.done():
                    fut.set_result((now, item))
            return (sends[0][0] if sends else math.inf), now  # let them send before building anything
        next_send = sends[0][0] if sends else math.inf
        while preps and preps[0][0] <= now:
            t = preps[0][2]
            if next_send - now <= QUIET_S and now < t - QUIET_S:
                return next_send, t - QUIET_S  # not quiet: wait for the sends due first
            _, seq, t, build, fut = heapq.heappop(preps)
            if fut.done():
                continue
            try:
                item = build()
            except Exception as exc:  # noqa: BLE001 - handed to the waiting agent
                fut.set_exception(exc)
                continue
            self._send(t, seq, fut, item)
            return self.heap[0][0], (preps[0][0] if preps else math.inf)  # the clock moved: look again
        return next_send, (preps[0][0] if preps else math.inf)

    async def run(self) -> None:
        while True:
            next_send, next_build = self._release()
            if next_send == math.inf and next_build == math.inf:
                self.wake.clear()
                await self.wake.wait()
                continue
            now = self.now()
            nap = min(next_build - now, (next_send - now - SPIN_S) * NAP_FRACTION - TIMER_ROUNDING_S)
            if nap > 0:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), nap)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)  # a send is due within the spin margin: yield until it is


class Driver:
    def __init__(self, cfg: DriverConfig, trace: Trace, system: str, sink, *, start_s: np.ndarray,
                 not_before_s: np.ndarray | None = None, progress=None):
        self.cfg = cfg
        self.trace = trace
        self.system = system
        self.sink = sink
        self.start_s = np.asarray(start_s, dtype=float)
        self.not_before = not_before_s
        self.progress = progress
        starts = trace.agent_starts()
        self.offsets = np.append(starts, trace.num_rounds).tolist()
        self.agent_ids = trace.col("agent_id")[starts].tolist()
        self.append = trace.col("append_tokens").tolist()
        self.gen = trace.col("gen_tokens").tolist()
        self.tool = trace.col("tool_latency_s").tolist()
        self.prompt = trace.prompt_tokens().tolist()
        self.expected = trace.expected_cached_tokens().tolist()
        self.by_hash = (not trace.agents_known) and trace.has("hash_ids")
        self.hash_ids = trace.table.column("hash_ids").to_pylist() if self.by_hash else None
        self.rows: list[tuple] = []
        self.agent_rows: dict[int, tuple] = {}
        self.consecutive_failures = 0
        self.recent = collections.deque(maxlen=cfg.window_requests)  # 1 per failed request, 0 per ok
        self.recent_failed = 0
        self.errors: dict[str, list] = {}  # kind -> [count, first full message]
        self.aborted: str | None = None
        self.text = cfg.prompt == "text"
        self.words = words_for(cfg.tokenizer) if self.text else None
        self.sent = 0
        self.failed = 0
        self.stop_at_s: float | None = None  # rounds scheduled later are not sent (capacity probes)
        self.t0_ns = time.perf_counter_ns()

    # ----- the run --------------------------------------------------------------------------------
    async def run(self) -> dict:
        cfg = self.cfg
        headers = {"Content-Type": "application/json", **(cfg.headers or {})}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        self.headers = headers
        self.endpoint = endpoint_url(cfg.url, cfg.api)
        limit = cfg.max_concurrency or 0
        self.gate = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300)
        gc.collect()
        gc.freeze()  # the trace and set-up objects never need collecting again: no long pauses mid-run
        self.t0_ns = time.perf_counter_ns()  # the run's clock starts here
        self.pacer = Pacer(self.t0_ns)
        self.t_first_dispatch: float | None = None
        async with aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFSIZE,
                                         timeout=aiohttp.ClientTimeout(total=None)) as session:
            self.session = session
            pacer = asyncio.create_task(self.pacer.run())
            flusher = asyncio.create_task(self._flush_every())
            agents = [asyncio.create_task(self._agent(a)) for a in range(len(self.agent_ids))]
            self.agent_tasks = agents
            try:
                for outcome in await asyncio.gather(*agents, return_exceptions=True):
                    if isinstance(outcome, Exception):  # a bug, not a failed request: those never raise
                        raise outcome
            except asyncio.CancelledError:
                for t in agents:
                    t.cancel()
                raise
            finally:
                for t in (pacer, flusher):
                    t.cancel()
                self._flush()
                self._write_agents()
        wall = (time.perf_counter_ns() - self.t0_ns) * 1e-9
        kinds = sorted(self.errors.items(), key=lambda kv: -kv[1][0])
        return {"driver": {"requests_sent": self.sent, "requests_failed": self.failed, "wall_s": wall,
                           "aborted": self.aborted, "agents_started": len(self.agent_rows),
                           "errors": {k: n for k, (n, _) in kinds[:5]},
                           "commonest_error": self.commonest_error()}}

    def commonest_error(self) -> str | None:
        """The commonest kind of failure, as its first full message, with its count."""
        if not self.errors:
            return None
        kind, (n, example) = max(self.errors.items(), key=lambda kv: kv[1][0])
        return f"{example} ({n} request(s))"

    async def _agent(self, a: int) -> None:
        cfg = self.cfg
        lo, hi = self.offsets[a], self.offsets[a + 1]
        chat = cfg.api == "chat"
        ctx = (None if self.by_hash else TextContext(cfg.seed, a, self.words, chat) if self.text
               else AgentContext(cfg.seed, a))
        t_sched = float(self.start_s[a])
        t_first_sched = t_sched
        done_rounds = 0
        last_done = math.nan
        status = "ok"
        try:
            for i in range(lo, hi):
                if self.not_before is not None:
                    t_sched = max(t_sched, float(self.not_before[i]))
                if i == lo:
                    t_first_sched = t_sched
                if self.aborted or (self.stop_at_s is not None and t_sched > self.stop_at_s):
                    status = "cancelled" if status == "ok" else status  # a failed agent stays error
                    break
                r = i - lo

                def build(i=i, r=r):
                    if ctx is not None:
                        prompt = ctx.prompt(r, self.append[i])
                    elif self.text:
                        prompt = hash_text(cfg.seed, self.hash_ids[i] or [], self.prompt[i], self.trace.block_size,
                                           self.words, chat)
                    else:
                        prompt = hash_prompt(cfg.seed, self.hash_ids[i] or [], self.prompt[i], self.trace.block_size)
                    return (request_body(cfg.model, prompt, self.gen[i], ignore_eos=cfg.ignore_eos,
                                         token_ids=cfg.token_ids and not self.text, extra=cfg.extra_body,
                                         api=cfg.api),
                            {**self.headers, REQUEST_ID_HEADER: f"{self.agent_ids[a]}/{r}"})
                if t_sched - QUIET_S > self.pacer.now():
                    _, request = await self.pacer.send_at(t_sched, build)  # built ahead, in a quiet moment
                    if request is None:  # the run is ending
                        status = "cancelled" if status == "ok" else status
                        break
                else:  # due now (the previous round just ended): building it is the harness's own lag
                    request = build()
                t_wake = self.pacer.now()  # ready to send: the harness's own lag ends here
                send = (self.session, self.endpoint, *request, cfg.timeout_s, cfg.stall_timeout_s, self.text)
                if self.gate is not None:
                    async with self.gate:
                        c = await complete(*send)
                else:
                    c = await complete(*send)
                self.sent += 1
                ok = c.status == "ok"
                if self.text and ctx is not None:
                    ctx.generated(r, self.gen[i], "".join(c.text) if ok and c.text else None, c.output_tokens)
                elif ctx is not None:
                    ctx.generated(r, self.gen[i], c.token_ids if ok else None)
                self._record(a, i, r, t_sched, t_wake, c)
                done_rounds += 1
                last_done = self._s(c.t_done_ns)
                if c.status != "ok":
                    status = "error"
                if i + 1 < hi:
                    t_sched = last_done + self.tool[i + 1]
        except asyncio.CancelledError:
            status = "cancelled" if status == "ok" else status
            raise
        finally:
            self.agent_rows[a] = (t_first_sched, last_done, done_rounds, status)

    def _s(self, ns: int | None) -> float:
        return math.nan if ns is None else (ns - self.t0_ns) * 1e-9

    # ----- records --------------------------------------------------------------------------------
    def _record(self, a: int, i: int, r: int, t_sched: float, t_wake: float, c: Completion) -> None:
        if c.error and self.cfg.api_key:  # a server may echo the Authorization header in its error body
            c.error = c.error.replace(self.cfg.api_key, "<api key>")
        self._judge(c)
        t_first = self._s(c.t_first_ns)
        gaps = np.diff(np.array(c.chunk_ns, dtype=np.int64)) * 1e-9 if len(c.chunk_ns) > 1 else np.zeros(0)
        self.rows.append((
            self.agent_ids[a], r, t_sched, t_wake, self._s(c.t_sent_ns), t_first, self._s(c.t_second_ns),
            self._s(c.t_done_ns), self.prompt[i], self.expected[i], c.cached_tokens,
            c.output_tokens if c.output_tokens is not None else 0, c.status, c.error, gaps.tolist(),
            c.prompt_tokens, c.tokens_from, c.http_status, self.gen[i],
            output_digest(c.token_ids) if c.token_ids and c.status == "ok" else None))
        if self.progress is not None:
            self.progress(1)
        if len(self.rows) >= FLUSH_ROWS:
            self._flush()

    def _judge(self, c: Completion) -> None:
        """Count the request toward the abort rules; abort the run when one is broken."""
        cfg = self.cfg
        failed = c.status != "ok"
        if len(self.recent) == self.recent.maxlen:
            self.recent_failed -= self.recent[0]
        self.recent.append(int(failed))
        self.recent_failed += int(failed)
        if not failed:
            self.consecutive_failures = 0
            return
        self.failed += 1
        self.consecutive_failures += 1
        kind = self.errors.setdefault(error_kind(c.error), [0, c.error])
        kind[0] += 1
        if self.aborted:
            return
        why = None
        if self.consecutive_failures >= cfg.max_consecutive_failures:
            why = f"{self.consecutive_failures} requests in a row failed (abort.max_consecutive_failures)"
        elif (len(self.recent) == cfg.window_requests
              and self.recent_failed > cfg.max_failure_share * cfg.window_requests):
            why = (f"{self.recent_failed} of the last {cfg.window_requests} requests failed "
                   f"(abort.max_failure_share {cfg.max_failure_share:g})")
        if why:
            self.aborted = f"aborted: {why}; commonest error: {self.commonest_error()}" + self._hint()
            self.pacer.release_all()  # agents waiting for later rounds see the abort now
            me = asyncio.current_task()
            for task in getattr(self, "agent_tasks", ()):
                if task is not me:  # requests in flight would wait for their own timeouts: end them now
                    task.cancel()

    def _hint(self) -> str:
        """What to check when every request fails the same way a wrong setting would make it fail."""
        kind = max(self.errors.items(), key=lambda kv: kv[1][0])[0]
        if kind == "HTTP 404":
            return f" (POST {self.endpoint} was not found: check endpoint.url and endpoint.api)"
        if kind in ("HTTP 400", "HTTP 422"):
            return " (the server refused the request's form: check endpoint.api, endpoint.prompt and extra_body)"
        return ""

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self._flush()

    def _flush(self) -> None:
        rows, self.rows = self.rows, []
        if not rows:
            return
        cols = list(zip(*rows))
        n = len(rows)
        nan = [math.nan] * n
        self.sink.requests({
            "system": [self.system] * n, "agent_id": list(cols[0]), "round": list(cols[1]),
            "t_scheduled": list(cols[2]), "t_dispatched": list(cols[3]), "t_sent": list(cols[4]),
            "t_first_token": list(cols[5]), "t_second_token": list(cols[6]), "t_done": list(cols[7]),
            "prompt_tokens": list(cols[8]), "expected_cached_tokens": list(cols[9]), "cached_tokens": list(cols[10]),
            "output_tokens": list(cols[11]), "pe": [None] * n, "de": [None] * n, "read_side": ["none"] * n,
            "read_bytes": [0] * n, "queue_s": nan, "alloc_s": nan, "read_s": nan, "prefill_s": nan,
            "kv_transfer_s": nan, "status": list(cols[12]), "error": list(cols[13]), "itl_s": list(cols[14]),
            "server_prompt_tokens": list(cols[15]), "tokens_from": list(cols[16]), "http_status": list(cols[17]),
            "max_tokens": list(cols[18]), "output_digest": list(cols[19]),
        })

    def _write_agents(self) -> None:
        """One row per agent; an agent that did not run all its rounds is `cancelled` unless it failed."""
        n = len(self.agent_ids)
        rows = [self.agent_rows.get(a, (float(self.start_s[a]), math.nan, 0, "cancelled")) for a in range(n)]
        status = []
        for a, (_, _, done, st) in enumerate(rows):
            complete = done == self.offsets[a + 1] - self.offsets[a]
            status.append(st if (complete or st != "ok") else "cancelled")
        self.sink.agents({
            "system": [self.system] * n, "agent_id": list(self.agent_ids),
            "t_arrival": [r[0] for r in rows], "t_done": [r[1] for r in rows], "rounds": [r[2] for r in rows],
            "jct_s": [r[1] - r[0] for r in rows], "status": status,
        })


def api_key_from(endpoint: dict) -> str | None:
    name = endpoint.get("api_key_env")
    return os.environ.get(name) if name else None
