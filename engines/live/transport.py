"""Transports behind one interface: a `Channel` carries frames (a small JSON header and a payload of bytes)
between two processes, for storage->node reads, node DRAM->PE and PE<->DE KV.

- `tcp`: asyncio `sock_sendall` of the caller's buffer and `sock_recv_into` a preallocated buffer: the
  payload is never copied in Python (the kernel copies it once each way). `recv()` returns a view into the
  channel's buffer, valid until the next `recv()`.
- `shm` (same host, engines/live/shm.py): the sender copies the payload once into a shared-memory pool of
  slots and sends only the slot's number over a tcp control channel; the receiver's view is the slot
  itself, given back to the sender (an ack frame) at its next `recv()`. rdma and nixl (issue 17) work the
  same way with registered memory (engines/live/slots.py).

Every channel counts the bytes it moves per traffic class (`counters`, {(direction, traffic): bytes}) and
may pace its sends with a `Pacer` (a CNIC's or SNIC's rate).
"""
from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections import defaultdict

PREFIX = struct.Struct("!IQ")   # header length, payload length
SOCK_BUF = 8 << 20
TRANSPORTS = ("tcp", "shm", "rdma", "nixl")  # rdma, nixl: engines/live/rdma.py, nixl.py (issue 17)


class ChannelClosed(ConnectionError):
    pass


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
        except OSError:  # pragma: no cover - a kernel limit: keep its default
            pass


class TcpChannel:
    kind = "tcp"

    def __init__(self, sock: socket.socket, pacer=None, buffer_bytes: int = 1 << 20):
        _tune(sock)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.pacer = pacer
        self.buf = bytearray(buffer_bytes)
        self.head = bytearray(PREFIX.size)
        self.counters: dict[tuple[str, str], int] = defaultdict(int)
        self.send_lock = asyncio.Lock()
        self.recv_lock = asyncio.Lock()
        self.closed = False

    async def send(self, header: dict, payload=b"", traffic: str = "other") -> None:
        view = memoryview(payload).cast("B") if len(payload) else memoryview(b"")
        meta = json.dumps(header, separators=(",", ":")).encode()

        async def move():
            async with self.send_lock:
                try:
                    await self.loop.sock_sendall(self.sock, PREFIX.pack(len(meta), view.nbytes) + meta)
                    if view.nbytes:
                        await self.loop.sock_sendall(self.sock, view)
                except OSError as exc:
                    self.closed = True
                    raise ChannelClosed(f"send failed: {exc}") from None
        if self.pacer is not None and view.nbytes:
            await self.pacer.pace(view.nbytes, move)
        else:
            await move()
        self.counters[("tx", traffic)] += view.nbytes

    async def _exactly(self, view: memoryview) -> None:
        got, n = 0, view.nbytes
        while got < n:
            try:
                k = await self.loop.sock_recv_into(self.sock, view[got:])
            except OSError as exc:
                k, self.closed = 0, True
                if got or n:
                    raise ChannelClosed(f"receive failed: {exc}") from None
            if k == 0:
                self.closed = True
                raise ChannelClosed("the peer closed the connection")
            got += k

    async def recv(self) -> tuple[dict, memoryview]:
        async with self.recv_lock:
            await self._exactly(memoryview(self.head))
            hlen, plen = PREFIX.unpack(self.head)
            meta = bytearray(hlen)
            await self._exactly(memoryview(meta))
            header = json.loads(meta)
            if plen > len(self.buf):
                self.buf = bytearray(plen)  # grows once to the largest frame, then reused
            view = memoryview(self.buf)[:plen]
            await self._exactly(view)
        self.counters[("rx", header.get("traffic", "other"))] += plen
        return header, view

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass


def wrap(kind: str, sock: socket.socket, pacer=None, **shm):
    """A channel of `kind` (TRANSPORTS) over a connected socket."""
    control = TcpChannel(sock, pacer=None if kind in ("shm", "rdma", "nixl") else pacer)
    if kind == "tcp":
        return control
    if kind == "shm":
        from engines.live.shm import ShmChannel
        return ShmChannel(control, pacer=pacer, **shm)
    if kind == "rdma":  # issue 17
        from engines.live.rdma import RdmaChannel
        return RdmaChannel(control, pacer=pacer, **shm)
    if kind == "nixl":  # issue 17
        from engines.live.nixl import NixlChannel
        return NixlChannel(control, pacer=pacer, **shm)
    raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {kind!r}")


async def connect(kind: str, host: str, port: int, pacer=None, **shm):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    return wrap(kind, sock, pacer, **shm)


async def serve(kind: str, host: str, port: int, on_channel, pacer_for=None, **shm):
    """Listen on (host, port; 0: a free one); `on_channel(channel)` runs as a task per connection.
    Returns (server task, bound port)."""
    loop = asyncio.get_running_loop()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(64)
    lsock.setblocking(False)

    async def accept_loop():
        tasks = set()
        try:
            while True:
                sock, _ = await loop.sock_accept(lsock)
                ch = wrap(kind, sock, pacer_for() if pacer_for else None, **shm)
                t = asyncio.create_task(on_channel(ch))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        finally:
            lsock.close()
            for t in tasks:
                t.cancel()
    return asyncio.create_task(accept_loop()), lsock.getsockname()[1]
