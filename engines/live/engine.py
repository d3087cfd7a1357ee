"""Prefill (PE) and decode (DE) engines of the live cluster: asyncio for I/O, one thread for compute.

Every KV byte moves for real; compute is modeled (engines/live/compute.py). Per request:
- read: the hit Full Blocks come from the storage service on the side the scheduler chose. PE side: into
  the PE node's buffer. DE side: into the DE's buffer (where they stay), and over the compute link to the
  PE (traffic kv_transfer), which needs them to prefill.
- prefill: layer-wise (`layerwise`: layer k's KV is sent to the DE while layer k+1 computes) or whole-
  request (`basic`: compute, then send). Modeled compute runs in steps formed as the simulator forms
  them (engines/live/batcher.py: the shared batch formers, the compute quota, the batch-size
  efficiency). The PE sends the hit and miss KV on the PE read path, only the miss KV on the DE read
  path (the hit KV is already in the DE buffer).
- decode: continuous batching on the DE (every active request gets a token per step), exactly
  `max_tokens` tokens; then the new Full Blocks are written back to storage (traffic kv_write).
Control is HTTP (the router's calls, /health, /metrics); KV moves on transport channels
(engines/live/transport.py), each node's compute link paced at its CNIC rate.
"""
from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from engines.live.batcher import Batcher, Job
from engines.live.compute import ComputeThread, cost_model, torch_compute
from engines.live.pacer import Pacer
from engines.live.serving import serve_until_cancelled
from engines.live.steps import StepLog
from engines.live.store import chain_keys
from engines.live.transport import ChannelClosed, connect, serve

WAIT_S = 120.0          # every wait on a peer has this timeout: a dead peer fails the request, never hangs
GEN_ID_LO = 50_000      # generated token ids (clear of the driver's prompt ids)


class Part:
    """What every engine shares: config, link pacer, byte counters, metrics, channels to peers."""

    role = "?"

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.node = int(cfg["node"])
        self.layers = int(cfg["layers"])
        self.block_tokens = int(cfg["block_tokens"])
        self.bpt = int(cfg["bytes_per_token_layer"])            # KV bytes per token per layer
        self.block_bytes = self.layers * self.block_tokens * self.bpt
        self.kind = cfg.get("transport", "tcp")
        self.cnic = Pacer(float(cfg["cnic_bytes_s"]))
        self.cost = cost_model(cfg["model"], cfg["hardware"], cfg.get("sim"))
        self.compute = ComputeThread(float(cfg.get("time_scale", 1.0)))
        self.torch = torch_compute(cfg, self.compute)   # compute: torch (issue 17): the real model, else None
        self.keep_kv = cfg.get("kv_cache", True) is not False  # kv_cache: off (the reference) stores nothing
        self.registry = CollectorRegistry()
        self.link_bytes = Counter("dualpath_link_bytes", "bytes moved per link, direction and traffic class",
                                  ["device", "direction", "traffic"], registry=self.registry)
        self.active = Gauge("dualpath_engine_requests", "requests held by the engine", registry=self.registry)
        self.steps = StepLog()  # every compute step, for the results' engines table (GET /steps)
        # channels to the storage service, one for reads and one for writes: a node's SNIC is full duplex
        # (reads are rx, write-backs tx), so a DE's write-back never waits behind a long read (or the reverse)
        self.storage: dict[str, object] = {}
        self.storage_lock = {"read": asyncio.Lock(), "write": asyncio.Lock()}
        self.peers: dict[tuple, object] = {}
        self.inbox: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)  # rid -> frames for it
        self.pulls: dict[str, object] = {}  # rid -> the channel its frames come on (failed if it drops)

    def count(self, link: str, direction: str, traffic: str, n: int) -> None:
        if n:
            self.link_bytes.labels(f"node{self.node}_{link}", direction, traffic).inc(n)

    async def storage_channel(self, use: str):
        ch = self.storage.get(use)
        if ch is None or ch.closed:
            s = self.cfg["storage"]
            ch = self.storage[use] = await connect(self.kind, s["host"], int(s["data_port"]))
        return ch

    async def read_blocks(self, keys: list[str], into: np.ndarray) -> int:
        """Read Full Blocks from storage (this node's SNIC) into `into` (layer-major [layers, tokens, bpt])."""
        if not keys:
            return 0
        async with self.storage_lock["read"]:
            ch = await self.storage_channel("read")
            await ch.send({"op": "read", "keys": keys, "node": self.node})
            i = 0
            while True:
                header, view = await asyncio.wait_for(ch.recv(), WAIT_S)
                if header.get("op") == "read_done":
                    break
                if header.get("op") == "error":
                    raise RuntimeError(f"storage: {header['error']}")
                block = np.frombuffer(view, dtype=np.uint8).reshape(self.layers, self.block_tokens * self.bpt)
                t = i * self.block_tokens * self.bpt
                into[:, t:t + block.shape[1]] = block  # Full Block -> layer-major buffer (the H2D hop's copy)
                i += 1
                self.count("snic", "rx", "kv_read", view.nbytes)
        return len(keys) * self.block_bytes

    async def write_blocks(self, keys: list[bytes], kv: np.ndarray, first: int) -> None:
        """Write blocks `first..` of the layer-major `kv` back to storage (traffic kv_write)."""
        bt = self.block_tokens * self.bpt
        async with self.storage_lock["write"]:
            ch = await self.storage_channel("write")
            for b in range(first, len(keys)):
                block = np.ascontiguousarray(kv[:, b * bt:(b + 1) * bt])
                await ch.send({"op": "write", "key": keys[b].hex(), "node": self.node}, block, traffic="kv_write")
                header, _ = await asyncio.wait_for(ch.recv(), WAIT_S)
                if header.get("op") != "written":
                    raise RuntimeError(f"storage: {header}")
                self.count("snic", "tx", "kv_write", block.nbytes)

    async def send_kv(self, ch, header: dict, payload, traffic: str = "kv_transfer") -> None:
        await self.cnic.pace(payload.nbytes, lambda: ch.send(header, payload, traffic=traffic))
        self.count("cnic", "tx", traffic, payload.nbytes)

    async def route(self, ch) -> None:
        """Read a channel's frames into per-request queues (copies: the view is the channel's buffer)."""
        try:
            while True:
                header, view = await ch.recv()
                self.count("cnic", "rx", header.get("traffic", "kv_transfer"), view.nbytes)
                await self.on_frame(ch, header, np.frombuffer(bytes(view), dtype=np.uint8) if view.nbytes else None)
        except Exception as exc:  # noqa: BLE001 - a frame this engine cannot take ends the channel, said once
            if not isinstance(exc, ChannelClosed):
                print(f"{self.role}{self.cfg.get('index', '')}: closing a KV channel: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
            for rid, c in list(self.pulls.items()):
                if c is ch:  # requests waiting on this peer fail now, not at their timeout (others go on)
                    self.inbox[rid].put_nowait(None)
        finally:
            ch.close()

    async def on_frame(self, ch, header: dict, payload) -> None:
        self.inbox[header["rid"]].put_nowait((header, payload))

    async def next_frame(self, rid: str) -> tuple[dict, object]:
        try:
            item = await asyncio.wait_for(self.inbox[rid].get(), WAIT_S)
        finally:
            self.pulls.pop(rid, None)
            self.inbox.pop(rid, None)
        if item is None:
            raise ConnectionError("the peer engine's connection dropped")
        return item

    # ----- HTTP ---------------------------------------------------------------------------------
    async def health(self, request):
        return web.json_response({"role": self.role, "ok": True, "node": self.node})

    def close(self) -> None:
        self.compute.close()
        if self.torch is not None:
            self.torch.close()

    async def warm(self, request):
        """200 once the engine can compute (compute: torch has loaded and run its model once), 503 and why
        if it cannot; the cluster calls it before a run starts."""
        if self.torch is not None:
            await asyncio.wrap_future(self.torch.loaded)
            if self.torch.error:
                return web.json_response({"role": self.role, "ok": False, "error": self.torch.error}, status=503)
        return web.json_response({"role": self.role, "ok": True})

    async def step_rows(self, request):
        """Every compute step so far (engines/live/steps.py), as columns."""
        return web.json_response(self.steps.answer("prefill" if self.role == "pe" else "decode",
                                                   f"{self.role}{int(self.cfg['index'])}"))

    async def metrics(self, request):
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 28)
        app.router.add_get("/health", self.health)
        app.router.add_get("/warm", self.warm)
        app.router.add_get("/steps", self.step_rows)
        app.router.add_get("/metrics", self.metrics)
        return app


class PrefillEngine(Part):
    role = "pe"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.batcher = Batcher(self.cost, self.compute, self.layers, quota_s=self.cost.k.compute_quota_s,
                               log=self.steps)

    async def peer(self, de: dict):
        key = (de["host"], int(de["data_port"]))
        ch = self.peers.get(key)
        if ch is None or ch.closed:
            ch = self.peers[key] = await connect(self.kind, *key)
            asyncio.create_task(self.route(ch))
        return ch

    async def prefill(self, request):
        body = await request.json()
        rid, prompt, hit_blocks = body["rid"], int(body["prompt_tokens"]), len(body["keys"])
        hit = hit_blocks * self.block_tokens
        side, layerwise = body["read_side"], bool(body["layerwise"])
        self.active.inc()
        try:
            ch = await self.peer(body["de"])
            kv = np.zeros((self.layers, prompt * self.bpt), dtype=np.uint8)  # this request's KV, layer-major
            t0 = time.perf_counter()
            if side == "pe":
                await self.read_blocks(body["keys"], kv)
            elif side == "de" and hit_blocks:
                self.pulls[rid] = ch
                await ch.send({"op": "pull", "rid": rid, "keys": body["keys"], "prompt_tokens": prompt})
                header, payload = await self.next_frame(rid)  # the hit KV, layer-major, over the compute link
                kv[:, :hit * self.bpt] = payload.reshape(self.layers, hit * self.bpt)
            t1 = time.perf_counter()
            first = 0 if side != "de" else hit * self.bpt       # DE read path: only the miss KV goes to the DE
            sends = []
            run = self.torch.prefill(body["tokens"], kv, hit, log=self.steps) if self.torch else None  # torch
            job = None
            if not run:  # modeled: a step of the PE's batch (engines/live/batcher.py) computes it
                job = Job(hit, prompt - hit)
                self.batcher.submit(job, chunked=bool(body.get("chunked", False)))
            try:
                for layer in range(self.layers):
                    if run:
                        await run.layer(layer)
                    else:
                        done = await asyncio.wait_for(job.layers.get(), WAIT_S)
                        if isinstance(done, Exception):
                            raise RuntimeError(f"compute failed: {done}")
                    part = kv[layer, first:]
                    frame = self.send_kv(ch, {"op": "kv", "rid": rid, "layer": layer, "from": first,
                                              "prompt_tokens": prompt, "traffic": "kv_transfer"}, part)
                    sends.append(asyncio.create_task(frame) if layerwise else frame)
            finally:
                if job is not None:
                    self.batcher.withdraw(job)
            t2 = time.perf_counter()
            for s in sends:
                await s  # layer-wise: already on the wire while later layers computed; basic: sent now
            await ch.send({"op": "kv_done", "rid": rid, "traffic": "kv_transfer",
                           "first": run.first_token if run else None})  # compute: torch: the first token
            t3 = time.perf_counter()
            return web.json_response({"read_s": t1 - t0, "prefill_s": t2 - t1, "kv_transfer_s": t3 - t2,
                                      "read_bytes": hit_blocks * self.block_bytes if side == "pe" else 0})
        except (ConnectionError, TimeoutError, OSError, RuntimeError) as exc:
            return web.json_response({"error": {"message": f"pe{self.cfg['index']}: {type(exc).__name__}: {exc}",
                                                "type": "engine_error"}}, status=502)
        finally:
            self.active.dec()

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/prefill", self.prefill)
        return app


class DecodeEngine(Part):
    role = "de"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.buffers: dict[str, np.ndarray] = {}       # rid -> prompt KV, layer-major (the DE buffer)
        self.ready: dict[str, _Ready] = defaultdict(_Ready)
        self.batch: list[dict] = []
        self.wake = asyncio.Event()
        self.stepper: asyncio.Task | None = None
        self.first_tokens: dict[str, int | None] = {}  # compute: torch: rid -> the first token the PE computed

    def buffer(self, rid: str, prompt: int) -> np.ndarray:
        kv = self.buffers.get(rid)
        if kv is None:
            kv = self.buffers[rid] = np.zeros((self.layers, prompt * self.bpt), dtype=np.uint8)
        return kv

    async def on_frame(self, ch, header: dict, payload) -> None:
        rid, op = header["rid"], header["op"]
        if op == "kv":
            kv = self.buffer(rid, int(header["prompt_tokens"]))
            if payload is not None:  # None: a prompt whose every token was read on this side (nothing new)
                kv[int(header["layer"]), int(header["from"]):] = payload
        elif op == "kv_done":
            if header.get("first") is not None:  # compute: torch: the PE's first token
                self.first_tokens[rid] = header["first"]
            self.ready[rid].set()
        elif op == "pull":  # the DE read path: storage -> this DE's buffer -> the PE
            asyncio.create_task(self.pull(ch, header))

    async def pull(self, ch, header: dict) -> None:
        rid = header["rid"]
        kv = self.buffer(rid, int(header["prompt_tokens"]))
        hit = len(header["keys"]) * self.block_tokens
        try:
            await self.read_blocks(header["keys"], kv)
            await self.send_kv(ch, {"op": "hit", "rid": rid, "traffic": "kv_transfer"},
                               np.ascontiguousarray(kv[:, :hit * self.bpt]))
        except (ConnectionError, TimeoutError, OSError, RuntimeError):
            ch.close()  # the PE's wait fails at once

    async def decode(self, request):
        body = await request.json()
        rid, prompt, max_tokens = body["rid"], len(body["prompt"]), int(body["max_tokens"])
        self.active.inc()
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        slot = None
        try:
            await asyncio.wait_for(self.ready[rid].wait(), WAIT_S)
            kv = self.buffers[rid]
            slot = {"ctx": prompt, "left": max_tokens, "q": asyncio.Queue()}
            if self.torch:  # compute: torch: the PE's first token, then decode steps over the grown buffer
                kv = self.buffers[rid] = self.torch.grow(kv, prompt + max_tokens)
                slot.update(kv=kv, last=self.first_tokens.pop(rid))
                slot["q"].put_nowait(slot["last"])
                slot["left"] -= 1
            if slot["left"] > 0:
                self.batch.append(slot)
                self.wake.set()
                if self.stepper is None or self.stepper.done():
                    self.stepper = asyncio.create_task(self.step_loop())
            gen = []
            # the prompt's new Full Blocks are persisted while decoding runs; the generated ones at the end,
            # before the last token goes out, so the agent's next round finds its whole context stored
            prompt_keys = chain_keys(list(body["prompt"]), self.block_tokens) if self.keep_kv else []
            early = asyncio.create_task(self.write_blocks(prompt_keys, kv, int(body["hit_blocks"])))
            while len(gen) < max_tokens:
                tok = await asyncio.wait_for(slot["q"].get(), WAIT_S)
                gen.append(tok)
                if len(gen) == max_tokens:
                    await asyncio.wait_for(early, WAIT_S)
                    # (compute: torch: the last token's K/V is not computed, so its block is not full)
                    keys = chain_keys((list(body["prompt"]) + gen)[:prompt + max_tokens - bool(self.torch)],
                                      self.block_tokens)
                    if self.keep_kv and len(keys) > len(prompt_keys):
                        full = np.zeros((self.layers, len(keys) * self.block_tokens * self.bpt), dtype=np.uint8)
                        n = min(full.shape[1], kv.shape[1])
                        full[:, :n] = kv[:, :n]
                        await self.write_blocks(keys, full, len(prompt_keys))
                await resp.write(b'{"token": %d}\n' % tok)
            await resp.write(b'{"done": true}\n')
        except (TimeoutError, ConnectionError, OSError, RuntimeError) as exc:
            await resp.write(b'{"error": "de%d: %s"}\n' % (int(self.cfg["index"]), type(exc).__name__.encode()))
        finally:
            self.buffers.pop(rid, None)
            self.ready.pop(rid, None)
            self.active.dec()
            if self.torch and slot is not None:
                self.torch.forget(slot)
        await resp.write_eof()
        return resp

    async def step_loop(self) -> None:
        """Continuous batching: every active request gets one token per step."""
        c = self.cost
        while self.batch:
            batch = list(self.batch)  # the requests of this step (one that joins mid-step waits for the next)
            ctx = sum(s["ctx"] for s in batch)
            t0 = time.perf_counter()
            if self.torch:  # compute: torch
                tokens = await self.torch.step(batch)
                self.steps.add(t0, len(batch), len(batch), ctx)
            else:
                topk = sum(c.min_ctx_topk(s["ctx"]) for s in batch)
                spent = await self.compute.run(c.decode_step_s(len(batch), ctx, topk))
                self.steps.add(t0, len(batch), len(batch), ctx, t1=t0 + spent)
                tokens = [GEN_ID_LO + (s["ctx"] * 7919) % 10_000 for s in batch]
            for s, tok in zip(batch, tokens):
                s["q"].put_nowait(tok)
                s["ctx"] += 1
                s["left"] -= 1
                if s["left"] <= 0:
                    self.batch.remove(s)

    async def abort(self, request):
        """The router's word that a request's prefill failed: its decode stops waiting for the KV."""
        rid = (await request.json())["rid"]
        self.ready[rid].fail("its prefill failed")  # (a decode that never comes leaves this small entry)
        self.buffers.pop(rid, None)
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/decode", self.decode)
        app.router.add_post("/abort", self.abort)
        return app


class _Ready(asyncio.Event):
    """Set when a request's KV is all in the DE buffer; `fail(why)` wakes its waiter with an error."""

    error: str | None = None

    def fail(self, why: str) -> None:
        self.error = why
        self.set()

    async def wait(self) -> bool:
        await super().wait()
        if self.error:
            raise ConnectionError(self.error)
        return True


async def run(cfg: dict, role: str, ready=None) -> None:
    eng = PrefillEngine(cfg) if role == "pe" else DecodeEngine(cfg)
    host = cfg.get("host", "127.0.0.1")
    data_task, data_port = await serve(eng.kind, host, int(cfg.get("data_port", 0)), eng.route)
    await serve_until_cancelled(eng.app(), host, int(cfg.get("http_port", 0)), data_task, data_port, ready,
                                on_close=eng.close)
