"""`live.transport: nixl` (issue 17): KV payloads by NIXL WRITE transfers (NVIDIA's transfer library,
what vLLM, SGLang and Dynamo move KV with; `pip install nixl-cu12`, which runs on CPU memory through UCX).

A slot channel (engines/live/slots.py: headers over tcp, payloads written into the peer's slots): each
channel side creates a NIXL agent in its engine process and registers a send and a receive pool of
`slots` x `slot_bytes` of DRAM; the sides exchange agent metadata over tcp when the channel opens; a
payload is a WRITE transfer from our send slot into the same slot of the peer's receive pool, polled
until done. The library can crash at interpreter exit, so a part that used it ends with `exit_now`
(os._exit after its orderly shutdown).
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import os
import sys
import time

import numpy as np

from engines.live.slots import SlotChannel

INSTALL = "pip install nixl-cu12 (CPU memory through UCX; torch==2.13.0 keeps it off the CUDA wheels)"
WRITE_TIMEOUT_S = 60.0
POLL_S = 5e-4           # (asyncio sleeps ~1 ms at least)
SPIN_POLLS = 20
_names = itertools.count()


def api():
    """NIXL's Python API module, or ImportError with how to install it."""
    for name in ("nixl._api", "nixl_cu12._api", "nixl_cu13._api"):
        try:
            return __import__(name, fromlist=["nixl_agent"])
        except ImportError:
            continue
    raise ImportError(f"nixl is not installed: {INSTALL}")


def probe() -> None:
    """ImportError (one line) when NIXL cannot be imported here."""
    api()


def available() -> bool:
    """Whether NIXL imports here (tests and benchmarks skip it where it does not)."""
    try:
        probe()
        return True
    except ImportError:
        return False


def exit_now(code: int) -> None:
    """End a process that used NIXL without the interpreter's teardown (where the library crashes)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class NixlChannel(SlotChannel):
    kind = "nixl"

    def __init__(self, control, slots: int = 4, slot_bytes: int = 64 << 20, pacer=None):
        super().__init__(control, slots, slot_bytes, pacer)
        nixl = api()
        self.name = f"dualpath-{os.getpid()}-{next(_names)}"
        # no progress thread (it spins without pause: a core per channel); the channel progresses the agent
        self.agent = nixl.nixl_agent(self.name, nixl.nixl_agent_config(enable_prog_thread=False, backends=["UCX"]))
        self.send_pool = np.zeros(slots * slot_bytes, dtype=np.uint8)
        self.recv_pool = np.zeros(slots * slot_bytes, dtype=np.uint8)
        self.regs = [self.agent.register_memory([(p.ctypes.data, p.nbytes, 0, "")], "DRAM")
                     for p in (self.send_pool, self.recv_pool)]
        self.remote: str | None = None
        self.progress: asyncio.Task | None = None

    def _hello(self) -> dict:
        return {"meta": base64.b64encode(self.agent.get_agent_metadata()).decode(), "addr": self.recv_pool.ctypes.data}

    def _connect(self, peer: dict) -> None:
        self.remote = self.agent.add_remote_agent(base64.b64decode(peer["meta"]))
        self.remote = self.remote.decode() if isinstance(self.remote, bytes) else self.remote
        self.remote_addr = int(peer["addr"])
        self.progress = asyncio.create_task(self._progress())

    def _send_view(self, slot: int, n: int) -> memoryview:
        return memoryview(self.send_pool)[slot * self.slot_bytes:slot * self.slot_bytes + n]

    def _recv_view(self, slot: int, n: int) -> memoryview:
        return memoryview(self.recv_pool)[slot * self.slot_bytes:slot * self.slot_bytes + n]

    async def _put(self, slot: int, n: int) -> None:
        """A WRITE transfer, polled on the event loop (the agent is used from this thread only)."""
        off = slot * self.slot_bytes
        local = self.agent.get_xfer_descs([(self.send_pool.ctypes.data + off, n, 0)], "DRAM")
        remote = self.agent.get_xfer_descs([(self.remote_addr + off, n, 0)], "DRAM")
        handle = self.agent.initialize_xfer("WRITE", local, remote, self.remote)
        try:
            state = self.agent.transfer(handle)
            deadline = time.monotonic() + WRITE_TIMEOUT_S
            polls = 0
            while state != "DONE":
                if state == "ERR":
                    raise ConnectionError("the NIXL WRITE failed")
                if time.monotonic() > deadline:
                    raise ConnectionError(f"the NIXL WRITE did not finish in {WRITE_TIMEOUT_S:g} s")
                polls += 1
                await asyncio.sleep(0 if polls < SPIN_POLLS else POLL_S)
                state = self.agent.check_xfer_state(handle)
        finally:
            self.agent.release_xfer_handle(handle)

    async def _progress(self) -> None:
        """The target side of a WRITE must progress too (UCX over tcp): poll while the channel lives."""
        while True:
            self.agent.get_new_notifs()
            await asyncio.sleep(POLL_S)

    def _teardown(self) -> None:
        if self.progress is not None:
            self.progress.cancel()
        if self.remote is not None:
            self.agent.remove_remote_agent(self.remote)
        for reg in self.regs:
            self.agent.deregister_memory(reg)
        self.regs = []
