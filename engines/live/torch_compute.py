"""`live.compute: torch` in the engines: the toy transformer (engines/live/torch_model.py) in the engine's
compute process (engines/live/compute_worker.py), called from its compute thread, over the request's KV
buffer (the bytes the storage service stores and the transports move).

- PE: `prefill(tokens, kv, start)` -> a run whose `await run.layer(i)` computes layer i of the positions
  from `start` (the loaded prefix, a whole number of blocks, is read from `kv`) and writes their K/V into
  `kv`; after the last layer `run.first_token` is the greedy first token (sent to the DE with the KV).
- DE: `grow(kv, tokens)` makes room for the generated tokens' K/V; `await step(slots)` is one decode step
  of continuous batching: each slot's last token at position `ctx` -> the next token (greedy, EOS ignored).

torch runs one thread per compute process (`torch.set_num_threads(1)`: several processes share the cores)
and on CUDA when torch sees a GPU. torch is an optional dependency: `check` says in one line when it is
missing.
"""
from __future__ import annotations

import importlib.util
import itertools
import time

import numpy as np

from engines.live.compute import ComputeThread, call

INSTALL = "pip install 'dualpath-bench[live]' (torch==2.13.0)"


def check(model: str, block_tokens: int) -> None:
    """ValueError (one line) when `compute: torch` cannot run: torch missing, or a model profile the toy
    transformer cannot take."""
    if importlib.util.find_spec("torch") is None:
        raise ValueError(f"compute: torch needs torch, which is not installed: {INSTALL}")
    from engines.costmodel import model_spec
    from engines.live.torch_shape import shape_for
    shape_for(model_spec(model), block_tokens)


class PrefillRun:
    def __init__(self, owner: "TorchCompute", tokens, kv: np.ndarray, start: int, log=None):
        self.owner, self.kv, self.first_token, self.log = owner, kv, None, log
        self.key = next(owner.keys)
        self.init = (list(tokens), kv, start)
        self.new = len(self.init[0]) - start

    def _layer(self, i: int) -> None:  # on the compute thread: the worker computes, the engine's buffer gets it
        init, self.init = self.init, None
        t0 = time.perf_counter()
        frm, data, first = self.owner.worker.call("layer", self.key, i, init)
        if self.log is not None:  # a step: this layer of this request (its wait for the thread left out)
            self.log.add(t0, 1, self.new)
        bpt = self.owner.bpt
        self.kv[i, frm * bpt:frm * bpt + data.shape[0]] = data
        if first is not None:
            self.first_token = first

    async def layer(self, i: int) -> None:
        await call(self.owner.thread, self._layer, i)


class TorchCompute:
    """The model runs in its own process (engines/live/compute_worker.py: in the engine's process its ops
    would wait on the GIL behind the event loop), called from the engine's compute thread. It loads (and
    runs once) while the part says READY, so the PE's and DE's torch imports overlap, and the cluster waits
    on every engine's `GET /warm` (the `loaded` future) before the run starts, so no request's time
    includes an import (as a benchmark waits for a server's start-up)."""

    def __init__(self, cfg: dict, thread: ComputeThread):
        from engines.live.compute_worker import Worker
        self.thread = thread
        self.bpt = int(cfg["bytes_per_token_layer"])
        self.keys = itertools.count()
        self.error: str | None = None
        self.worker = Worker()
        self.loaded = thread.pool.submit(self._load, cfg["model"], int(cfg["block_tokens"]))

    def _load(self, model: str, block_tokens: int) -> None:
        try:
            self.worker.call("load", model, block_tokens)
        except Exception as exc:  # every request then fails with this, not with a NoneType error
            self.error = f"compute: torch could not start: {exc}"

    def prefill(self, tokens, kv: np.ndarray, start: int, log=None) -> PrefillRun:
        """`log`: a StepLog (engines/live/steps.py) that gets a row per layer computed."""
        if self.error:
            raise RuntimeError(self.error)
        return PrefillRun(self, tokens, kv, start, log)

    def grow(self, kv: np.ndarray, tokens: int) -> np.ndarray:
        if kv.shape[1] >= tokens * self.bpt:
            return kv
        out = np.zeros((kv.shape[0], tokens * self.bpt), dtype=np.uint8)
        out[:, :kv.shape[1]] = kv
        return out

    async def step(self, slots: list[dict]) -> list[int]:
        """One decode step over `slots` (each {"last", "ctx", "kv"}, and "left" tokens to go if known): the
        worker gets a slot's buffer at its first step and forgets it after its last; each new K/V row
        comes back into the slot's buffer."""
        batch = []
        for s in slots:
            first = "key" not in s
            if first:
                s["key"] = next(self.keys)
            batch.append((s["key"], s["last"], s["ctx"], s["kv"] if first else None, s.get("left", 2) <= 1))
        if self.error:
            raise RuntimeError(self.error)
        out = await call(self.thread, self.worker.call, "step", batch)
        tokens = []
        for s, (tok, rows) in zip(slots, out):
            c = s["ctx"] * self.bpt
            s["kv"][:, c:c + self.bpt] = rows
            s["last"] = tok
            tokens.append(tok)
        return tokens

    def forget(self, slot: dict) -> None:
        """A request that ends before its last step: the worker drops its buffer (fire and forget)."""
        if "key" in slot and slot.get("left", 0) > 0:
            self.thread.pool.submit(self.worker.call, "forget", slot["key"])

    def close(self) -> None:
        self.worker.close()
