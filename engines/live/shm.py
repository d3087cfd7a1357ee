"""The `shm` transport (same host): a `SlotChannel` (engines/live/slots.py) whose pools are shared memory.

Each end creates a send pool of `slots` x `slot_bytes` at its first send or receive and names it in its
hello; the peer attaches it as its receive pool. A payload is copied once, into a free slot of our pool,
which is the peer's view of it: nothing is written across (`_put` has nothing to do), and the header
names the slot over the tcp control channel, as for rdma and nixl.
"""
from __future__ import annotations

from multiprocessing import resource_tracker, shared_memory

from engines.live.slots import SlotChannel


class ShmChannel(SlotChannel):
    kind = "shm"

    def __init__(self, control, slots: int = 4, slot_bytes: int = 64 << 20, pacer=None):
        super().__init__(control, slots=slots, slot_bytes=slot_bytes, pacer=pacer)
        self.pool: shared_memory.SharedMemory | None = None   # ours: the peer reads from it
        self.peer_pool: shared_memory.SharedMemory | None = None

    def _hello(self) -> dict:
        if self.pool is None:
            self.pool = shared_memory.SharedMemory(create=True, size=self.slots * self.slot_bytes)
        return {"pool": self.pool.name}

    def _connect(self, peer: dict) -> None:
        self.peer_pool = shared_memory.SharedMemory(name=peer["pool"])
        resource_tracker.unregister(self.peer_pool._name, "shared_memory")  # its creator unlinks it

    def _send_view(self, slot: int, n: int) -> memoryview:
        off = slot * self.slot_bytes
        return self.pool.buf[off:off + n]

    def _recv_view(self, slot: int, n: int) -> memoryview:
        off = slot * self.slot_bytes
        return self.peer_pool.buf[off:off + n]

    async def _put(self, slot: int, n: int) -> None:
        pass  # the slot is already the peer's memory

    def _teardown(self) -> None:
        for pool in (self.peer_pool, self.pool):
            if pool is not None:
                try:
                    pool.close()
                except BufferError:  # a view is still held by the caller; the mapping goes with the process
                    pass
        if self.pool is not None:
            self.pool.unlink()
