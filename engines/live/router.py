"""The live cluster's router: an OpenAI-compatible front end that schedules with the simulator's
dispatcher (engines.policy.dispatch.Dispatcher) and drives the PEs and DEs.

- `POST /v1/completions`: prompt as token ids or text (words hashed to ids), `max_tokens` exact, streamed
  (SSE, `stream: true`) or not; `usage` with `prompt_tokens_details.cached_tokens` (the hit, from the store);
  the per-request breakdown in the extension field `dualpath` (queue_s, read_s, prefill_s, kv_transfer_s,
  pe, de, read_side, read_bytes) of the last chunk (streamed) or the response. Bad requests: HTTP 400 with
  an OpenAI-style JSON error; a request an engine failed: HTTP 502 (or an error event mid-stream).
- `GET /v1/models`, `GET /health` (503 naming the parts that do not answer and the engines taken for
  dead), `GET /metrics` (prometheus_client: requests by status, queued requests, engines up),
  `GET /breakdowns` (every finished request's breakdown by X-Request-Id, for the harness to join).
- Failover: an engine that dies (engines/live/failover.py) fails the requests it held (HTTP 502 naming
  it) and is removed from the dispatcher; later requests go to the engines left; with no PE or no DE left,
  requests get HTTP 503.
"""
from __future__ import annotations

import asyncio
import json
import time
import zlib

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from engines.live.engine import WAIT_S
from engines.live.failover import Liveness
from engines.live.store import chain_keys
from engines.policy.dispatch import Dispatcher
from engines.policy.pe import EngineView
from engines.policy.systems import system_policy

DEFAULT_MAX_TOKENS = 16


def bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error" if status == 400
                                        else "engine_error", "code": status}}, status=status)


def text_ids(text: str) -> list[int]:
    """Text prompts: one token a word, its id a hash of the word (stable across processes)."""
    return [1000 + zlib.crc32(w.encode()) % 29_000 for w in text.split()]


class Router:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.model = cfg.get("model_name", "dualpath-live")
        self.policy = system_policy(cfg["system"])
        self.block_tokens = int(cfg["block_tokens"])
        self.kv_per_token = int(cfg["kv_bytes_per_token"])
        self.pes = [EngineView(id=i, node=int(p["node"])) for i, p in enumerate(cfg["pes"])]
        self.des = [EngineView(id=i, node=int(d["node"]), hbm_free_bytes=float(cfg["de_hbm_bytes"]))
                    for i, d in enumerate(cfg["des"])]
        nodes = 1 + max(e.node for e in self.pes + self.des)
        self.dispatcher = Dispatcher(self.policy, self.pes, self.des, nodes=nodes, alpha=float(cfg["alpha_tokens"]),
                                     beta=float(cfg["beta_tokens"]), z_factor=float(cfg.get("z_factor", 1.0)))
        self.waiting: dict[int, asyncio.Future] = {}
        self.breakdowns: dict[str, dict] = {}
        self.seq = 0
        self.registry = CollectorRegistry()
        self.requests = Counter("dualpath_router_requests", "requests by status", ["status"], registry=self.registry)
        self.queued = Gauge("dualpath_router_queued", "requests waiting for the scheduler", registry=self.registry)
        self.up = Gauge("dualpath_router_engine_up", "1 while the router serves on the engine", ["engine"],
                        registry=self.registry)
        self.session: aiohttp.ClientSession | None = None
        self.liveness = Liveness(cfg, lambda: self.session, self.engine_gone)
        self.background: set[asyncio.Task] = set()
        for name in self.liveness.engines:
            self.up.labels(name).set(1)

    def url(self, part: dict, path: str) -> str:
        return f"http://{part['host']}:{part['http_port']}{path}"

    def engine_gone(self, name: str, role: str, index: int, why: str) -> None:
        """An engine died: the dispatcher forgets it; queued requests that nothing can take now fail."""
        self.up.labels(name).set(0)
        for handle in self.dispatcher.remove_engine(role, index):
            fut = self.waiting.pop(handle, None)
            if fut is not None and not fut.done():
                fut.set_exception(NoEngine(f"no {role} left ({name} is gone: {why})"))
        self.pump()

    def no_engine(self) -> str | None:
        for role in ("pe", "de"):
            if not self.liveness.alive(role):
                gone = ", ".join(f"{n}: {w}" for n, w in self.liveness.dead.items() if n.startswith(role))
                return f"no {role} left ({gone})"
        return None

    async def blame(self, d, exc: BaseException, where: str) -> str:
        """The error of a request that failed on (PE d.pe, DE d.de) at `where`: names the engine that died,
        if one did (probed now)."""
        dead = await self.liveness.check([f"pe{d.pe}", f"de{d.de}"])
        if dead:
            return f"{' and '.join(dead)} died while it held this request ({type(exc).__name__}: {exc})"
        return f"{where}: {type(exc).__name__}: {exc}"

    def pump(self) -> None:
        for d in self.dispatcher.dispatch():
            fut = self.waiting.pop(d.request, None)
            if fut is not None and not fut.done():
                fut.set_result(d)
        self.queued.set(self.dispatcher.queued)

    # ----- /v1/completions ------------------------------------------------------------------------
    async def completions(self, request):
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            return bad(f"the body is not JSON: {exc}")
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            tokens = text_ids(prompt)
        elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
            tokens = prompt
        else:
            return bad("prompt must be a string or a list of token ids (integers >= 0)")
        if not tokens:
            return bad("prompt is empty")
        max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return bad(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        need = (len(tokens) + max_tokens) * self.kv_per_token
        if need > float(self.cfg["de_hbm_bytes"]):
            return bad(f"prompt + max_tokens ({len(tokens) + max_tokens} tokens) do not fit a decode engine's memory")
        rid = request.headers.get("X-Request-Id") or f"r{self.seq}"
        self.seq += 1
        handle = self.seq
        stream = bool(body.get("stream"))
        t0 = time.perf_counter()
        keys = chain_keys(tokens, self.block_tokens)
        try:
            hit_blocks = 0  # kv_cache: off (the reference, issue 17): every prompt computed from scratch
            if self.cfg.get("kv_cache", True) is not False:
                async with self.session.post(self.url(self.cfg["storage"], "/hit"),
                                             json={"keys": [k.hex() for k in keys]},
                                             timeout=aiohttp.ClientTimeout(total=30)) as r:
                    hit_blocks = (await r.json())["hit_blocks"]
        except (aiohttp.ClientError, TimeoutError, KeyError) as exc:
            self.requests.labels("error").inc()
            return bad(f"storage: {type(exc).__name__}: {exc}", 502)
        hit = hit_blocks * self.block_tokens
        gone = self.no_engine()
        if gone:
            self.requests.labels("error").inc()
            return bad(gone, 503)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[handle] = fut
        self.dispatcher.submit(handle, len(tokens), need, hit)
        self.pump()
        try:
            d = await fut
        except NoEngine as exc:
            self.requests.labels("error").inc()
            return bad(str(exc), 503)
        t_disp = time.perf_counter()
        pe, de = self.cfg["pes"][d.pe], self.cfg["des"][d.de]
        side = d.read_side if hit_blocks else "none"
        read_keys = [k.hex() for k in keys[:hit_blocks]] if side != "none" else []
        if side == "none":
            hit_blocks = 0
        out = {"rid": rid, "pe": f"pe{d.pe}", "de": f"de{d.de}", "read_side": side, "queue_s": t_disp - t0}
        decode = asyncio.create_task(self._decode(de, rid, tokens, max_tokens, hit_blocks))
        prefill_ok = False
        try:
            async with self.session.post(self.url(pe, "/prefill"), json={
                    "rid": rid, "prompt_tokens": len(tokens), "keys": read_keys, "read_side": side,
                    "layerwise": self.policy.layerwise, "chunked": self.policy.paper_scheduler,  # the batch former
                    "de": {"host": de["host"], "data_port": de["data_port"]},
                    **({"tokens": tokens} if self.cfg.get("compute") == "torch" else {})},  # issue 17
                    timeout=aiohttp.ClientTimeout(total=WAIT_S)) as r:
                facts = await r.json()
            if "error" in facts:
                raise ConnectionError(facts["error"]["message"])
            prefill_ok = True
            out.update(facts)
            out["read_bytes"] = hit_blocks * self.block_tokens * self.kv_per_token  # on whichever side read
        except (aiohttp.ClientError, TimeoutError, ConnectionError, ValueError) as exc:
            decode.cancel()
            out["error"] = await self.blame(d, exc, f"pe{d.pe}")
            if not self.liveness.is_dead("de", d.de):
                task = asyncio.create_task(self._abort(de, rid))
                self.background.add(task)  # held until done (the loop keeps only weak references)
                task.add_done_callback(self.background.discard)
        finally:
            if not self.liveness.is_dead("pe", d.pe):  # a dead engine's requests left the books with it
                self.dispatcher.prefill_done(d.pe, len(tokens))
            if side != "none":
                node = (self.pes[d.pe] if side == "pe" else self.des[d.de]).node
                self.dispatcher.read_done(node, hit)

        def finish():
            if not self.liveness.is_dead("de", d.de):
                self.dispatcher.decode_done(d.de, len(tokens), need)
            self.pump()
        usage = {"prompt_tokens": len(tokens), "completion_tokens": max_tokens,
                 "total_tokens": len(tokens) + max_tokens, "prompt_tokens_details": {"cached_tokens": hit}}
        if not prefill_ok:
            finish()
            self.requests.labels("error").inc()
            self.breakdowns[rid] = out
            return bad(out["error"], 502)
        if not stream:
            try:
                ids = [t async for t in self._tokens(decode)]
            except ConnectionError as exc:
                out["error"] = await self.blame(d, exc, f"de{d.de}")
                finish()
                self.requests.labels("error").inc()
                self.breakdowns[rid] = out
                return bad(out["error"], 502)
            finish()
            self.requests.labels("ok").inc()
            self.breakdowns[rid] = out
            return web.json_response({"id": rid, "object": "text_completion", "model": self.model, "usage": usage,
                                      "choices": [{"index": 0, "text": "".join(f" t{t}" for t in ids),
                                                   "token_ids": ids, "finish_reason": "length"}], "dualpath": out})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        status = "ok"
        try:
            n = 0
            async for t in self._tokens(decode):
                n += 1
                choice = {"index": 0, "text": f" t{t}", "token_ids": [t],
                          "finish_reason": "length" if n == max_tokens else None}
                await resp.write(_event({"id": rid, "object": "text_completion", "model": self.model,
                                         "choices": [choice]}))
            await resp.write(_event({"id": rid, "object": "text_completion", "model": self.model, "choices": [],
                                     "usage": usage, "dualpath": out}))
            await resp.write(b"data: [DONE]\n\n")
        except ConnectionError as exc:
            status = "error"
            out["error"] = await self.blame(d, exc, f"de{d.de}")
            await resp.write(_event({"error": {"message": out["error"], "type": "engine_error"}}))
        finally:
            finish()
            self.requests.labels(status).inc()
            self.breakdowns[rid] = out
        await resp.write_eof()
        return resp

    async def _decode(self, de: dict, rid: str, tokens: list[int], max_tokens: int, hit_blocks: int):
        return await self.session.post(self.url(de, "/decode"), json={
            "rid": rid, "prompt": tokens, "max_tokens": max_tokens, "hit_blocks": hit_blocks},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=WAIT_S))

    async def _abort(self, de: dict, rid: str) -> None:
        """Tell the DE that `rid`'s prefill failed, so it stops waiting for its KV (best effort)."""
        try:
            async with self.session.post(self.url(de, "/abort"), json={"rid": rid},
                                         timeout=aiohttp.ClientTimeout(total=5)):
                pass
        except (aiohttp.ClientError, TimeoutError):
            pass

    async def _tokens(self, decode: asyncio.Task):
        try:
            resp = await decode
            async with resp:
                async for line in resp.content:
                    msg = json.loads(line)
                    if "token" in msg:
                        yield msg["token"]
                    elif "error" in msg:
                        raise ConnectionError(msg["error"])
                    elif msg.get("done"):
                        return
            raise ConnectionError("the decode engine's stream ended early")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ConnectionError(f"decode: {type(exc).__name__}: {exc}") from None

    # ----- the rest -----------------------------------------------------------------------------
    async def models(self, request):
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def health(self, request):
        parts = [("storage", self.cfg["storage"])] + [(f"pe{i}", p) for i, p in enumerate(self.cfg["pes"])] + \
                [(f"de{i}", d) for i, d in enumerate(self.cfg["des"])]

        async def ok(part):
            try:
                async with self.session.get(self.url(part, "/health"), timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return r.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False
        answers = await asyncio.gather(*(ok(p) for _, p in parts))
        gone = [name for (name, _), a in zip(parts, answers) if not a or name in self.liveness.dead]
        return web.json_response({"ok": not gone, "gone": gone, "dead": self.liveness.dead},
                                 status=503 if gone else 200)

    async def metrics(self, request):
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def breakdown_list(self, request):
        return web.json_response(self.breakdowns)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 28)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/breakdowns", self.breakdown_list)
        return app


class NoEngine(ConnectionError):
    """No engine of a role is left to take a request."""


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def run(cfg: dict, ready=None) -> None:
    router = Router(cfg)
    router.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    runner = web.AppRunner(router.app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.get("host", "127.0.0.1"), int(cfg.get("http_port", 0)))
    await site.start()
    if ready is not None:
        ready(site._server.sockets[0].getsockname()[1], 0)
    watch = asyncio.create_task(router.liveness.watch())
    try:
        await asyncio.Event().wait()
    finally:
        watch.cancel()
        await runner.cleanup()
        await router.session.close()
