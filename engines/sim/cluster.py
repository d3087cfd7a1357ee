"""The simulated cluster: nodes (SNIC, DRAM, staging buffer, storage read queue) and engines.

Node: g GPUs, one engine per GPU, one CNIC per GPU, the node's SNIC(s), DRAM (metered), a DRAM
staging buffer of fixed size. Engines are grouped: a group's engines step together (expert-parallel
FFN), and the scheduler's per-engine load counters live on the engine objects (they are the policy's
`EngineView`s).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from engines.sim.capacity import Capacity
from engines.sim.links import Link, Network, SharedLink
from engines.costmodel.cost import CostModel


@dataclass(frozen=True)
class ClusterShape:
    prefill_nodes: int
    decode_nodes: int
    prefill_group_nodes: int
    decode_group_nodes: int
    dram_buffer_bytes: float

    def group_sizes(self, gpus_per_node: int) -> tuple[int, int]:
        return (min(self.prefill_group_nodes, self.prefill_nodes) * gpus_per_node,
                min(self.decode_group_nodes, self.decode_nodes) * gpus_per_node)


class Node:
    __slots__ = ("id", "kind", "name", "snic_rx", "snic_tx", "dram_rx", "dram_tx", "buffer", "read_queue",
                 "active_reads", "reader")

    def __init__(self, id: int, kind: str, name: str, net: Network, snic_rate: float, dram_cap: float):
        self.id = id
        self.kind = kind
        self.name = name
        self.snic_rx: Link = net.add_link(id, "snic", "rx", snic_rate)
        self.snic_tx: Link = net.add_link(id, "snic", "tx", snic_rate)
        self.dram_rx: Link = net.add_link(id, "dram", "rx", None)
        self.dram_tx: Link = net.add_link(id, "dram", "tx", None)
        # storage reads share the SNIC and land in DRAM: rx on the SNIC (the read itself, DESIGN.md links
        # contract) and on the DRAM meter (the buffer write the paper's DRAM bounds count)
        self.reader = SharedLink(net, self.snic_rx, (self.dram_rx,), "kv_read")
        self.buffer = Capacity(dram_cap)     # the DRAM staging buffer (its pump: the node's storage reads)
        self.read_queue: deque = deque()     # requests waiting to read from storage
        self.active_reads = 0


class Engine:
    """A PE or DE (one GPU). Carries the scheduler's view: id, node, tok, seq, hbm_free_bytes, group."""

    __slots__ = ("id", "name", "role", "node", "group", "cnic_rx", "cnic_tx", "tok", "seq", "hbm_free_bytes",
                 "ready", "hbm_cap", "hbm", "hbm_waiters", "batch", "ctx_sum", "min_sum", "step_s")

    def __init__(self, id: int, gpu: int, role: str, node: Node, group: int, net: Network, cnic_rate: float,
                 hbm_cap: float):
        self.id = id
        self.name = f"{node.name}.{gpu}"
        self.role = role
        self.node = node.id
        self.group = group
        self.cnic_rx: Link = net.add_link(node.id, f"cnic{gpu}", "rx", cnic_rate)
        self.cnic_tx: Link = net.add_link(node.id, f"cnic{gpu}", "tx", cnic_rate)
        self.tok = 0.0
        self.seq = 0
        self.hbm_cap = hbm_cap
        self.hbm_free_bytes = hbm_cap    # DE: not yet promised; PE: unused
        self.hbm = Capacity(hbm_cap)     # PE whole-request prefill: KV held in HBM
        self.hbm_waiters: deque = deque()
        self.ready = None                # PE: requests ready to compute (its prefill group's queue)
        self.batch = 0                   # DE: sequences decoding
        self.ctx_sum = 0.0
        self.min_sum = 0.0
        self.step_s = 0.0


class Cluster:
    def __init__(self, shape: ClusterShape, cost: CostModel, net: Network):
        hw = cost.hw
        g = hw.gpus_per_node
        self.nodes: list[Node] = []
        self.pes: list[Engine] = []
        self.des: list[Engine] = []
        pe_group, de_group = shape.group_sizes(g)
        for n in range(shape.prefill_nodes):
            self.nodes.append(Node(len(self.nodes), "prefill", f"p{n}", net, cost.snic_rate, shape.dram_buffer_bytes))
        for n in range(shape.decode_nodes):
            self.nodes.append(Node(len(self.nodes), "decode", f"d{n}", net, cost.snic_rate, shape.dram_buffer_bytes))
        for node in self.nodes:
            for gpu in range(g):
                if node.kind == "prefill":
                    idx = len(self.pes)
                    e = Engine(idx, gpu, "prefill", node, idx // pe_group, net, cost.cnic_rate,
                               cost.prefill_kv_capacity_bytes())
                    self.pes.append(e)
                else:
                    idx = len(self.des)
                    e = Engine(idx, gpu, "decode", node, idx // de_group, net, cost.cnic_rate,
                               cost.decode_kv_capacity_bytes())
                    self.des.append(e)
        self.pe_groups = _groups(self.pes)
        self.de_groups = _groups(self.des)
        self.node_names = {n.id: n.name for n in self.nodes}


def _groups(engines: list[Engine]) -> list[list[Engine]]:
    out: dict[int, list[Engine]] = {}
    for e in engines:
        out.setdefault(e.group, []).append(e)
    return [out[k] for k in sorted(out)]
