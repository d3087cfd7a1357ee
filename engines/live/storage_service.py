"""The storage service: one process holding the KV store (engines/live/store.py) and serving it.

- Data, over a transport channel (tcp | shm), one frame per Full Block:
  `{"op": "read", "keys": [hex...], "node": N}` -> one frame per block `{"key", "traffic": "kv_read"}`,
  paced by node N's SNIC pacer (each node's reads share its SNIC rate), then `{"op": "read_done"}`;
  a missing block ends the read with `{"op": "error", "error": ...}`.
  `{"op": "write", "key": hex}` + a Full Block -> stored (traffic kv_write) -> `{"op": "written"}`.
- Control, over HTTP (aiohttp): `GET /health`, `GET /metrics` (prometheus_client text: bytes per requesting
  node (device `storage_nodeN`), direction and traffic class), `POST /hit {"keys": [hex...]}` -> `{"hit_blocks": n}`.

Started as `dualpath engine --role storage --config FILE` (harness/cli_live.py).
"""
from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest, CONTENT_TYPE_LATEST

from engines.live.pacer import Pacer
from engines.live.serving import serve_until_cancelled
from engines.live.store import BlockStore
from engines.live.transport import ChannelClosed, serve

LINK_BYTES = "dualpath_link_bytes"  # exposed as dualpath_link_bytes_total


class StorageService:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.store = BlockStore(cfg["storage_dir"], int(cfg["layers"]), int(cfg["block_tokens"]),
                                int(cfg["bytes_per_token_layer"]))
        rate = float(cfg["snic_bytes_s"])
        self.pacers = [Pacer(rate) for _ in range(int(cfg["nodes"]))]
        self.registry = CollectorRegistry()
        self.link_bytes = Counter(LINK_BYTES, "bytes moved per node link, direction and traffic class",
                                  ["device", "direction", "traffic"], registry=self.registry)
        self.blocks = Counter("dualpath_storage_blocks", "Full Blocks read or written", ["op"],
                              registry=self.registry)

    async def on_channel(self, ch) -> None:
        buf = bytearray(self.store.block_bytes)
        try:
            while True:
                header, view = await ch.recv()
                op = header.get("op")
                if op == "read":
                    await self._read(ch, header, buf)
                elif op == "write":
                    self.store.write(bytes.fromhex(header["key"]), view)
                    node = int(header.get("node", 0))
                    self.link_bytes.labels(f"storage_node{node}", "rx", "kv_write").inc(view.nbytes)
                    self.blocks.labels("write").inc()
                    await ch.send({"op": "written", "key": header["key"]})
                else:
                    await ch.send({"op": "error", "error": f"unknown op {op!r}"})
        except ChannelClosed:
            pass
        finally:
            ch.close()

    async def _read(self, ch, header: dict, buf: bytearray) -> None:
        node = int(header["node"])
        if not 0 <= node < len(self.pacers):
            await ch.send({"op": "error", "error": f"no node {node}"})
            return
        pacer = self.pacers[node]
        for key in header["keys"]:
            try:
                self.store.read_into(bytes.fromhex(key), buf)
            except OSError as exc:
                await ch.send({"op": "error", "error": f"block {key}: {exc}"})
                return
            # the SNIC's rate: the block counts as read at the end of its booking on the node's link
            await pacer.pace(len(buf), lambda k=key: ch.send({"key": k, "traffic": "kv_read"}, buf, traffic="kv_read"))
            self.link_bytes.labels(f"storage_node{node}", "tx", "kv_read").inc(len(buf))
            self.blocks.labels("read").inc()
        await ch.send({"op": "read_done"})

    # ----- HTTP control ------------------------------------------------------------------------
    async def health(self, request):
        return web.json_response({"role": "storage", "ok": True})

    async def metrics(self, request):
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def hit(self, request):
        try:
            keys = [bytes.fromhex(k) for k in (await request.json())["keys"]]
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            return web.json_response({"error": {"message": f"bad request: {exc}", "type": "invalid_request"}},
                                     status=400)
        return web.json_response({"hit_blocks": self.store.hit_blocks(keys)})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/hit", self.hit)
        return app


async def run(cfg: dict, ready=None) -> None:
    """Serve until cancelled; `ready(http_port, data_port)` is called once both listen."""
    svc = StorageService(cfg)
    host = cfg.get("host", "127.0.0.1")
    data_task, data_port = await serve(cfg.get("transport", "tcp"), host, int(cfg.get("data_port", 0)),
                                       svc.on_channel)
    await serve_until_cancelled(svc.app(), host, int(cfg.get("http_port", 0)), data_task, data_port, ready)
