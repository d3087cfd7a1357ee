"""`live.transport: rdma` (issue 17): KV payloads by RDMA WRITE over reliable-connected (RC) queue pairs,
through pyverbs (rdma-core's Python binding; Debian's `python3-pyverbs`, not PyPI's, see the README).

A slot channel (engines/live/slots.py: headers over tcp, payloads written into the peer's slots): each
side registers a receive pool (remote write allowed) and a send pool (local only) of `slots` x
`slot_bytes`; a payload goes by RDMA WRITE from our send slot into the same slot of the peer's receive
pool, in work requests of at most `max_msg` bytes with only each post's last signaled. Queue-pair details
(QPN, LID, GID, PSN, pool address and rkey) are exchanged over tcp when the channel opens.

Device-free parts, tested everywhere: `plan()` (the registration plan: page-aligned pools, slot
addresses, access flags) and `schedule()` (the work requests of one payload). `probe()` finds a device
with `ibv_get_device_list`, or says in one line why there is none (the transport is then refused, exit 2).
"""
from __future__ import annotations

import ctypes
import mmap
import random
from dataclasses import dataclass

from engines.live.slots import SlotChannel

PAGE = 4096
MAX_MSG = 1 << 30          # an RC message's limit on common NICs (the port's max_msg_sz is checked too)
PORT = 1
GID_INDEX = 0
HELP = ("install Debian's python3-pyverbs (apt-get install python3-pyverbs) and use a venv made with "
        "--system-site-packages (or PYTHONPATH=/usr/lib/python3/dist-packages)")


class RdmaUnavailable(RuntimeError):
    pass


def probe() -> str:
    """The first RDMA device's name, or RdmaUnavailable saying in one line why there is none."""
    try:
        from pyverbs import device
    except ImportError as exc:
        raise RdmaUnavailable(f"pyverbs is not importable ({exc}): {HELP}") from None
    try:
        devices = device.get_device_list()
    except Exception as exc:  # pyverbs raises PyverbsRDMAError when the kernel has no RDMA subsystem
        raise RdmaUnavailable(f"ibv_get_device_list failed ({str(exc).strip() or type(exc).__name__}): "
                              "this host has no RDMA subsystem") from None
    if not devices:
        raise RdmaUnavailable("ibv_get_device_list found no RDMA device on this host")
    name = devices[0].name
    return name.decode() if isinstance(name, bytes) else str(name)


# ----- device-free: the registration plan and the work-request schedule ---------------------------------
ACCESS_LOCAL_WRITE, ACCESS_REMOTE_WRITE = 1, 2   # ibv_access_flags (IBV_ACCESS_LOCAL_WRITE, _REMOTE_WRITE)


@dataclass(frozen=True)
class Region:
    role: str           # "send" (local writes only) | "recv" (the peer writes into it)
    length: int         # bytes registered (whole pages)
    access: int         # ibv_access_flags
    slot_offsets: tuple[int, ...]


def plan(slots: int, slot_bytes: int) -> tuple[Region, Region]:
    """The two pools one side of a channel registers: slots start on page boundaries (a slot of
    `slot_bytes` rounded up to whole pages), the receive pool allows remote writes."""
    if slots < 1 or slot_bytes < 1:
        raise ValueError(f"an RDMA pool needs slots >= 1 and slot_bytes >= 1, got {slots} x {slot_bytes}")
    stride = -(-slot_bytes // PAGE) * PAGE
    offsets = tuple(i * stride for i in range(slots))
    return (Region("send", slots * stride, ACCESS_LOCAL_WRITE, offsets),
            Region("recv", slots * stride, ACCESS_LOCAL_WRITE | ACCESS_REMOTE_WRITE, offsets))


@dataclass(frozen=True)
class WorkRequest:
    offset: int         # within the slot (local and remote alike)
    length: int
    signaled: bool      # only the last of a payload asks for a completion


def schedule(nbytes: int, max_msg: int = MAX_MSG, max_wr: int = 64) -> list[list[WorkRequest]]:
    """The RDMA WRITEs of one payload of `nbytes`, in posts of at most `max_wr` work requests (the send
    queue's depth); each post's last request is signaled, and a post waits for the previous one's
    completion, so the queue never overflows. An empty payload moves nothing."""
    if max_msg < 1 or max_wr < 1:
        raise ValueError(f"max_msg and max_wr must be >= 1, got {max_msg}, {max_wr}")
    wrs = [(off, min(max_msg, nbytes - off)) for off in range(0, nbytes, max_msg)]
    posts = [wrs[i:i + max_wr] for i in range(0, len(wrs), max_wr)]
    return [[WorkRequest(o, n, j == len(p) - 1) for j, (o, n) in enumerate(p)] for p in posts]


# ----- the channel (needs a device) ----------------------------------------------------------------------
class _Pool:
    """Page-aligned anonymous memory registered as one memory region."""

    def __init__(self, pd, region: Region):
        from pyverbs.mr import MR
        self.region = region
        self.mem = mmap.mmap(-1, region.length)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))
        self.mr = MR(pd, region.length, region.access, address=self.addr)

    def view(self, slot: int, n: int) -> memoryview:
        off = self.region.slot_offsets[slot]
        return memoryview(self.mem)[off:off + n]

    def close(self) -> None:
        self.mr.close()


class RdmaChannel(SlotChannel):
    """An RC queue pair per channel; each side registers a send and a receive pool (`plan`)."""
    kind = "rdma"

    def __init__(self, control, slots: int = 4, slot_bytes: int = 64 << 20, pacer=None, device: str | None = None):
        super().__init__(control, slots, slot_bytes, pacer)
        import pyverbs.enums as e
        from pyverbs.cq import CQ
        from pyverbs.device import Context
        from pyverbs.pd import PD
        from pyverbs.qp import QP, QPCap, QPInitAttr
        self.e = e
        self.ctx = Context(name=device or probe())
        self.pd = PD(self.ctx)
        self.cq = CQ(self.ctx, 256)
        send, recv = plan(slots, slot_bytes)
        self.send_pool, self.recv_pool = _Pool(self.pd, send), _Pool(self.pd, recv)
        cap = QPCap(max_send_wr=128, max_recv_wr=1, max_send_sge=1, max_recv_sge=1)
        self.qp = QP(self.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq, rcq=self.cq, cap=cap))
        port = self.ctx.query_port(PORT)
        self.max_msg = min(MAX_MSG, int(getattr(port, "max_msg_sz", MAX_MSG)))
        self.mtu = port.active_mtu
        self.me = {"qpn": self.qp.qp_num, "lid": port.lid, "psn": random.getrandbits(24),
                   "gid": str(self.ctx.query_gid(PORT, GID_INDEX)), "addr": self.recv_pool.addr,
                   "rkey": self.recv_pool.mr.rkey}

    def _hello(self) -> dict:
        return self.me

    def _connect(self, peer: dict) -> None:
        from pyverbs.addr import GID, AHAttr, GlobalRoute
        from pyverbs.qp import QPAttr
        e = self.e
        self.remote = peer
        attr = QPAttr(qp_state=e.IBV_QPS_INIT)
        attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
        attr.port_num = PORT
        self.qp.to_init(attr)
        gr = GlobalRoute(dgid=GID(peer["gid"]), sgid_index=GID_INDEX)
        attr = QPAttr(qp_state=e.IBV_QPS_RTR)
        attr.path_mtu, attr.dest_qp_num, attr.rq_psn = self.mtu, peer["qpn"], peer["psn"]
        attr.max_dest_rd_atomic, attr.min_rnr_timer = 1, 12
        attr.ah_attr = AHAttr(dlid=peer["lid"], is_global=1, port_num=PORT, grh=gr)
        self.qp.to_rtr(attr)
        attr = QPAttr(qp_state=e.IBV_QPS_RTS)
        attr.sq_psn, attr.timeout, attr.retry_cnt, attr.rnr_retry, attr.max_rd_atomic = self.me["psn"], 14, 7, 7, 1
        self.qp.to_rts(attr)

    def _send_view(self, slot: int, n: int) -> memoryview:
        return self.send_pool.view(slot, n)

    def _recv_view(self, slot: int, n: int) -> memoryview:
        return self.recv_pool.view(slot, n)

    def _write(self, slot: int, n: int) -> None:
        from pyverbs.wr import SGE, SendWR
        e, off = self.e, self.send_pool.region.slot_offsets[slot]
        for post in schedule(n, self.max_msg):
            for wr in post:  # in order on the QP; only the post's last asks for a completion
                sge = SGE(self.send_pool.addr + off + wr.offset, wr.length, self.send_pool.mr.lkey)
                w = SendWR(wr_id=slot, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1, sg=[sge],
                           send_flags=e.IBV_SEND_SIGNALED if wr.signaled else 0)
                w.set_wr_rdma(self.remote["rkey"], self.remote["addr"] + off + wr.offset)
                self.qp.post_send(w)
            while True:  # the post's one signaled completion (bounded by the QP's retry timeout)
                npolled, wcs = self.cq.poll()
                if npolled:
                    if wcs[0].status != e.IBV_WC_SUCCESS:
                        raise ConnectionError(f"RDMA WRITE failed: work completion status {wcs[0].status}")
                    break

    def _teardown(self) -> None:
        for obj in (self.qp, self.send_pool, self.recv_pool, self.cq, self.pd, self.ctx):
            try:
                obj.close()
            except Exception:  # teardown of a half-open channel: what is left goes with the process
                pass
