"""What the rdma and nixl transports share (issue 17): a channel of the transport interface
(engines/live/transport.py: send, recv, close, closed, counters) whose payloads go into a pool of
`slots` of the peer's memory by a one-sided WRITE, with only headers on a tcp control channel.

A frame's payload is copied once into a free slot of our send pool, written into the same slot of the
peer's receive pool (`_write`, blocking, on a worker thread), and then its header goes over tcp naming
the slot; the receiver's view is its slot, handed back (an ack) at its next `recv()`, as the shm
transport does. The two sides exchange their details (`_hello`, `_connect`) over tcp at the first send
or recv on either side.
"""
from __future__ import annotations

import asyncio

from engines.live.transport import ChannelClosed


class SlotChannel:
    kind = "?"

    def __init__(self, control, slots: int = 4, slot_bytes: int = 64 << 20, pacer=None):
        self.control, self.pacer, self.counters = control, pacer, control.counters
        self.slots, self.slot_bytes = slots, slot_bytes
        self.peer: dict | None = None
        self.free: asyncio.Queue[int] = asyncio.Queue()
        for i in range(slots):
            self.free.put_nowait(i)
        self.pending_ack: int | None = None
        self.lent: memoryview | None = None
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.reader: asyncio.Task | None = None
        self.handshake = asyncio.Lock()

    # ----- what a transport provides ---------------------------------------------------------------
    def _hello(self) -> dict:
        """Our details for the peer (JSON)."""
        raise NotImplementedError

    def _connect(self, peer: dict) -> None:
        raise NotImplementedError

    def _send_view(self, slot: int, n: int) -> memoryview:
        raise NotImplementedError

    def _recv_view(self, slot: int, n: int) -> memoryview:
        raise NotImplementedError

    def _write(self, slot: int, n: int) -> None:
        """Our send slot's first n bytes into the peer's receive slot; returns once they are there."""
        raise NotImplementedError

    async def _put(self, slot: int, n: int) -> None:
        """`_write` on a worker thread (a transport that polls on the event loop overrides this)."""
        await asyncio.get_running_loop().run_in_executor(None, self._write, slot, n)

    def _teardown(self) -> None:
        pass

    # ----- the channel -----------------------------------------------------------------------------
    async def _ready(self) -> None:
        async with self.handshake:
            if self.peer is None:
                await self.control.send({"_hello": self._hello()})
                header, _ = await self.control.recv()
                if "_hello" not in header:
                    raise ChannelClosed(f"{self.kind}: the peer did not say hello: {header}")
                self._connect(header["_hello"])
                self.peer = header["_hello"]
                self.reader = asyncio.create_task(self._read())

    @property
    def closed(self) -> bool:
        return self.control.closed

    async def _read(self) -> None:
        try:
            while True:
                header, view = await self.control.recv()
                if "_ack" in header:
                    self.free.put_nowait(header["_ack"])
                else:
                    self.inbox.put_nowait((header, None if "_slot" in header else bytes(view)))
        except (ChannelClosed, asyncio.CancelledError) as exc:
            self.inbox.put_nowait(exc if isinstance(exc, ChannelClosed) else ChannelClosed("closed"))

    async def send(self, header: dict, payload=b"", traffic: str = "other") -> None:
        view = memoryview(payload).cast("B") if len(payload) else memoryview(b"")
        if view.nbytes > self.slot_bytes:
            raise ValueError(f"a {self.kind} frame holds at most {self.slot_bytes} bytes, got {view.nbytes}")
        await self._ready()

        async def move():
            if not view.nbytes:
                await self.control.send(header)
                return
            slot = await self.free.get()
            self._send_view(slot, view.nbytes)[:] = view  # the one copy, into registered memory
            try:
                await self._put(slot, view.nbytes)
            except (ConnectionError, RuntimeError) as exc:
                self.control.close()
                raise ChannelClosed(f"{self.kind} write failed: {exc}") from None
            await self.control.send({**header, "_slot": slot, "_n": view.nbytes})
        if self.pacer is not None and view.nbytes:
            await self.pacer.pace(view.nbytes, move)
        else:
            await move()
        self.counters[("tx", traffic)] += view.nbytes

    async def recv(self) -> tuple[dict, memoryview]:
        await self._ready()
        self._take_back()
        if self.pending_ack is not None:
            slot, self.pending_ack = self.pending_ack, None
            await self.control.send({"_ack": slot})
        item = await self.inbox.get()
        if isinstance(item, ChannelClosed):
            self.inbox.put_nowait(item)
            raise item
        header, data = item
        if data is not None:
            return header, memoryview(data)
        slot, n = header.pop("_slot"), header.pop("_n")
        self.pending_ack = slot
        self.counters[("rx", header.get("traffic", "other"))] += n
        self.lent = self._recv_view(slot, n)
        return header, self.lent

    def _take_back(self) -> None:
        if self.lent is not None:
            self.lent.release()
            self.lent = None

    def close(self) -> None:
        self._take_back()
        if self.reader is not None:
            self.reader.cancel()
        self.control.close()
        try:
            self._teardown()
        except Exception:  # a half-open channel: what is left goes with the process
            pass
