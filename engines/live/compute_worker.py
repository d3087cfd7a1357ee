"""The process that runs an engine's toy transformer (`live.compute: torch`), apart from the engine's event
loop.

Why a process: in one process the model's many small torch ops each give up and take back the GIL, and
the engine's event loop (frames in, tokens out, write-backs) takes it in between, so compute crawls
while the engine serves (measured: a thread doing Python work 30 % of the time slows a decode step 1.7x,
60 % 3.6x). vLLM runs its engine core in its own process for the same reason.

The engine keeps the KV (its buffers are what the transports and the storage service move); the worker
gets a request's loaded KV when its work starts and sends back each layer's new K/V (prefill) or each
step's new K/V row (decode), so the engine's buffer always holds the same bytes as the worker's.

Messages on a duplex pipe, one answer per request, in order:
- ("load", model, block_tokens)                  -> None (or the error)
- ("layer", key, i, init)                        -> (from_position, layer i's K/V bytes from it, first token
  or None); `init` = (tokens, kv, start) with the first layer, else None
- ("step", [(key, last, ctx, kv or None, final)]) -> [(token, K/V rows of position ctx)]; `kv` the
  request's grown buffer the first time it steps, `final` its last step (the worker then forgets it)
- ("forget", key)                                -> None (a request that ended early)
Answers are ("ok", value) or ("error", "Type: message"). The worker ends on EOF (its engine is gone).
"""
from __future__ import annotations

import multiprocessing as mp

import numpy as np

MAX_STATES = 1024  # requests the worker remembers at once (an engine that lost track cannot grow it)


def serve(conn) -> None:
    model, states = None, {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        try:
            op = msg[0]
            if op == "load":
                model = _load(msg[1], msg[2])
                out = None
            elif op == "layer":
                _, key, i, init = msg
                if init is not None:
                    tokens, kv, start = init
                    states[key] = model.prefill(tokens, kv, start)
                run = states[key]
                frm = run.start
                run.layer(i)
                out = (frm, run.kv[i, frm * model.s.bytes_per_token_layer:].copy(), run.first_token)
                if i == model.s.layers - 1:
                    states.pop(key, None)
            elif op == "step":
                out = []
                bpt = model.s.bytes_per_token_layer
                for key, last, ctx, kv, final in msg[1]:
                    if kv is not None:
                        states[key] = kv
                    buf = states[key]
                    token = model.decode(last, ctx, buf)
                    out.append((token, buf[:, ctx * bpt:(ctx + 1) * bpt].copy()))
                    if final:
                        states.pop(key, None)
            elif op == "forget":
                states.pop(msg[1], None)
                out = None
            else:
                raise ValueError(f"unknown op {op!r}")
            while len(states) > MAX_STATES:
                states.pop(next(iter(states)))
            conn.send(("ok", out))
        except Exception as exc:  # noqa: BLE001 - said to the engine, which fails that request
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _load(model: str, block_tokens: int):
    import torch

    from engines.costmodel import model_spec
    from engines.live.torch_model import TinyDecoder, shape_for
    torch.set_num_threads(1)
    m = TinyDecoder(shape_for(model_spec(model), block_tokens), device="cuda" if torch.cuda.is_available() else "cpu")
    scratch = np.zeros((m.s.layers, 2 * m.s.block * m.s.bytes_per_token_layer), dtype=np.uint8)
    run = m.prefill(list(range(m.s.block + 1)), scratch, 0)  # warm-up: torch's first calls
    for i in range(m.s.layers):
        run.layer(i)
    m.decode(run.first_token, m.s.block + 1, scratch)
    return m


class Worker:
    """The engine's side: a spawned process (it imports torch, the engine need not) and blocking calls,
    made from the engine's compute thread (the event loop never waits on the pipe)."""

    def __init__(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child,), daemon=True, name="dualpath-compute")
        self.proc.start()
        child.close()

    def call(self, *msg):
        try:
            self.conn.send(msg)
            status, value = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            raise RuntimeError(f"the compute worker is gone (exit {self.proc.exitcode})") from exc
        if status != "ok":
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        self.conn.close()  # the worker sees EOF and returns
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)

