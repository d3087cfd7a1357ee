"""`live.compute: torch` in the engines: the toy transformer (engines/live/torch_model.py) on the engine's
compute thread, over the request's KV buffer (the bytes the storage service stores and the transports
move).

- PE: `prefill(tokens, kv, start)` -> a run whose `await run.layer(i)` computes layer i of the positions
  from `start` (the loaded prefix, a whole number of blocks, is read from `kv`) and writes their K/V into
  `kv`; after the last layer `run.first_token` is the greedy first token (sent to the DE with the KV).
- DE: `grow(kv, tokens)` makes room for the generated tokens' K/V; `await step(slots)` is one decode step
  of continuous batching: each slot's last token at position `ctx` -> the next token (greedy, EOS ignored).

torch runs one thread per engine process (`torch.set_num_threads(1)`: several processes share the cores)
and on CUDA when torch sees a GPU. torch is an optional dependency: `check` says in one line when it is
missing.
"""
from __future__ import annotations

import importlib.util

import numpy as np

from engines.live.compute import ComputeThread, call

INSTALL = "pip install 'dualpath-bench[live]' (torch==2.13.0)"


def check(model: str, block_tokens: int) -> None:
    """ValueError (one line) when `compute: torch` cannot run: torch missing, or a model profile the toy
    transformer cannot take."""
    if importlib.util.find_spec("torch") is None:
        raise ValueError(f"compute: torch needs torch, which is not installed: {INSTALL}")
    from engines.costmodel import model_spec
    from engines.live.torch_model import shape_for
    shape_for(model_spec(model), block_tokens)


class PrefillRun:
    def __init__(self, owner: "TorchCompute", tokens, kv: np.ndarray, start: int):
        self.owner, self.args, self.run = owner, (list(tokens), kv, start), None

    def _layer(self, i: int) -> None:  # on the compute thread
        if self.run is None:
            self.run = self.owner.model.prefill(*self.args)
        self.run.layer(i)

    async def layer(self, i: int) -> None:
        await call(self.owner.thread, self._layer, i)

    @property
    def first_token(self) -> int | None:
        return self.run.first_token if self.run is not None else None


class TorchCompute:
    """The model is built (and run once) on the compute thread, behind which every later compute call
    queues: the part says READY at once, so the PE's and DE's torch imports (seconds each) overlap, and the
    cluster waits on every engine's `GET /warm` (the `loaded` future) before the run starts, so no
    request's time includes an import (as a benchmark waits for a server's start-up)."""

    def __init__(self, cfg: dict, thread: ComputeThread):
        self.thread = thread
        self.bpt = int(cfg["bytes_per_token_layer"])
        self._model = None
        self.error: str | None = None
        self.loaded = thread.pool.submit(self._load, cfg["model"], int(cfg["block_tokens"]))

    def _load(self, model: str, block_tokens: int) -> None:
        try:
            import torch

            from engines.costmodel import model_spec
            from engines.live.torch_model import TinyDecoder, shape_for
            torch.set_num_threads(1)
            self._model = m = TinyDecoder(shape_for(model_spec(model), block_tokens),
                                          device="cuda" if torch.cuda.is_available() else "cpu")
            scratch = np.zeros((m.s.layers, 2 * m.s.block * self.bpt), dtype=np.uint8)
            run = m.prefill(list(range(m.s.block + 1)), scratch, 0)  # warm-up: torch's first calls
            for i in range(m.s.layers):
                run.layer(i)
            m.decode(run.first_token, m.s.block + 1, scratch)
        except Exception as exc:  # every request then fails with this, not with a NoneType error
            self.error = f"compute: torch could not start: {type(exc).__name__}: {exc}"

    @property
    def model(self):
        if self._model is None:
            raise RuntimeError(self.error or "compute: torch is not loaded")
        return self._model

    def prefill(self, tokens, kv: np.ndarray, start: int) -> PrefillRun:
        return PrefillRun(self, tokens, kv, start)

    def grow(self, kv: np.ndarray, tokens: int) -> np.ndarray:
        if kv.shape[1] >= tokens * self.bpt:
            return kv
        out = np.zeros((kv.shape[0], tokens * self.bpt), dtype=np.uint8)
        out[:, :kv.shape[1]] = kv
        return out

    async def step(self, slots: list[dict]) -> list[int]:
        def run():
            return [self.model.decode(s["last"], s["ctx"], s["kv"]) for s in slots]
        tokens = await call(self.thread, run)
        for s, t in zip(slots, tokens):
            s["last"] = t
        return tokens
