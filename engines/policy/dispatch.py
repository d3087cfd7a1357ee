"""The global scheduler's dispatch pass (reference/paper.md 4), one core for both runtimes.

`Dispatcher` holds the queue of waiting requests and the scheduler's view of the cluster (per engine
`tok`, `seq`, `hbm_free_bytes`; per node the storage read queue), and `dispatch()` returns decisions
(PE, DE, read side) that the caller applies. No clock, no I/O: the simulator calls it from its event
loop, the live router from its own; both report back what finishes (`prefill_done`, `decode_done`,
`read_done`), which is all the bookkeeping that goes with a decision.

The rules, per system (`SystemPolicy`):
- paper scheduler (`dualpath`, `oracle`):
  - PE: Algorithm 1. C1 (tok > beta) gets nothing; C2 (node read queue <= alpha) before C3; inside a
    category the fewest unfinished tokens; the pass stops when C2 and C3 are empty.
  - DE phase 1: a request joins the private queue of the DE group with the smallest unfinished tokens
    (its DEs' `tok` plus the requests already queued for it) when it is submitted, and stays there (the
    paper drains the global queue into private queues). Phase 2: Z = z_factor x (the lengths of the
    head of the group's private queue that fits in the group's free HBM + the group's tok) / |group|,
    computed once per pass per group; the request goes to a DE with room that stays under Z (fewest
    requests), else to the DE with room and the fewest tokens. A group whose head request no DE can
    hold is blocked, keeps its requests in place, and is looked at again only when HBM frees in it;
    the other groups' requests go on.
  - Requests leave in global arrival order among the groups that are not blocked.
- baselines (`basic`, `layerwise`, `dualpath-rr`): FIFO; the PE with the fewest unfinished tokens (no
  cap) and the DE with the fewest unfinished tokens among those with room; the pass stops at the first
  request no DE can hold.
- read side: the shorter node read queue (ties: the node that has read less), round robin, or the PE
  side only; a request with nothing to read (or `free_io`) reads nowhere.
- ties between engines of equal load go to the first engine id counting from the number of requests
  dispatched so far, so idle engines share the work.

Cost per decision: O(log n) in engines (sorted indexes keyed by load) and in queued requests (per-group
private queues, a heap of their heads, prefix sums for Z); a paper DE choice scans the engines of one
group (its size is set by `decode_group_nodes`, not by the cluster).
"""
from __future__ import annotations

import heapq
import itertools
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from sortedcontainers import SortedList

from engines.policy.de import choose_de_paper
from engines.policy.pe import EngineView
from engines.policy.systems import SystemPolicy

_LOW = float("-inf")


@dataclass(frozen=True)
class Decision:
    request: Any     # the caller's handle, as submitted
    pe: int          # index into the PEs
    de: int          # index into the DEs
    read_side: str   # "pe" | "de" | "none"


class _Queued:
    __slots__ = ("handle", "length", "hbm_need", "hit", "order")

    def __init__(self, handle, length: float, hbm_need: float, hit: float, order: int):
        self.handle = handle
        self.length = length
        self.hbm_need = hbm_need
        self.hit = hit
        self.order = order


class _GroupQueue:
    """A DE group's private queue with running sums of length and HBM need (for Z in O(log n))."""

    __slots__ = ("items", "cum_len", "cum_need", "popped")

    def __init__(self):
        self.items: deque[_Queued] = deque()
        self.cum_len = [0.0]     # cum_len[i]: lengths of the first i requests ever queued here
        self.cum_need = [0.0]
        self.popped = 0          # requests that left: items[0] is request number `popped`

    def push(self, q: _Queued) -> None:
        self.items.append(q)
        self.cum_len.append(self.cum_len[-1] + q.length)
        self.cum_need.append(self.cum_need[-1] + q.hbm_need)

    def pop(self) -> _Queued:
        self.popped += 1
        if self.popped > 4096 and self.popped * 2 > len(self.cum_len):  # drop the prefix sums of the gone
            self.cum_len = self.cum_len[self.popped:]
            self.cum_need = self.cum_need[self.popped:]
            self.popped = 0
        return self.items.popleft()

    def queued_length(self) -> float:
        return self.cum_len[-1] - self.cum_len[self.popped]

    def fit_length(self, free_bytes: float) -> float:
        """Lengths of the head of the queue that fits in `free_bytes` (no fragmentation)."""
        base = self.popped
        k = bisect_right(self.cum_need, self.cum_need[base] + free_bytes, lo=base) - 1
        return self.cum_len[k] - self.cum_len[base]


class _LoadIndex:
    """Engines ordered by (category, tok, id): the least-loaded engine and its rotated tie in O(log n)."""

    __slots__ = ("keys", "n", "cat")

    def __init__(self, engines: Sequence[EngineView], n: int):
        self.n = n
        self.cat = {e.id: 0 for e in engines}
        self.keys = SortedList((0, e.tok, e.id) for e in engines)

    def move(self, e: EngineView, old_tok: float) -> None:
        c = self.cat[e.id]
        self.keys.remove((c, old_tok, e.id))
        self.keys.add((c, e.tok, e.id))

    def recategorise(self, e: EngineView, cat: int) -> None:
        old = self.cat[e.id]
        if old != cat:
            self.keys.remove((old, e.tok, e.id))
            self.keys.add((cat, e.tok, e.id))
            self.cat[e.id] = cat

    def first(self, cat: int, tok: float, rotate: int) -> int:
        """The engine id of class (cat, tok) that comes first counting from `rotate`."""
        keys = self.keys
        i = keys.bisect_left((cat, tok, rotate % self.n))
        if i < len(keys):
            c, t, e = keys[i]
            if c == cat and t == tok:
                return e
        return keys[keys.bisect_left((cat, tok, -1))][2]

    def least(self, beta: float = float("inf")) -> tuple[int, float]:
        """(category, tok) of the least-loaded engine with tok <= beta, category 0 first; (-1, 0) if none."""
        keys = self.keys
        if not keys:
            return -1, 0.0
        c, t, _ = keys[0]
        if t <= beta:
            return c, t
        if c == 0:
            i = keys.bisect_left((1, _LOW, -1))
            if i < len(keys):
                c, t, _ = keys[i]
                if t <= beta:
                    return c, t
        return -1, 0.0


class Dispatcher:
    """The scheduler's state and its dispatch pass. `pes` and `des` are engine views (objects with
    `EngineView`'s attributes, e.g. the runtimes' engine objects); their `tok`, `seq` and
    `hbm_free_bytes` are kept here and must change only through this object."""

    def __init__(self, policy: SystemPolicy, pes: Sequence[EngineView], des: Sequence[EngineView], *,
                 nodes: int, alpha: float, beta: float, z_factor: float):
        self.policy = policy
        self.paper = policy.paper_scheduler
        self.free_io = policy.free_io
        self.pes = list(pes)
        self.des = list(des)
        self.alpha = alpha
        self.beta = beta
        self.z_factor = z_factor
        self.read_q = [0.0] * nodes      # tokens queued or being read, per node (the paper's read_q)
        self.read_total = [0.0] * nodes  # tokens ever given to each node to read
        self.dispatched = 0
        self._order = itertools.count()
        self._rr = itertools.cycle(("pe", "de"))
        self._pe_index = {e.id: i for i, e in enumerate(self.pes)}
        self._de_index = {e.id: i for i, e in enumerate(self.des)}
        self.pe_load = _LoadIndex(self.pes, len(self.pes))
        self._pes_on_node: dict[int, list[EngineView]] = {}
        for e in self.pes:
            self._pes_on_node.setdefault(e.node, []).append(e)
        self._pe_cat = {n: 0 for n in self._pes_on_node}
        if self.paper:
            groups: dict[int, list[EngineView]] = {}
            for e in self.des:
                groups.setdefault(e.group, []).append(e)
            self.groups = [groups[g] for g in sorted(groups)]
            self._group_of = {g: i for i, g in enumerate(sorted(groups))}
            self.group_tok = [sum(e.tok for e in g) for g in self.groups]
            self.group_free = [sum(e.hbm_free_bytes for e in g) for g in self.groups]
            self.group_queues = [_GroupQueue() for _ in self.groups]
            self.blocked = [False] * len(self.groups)
            self._heads: list[tuple[int, int]] = []     # (order of the head request, group) of unblocked groups
            self._load = list(self.group_tok)   # a group's tok plus the lengths queued for it (phase 1's load)
            self._load_heap = [(load, g) for g, load in enumerate(self._load)]  # stale entries are skipped
            self.fifo = None
        else:
            self.de_load = _LoadIndex(self.des, len(self.des))
            self.fifo: deque[_Queued] | None = deque()
        self.queued = 0

    # ----- requests in ------------------------------------------------------------------------------
    def submit(self, handle, length: float, hbm_need: float, hit: float) -> None:
        """A request joins the queue: `length` tokens (the scheduler's load unit), the DE HBM it needs for
        its whole decode, and `hit` cached tokens to read from storage."""
        self.queued += 1
        if not self.paper:
            self.fifo.append(_Queued(handle, length, hbm_need, hit, next(self._order)))
            return
        g = self._least_loaded_group()
        q = _Queued(handle, length, hbm_need, hit, next(self._order))
        gq = self.group_queues[g]
        gq.push(q)
        self._set_load(g, self._load[g] + length)
        if len(gq.items) == 1 and not self.blocked[g]:
            heapq.heappush(self._heads, (q.order, g))

    def _least_loaded_group(self) -> int:
        heap = self._load_heap
        while True:
            load, g = heap[0]
            if load == self._load[g]:
                return g
            heapq.heappop(heap)  # stale

    def _set_load(self, g: int, load: float) -> None:
        self._load[g] = load
        heapq.heappush(self._load_heap, (load, g))
        if len(self._load_heap) > 8 * len(self._load) + 64:  # drop stale entries now and then
            self._load_heap = [(l, k) for k, l in enumerate(self._load)]
            heapq.heapify(self._load_heap)

    # ----- the pass ---------------------------------------------------------------------------------
    def dispatch(self) -> list[Decision]:
        """One pass over the queue: every request that can go now, in order, with its (PE, DE, read side)."""
        if self.queued == 0:
            return []
        return self._pass_paper() if self.paper else self._pass_baseline()

    def _choose_pe_paper(self) -> int:
        cat, tok = self.pe_load.least(self.beta)
        if cat < 0:
            return -1
        return self._pe_index[self.pe_load.first(cat, tok, self.dispatched)]

    def _pass_paper(self) -> list[Decision]:
        out: list[Decision] = []
        heads = self._heads
        z_cache: dict[int, float] = {}
        while heads:
            p = self._choose_pe_paper()
            if p < 0:
                break
            _, g = heads[0]
            gq = self.group_queues[g]
            q = gq.items[0]
            z = z_cache.get(g)
            if z is None:
                engines = self.groups[g]
                z = z_cache[g] = self.z_factor * (gq.fit_length(self.group_free[g]) + self.group_tok[g]) / len(engines)
            d = choose_de_paper(q.length, q.hbm_need, self.groups[g], z, self.dispatched)
            if d < 0:  # this group waits for HBM; the others go on
                self.blocked[g] = True
                heapq.heappop(heads)
                continue
            gq.pop()
            if gq.items:
                heapq.heapreplace(heads, (gq.items[0].order, g))
            else:
                heapq.heappop(heads)
            de = self.groups[g][d]
            self.group_tok[g] += q.length
            self.group_free[g] -= q.hbm_need
            out.append(self._assign(q, self.pes[p], de))
        return out

    def _pass_baseline(self) -> list[Decision]:
        out: list[Decision] = []
        fifo = self.fifo
        while fifo:
            q = fifo[0]
            _, tok = self.pe_load.least()
            pe = self.pes[self._pe_index[self.pe_load.first(0, tok, self.dispatched)]]
            d = self._choose_de_least_loaded(q.hbm_need)
            if d < 0:
                break
            fifo.popleft()
            out.append(self._assign(q, pe, self.des[d]))
        return out

    def _choose_de_least_loaded(self, need: float) -> int:
        """The DE with the fewest unfinished tokens among those with room (ties rotate), or -1."""
        keys = self.de_load.keys
        des, index = self.des, self._de_index
        for _, tok, eid in keys:
            if des[index[eid]].hbm_free_bytes >= need:
                break
        else:
            return -1
        # the first engine of this load class with room, counting from the rotation
        n = len(des)
        r = self.dispatched % n
        lo = keys.bisect_left((0, tok, -1))
        start = keys.bisect_left((0, tok, r))
        hi = keys.bisect_left((0, tok, n))
        for i in itertools.chain(range(start, hi), range(lo, start)):
            e = des[index[keys[i][2]]]
            if e.hbm_free_bytes >= need:
                return index[e.id]
        return -1  # pragma: no cover - the scan above found one

    def _assign(self, q: _Queued, pe: EngineView, de: EngineView) -> Decision:
        self.queued -= 1
        self.dispatched += 1
        old = pe.tok
        pe.tok += q.length
        pe.seq += 1
        self.pe_load.move(pe, old)
        old = de.tok
        de.tok += q.length
        de.seq += 1
        de.hbm_free_bytes -= q.hbm_need
        if not self.paper:
            self.de_load.move(de, old)
        side = "none" if self.free_io or q.hit == 0 else self._read_side(pe.node, de.node)
        if side != "none":
            node = pe.node if side == "pe" else de.node
            self._add_read(node, q.hit)
            self.read_total[node] += q.hit
        return Decision(q.handle, self._pe_index[pe.id], self._de_index[de.id], side)

    def _read_side(self, pe_node: int, de_node: int) -> str:
        sides = self.policy.read_sides
        if sides == "pe":
            return "pe"
        if sides == "round-robin":
            return next(self._rr)
        # shorter node read queue; ties (both idle, the common case when storage is not the bottleneck)
        # go to the node that has read less so far, so idle SNICs share the work
        pe_q, de_q = self.read_q[pe_node], self.read_q[de_node]
        if pe_q != de_q:
            return "de" if de_q < pe_q else "pe"
        return "de" if self.read_total[de_node] < self.read_total[pe_node] else "pe"

    def _add_read(self, node: int, tokens: float) -> None:
        self.read_q[node] += tokens
        if self.paper and node in self._pe_cat:
            cat = 0 if self.read_q[node] <= self.alpha else 1
            if cat != self._pe_cat[node]:
                self._pe_cat[node] = cat
                for e in self._pes_on_node[node]:
                    self.pe_load.recategorise(e, cat)

    # ----- what the runtime reports back ------------------------------------------------------------
    def read_done(self, node: int, tokens: float) -> None:
        """A storage read of `tokens` on `node` finished."""
        self._add_read(node, -tokens)

    def prefill_done(self, pe_index: int, length: float) -> None:
        """A request of `length` tokens finished prefill on PE `pe_index`."""
        pe = self.pes[pe_index]
        old = pe.tok
        pe.tok -= length
        pe.seq -= 1
        self.pe_load.move(pe, old)

    def decode_done(self, de_index: int, length: float, hbm_need: float) -> None:
        """A request finished decoding on DE `de_index`: its tokens and HBM are free again."""
        de = self.des[de_index]
        old = de.tok
        de.tok -= length
        de.seq -= 1
        de.hbm_free_bytes += hbm_need
        if not self.paper:
            self.de_load.move(de, old)
            return
        g = self._group_of[de.group]
        self.group_tok[g] -= length
        self.group_free[g] += hbm_need
        self._set_load(g, self._load[g] - length)
        if self.blocked[g]:  # HBM freed here: its queue may move again
            self.blocked[g] = False
            gq = self.group_queues[g]
            if gq.items:
                heapq.heappush(self._heads, (gq.items[0].order, g))

    # ----- failover (the live router, issue 14): forget an engine that died --------------------------
    # Added on its own so that the rest of the class stays as it is: the engine stays in `pes`/`des` (the
    # indexes of earlier decisions keep their meaning) but leaves every index a decision is taken from.
    def remove_engine(self, role: str, index: int) -> list:
        """Forget PE (`role` "pe") or DE ("de") number `index`: no later decision names it. Its unfinished
        requests are settled here (its tok, seq and HBM leave the books), so the caller reports nothing
        more for this engine (no prefill_done/decode_done; read_done as usual: reads are per node).
        Requests queued for a DE group left without engines join the ends of the other groups' queues.
        Returns the handles of queued requests no engine can take any more (the last PE or the last DE is
        gone; they leave the queue), for the caller to fail. Removing an engine twice does nothing."""
        removed = self.__dict__.setdefault("_removed", set())
        if role not in ("pe", "de"):
            raise ValueError(f"role must be 'pe' or 'de', got {role!r}")
        if (role, index) in removed:
            return []
        removed.add((role, index))
        if role == "pe":
            e = self.pes[index]
            self.pe_load.keys.remove((self.pe_load.cat[e.id], e.tok, e.id))
            on_node = self._pes_on_node.get(e.node, [])
            if e in on_node:
                on_node.remove(e)
            if not on_node:
                self._pes_on_node.pop(e.node, None)
                self._pe_cat.pop(e.node, None)
            e.tok, e.seq = 0.0, 0
        else:
            e = self.des[index]
            if not self.paper:
                self.de_load.keys.remove((0, e.tok, e.id))
            else:
                g = self._group_of[e.group]
                self.groups[g].remove(e)
                self.group_tok[g] -= e.tok
                self.group_free[g] -= e.hbm_free_bytes
                self._set_load(g, self._load[g] - e.tok)
                if not self.groups[g]:
                    self._retire_group(g)
            e.tok, e.seq, e.hbm_free_bytes = 0.0, 0, 0.0
        if all((role, i) in removed for i in range(len(self.pes if role == "pe" else self.des))):
            return self._drop_queue()
        return []

    def _retire_group(self, g: int) -> None:
        """A DE group without engines: it takes no more requests; its queue goes to the other groups."""
        self.blocked[g] = True
        self._heads = [(o, k) for o, k in self._heads if k != g]
        heapq.heapify(self._heads)
        self._load[g] = float("inf")
        heapq.heappush(self._load_heap, (float("inf"), g))
        gq = self.group_queues[g]
        moved = list(gq.items)
        while gq.items:
            gq.pop()
        if any(self.groups):
            for q in moved:  # in their order, each to the end of the least-loaded group left
                k = self._least_loaded_group()
                self.group_queues[k].push(q)
                self._set_load(k, self._load[k] + q.length)
                if len(self.group_queues[k].items) == 1 and not self.blocked[k]:
                    heapq.heappush(self._heads, (q.order, k))
        else:
            self.__dict__.setdefault("_orphans", []).extend(q.handle for q in moved)

    def _drop_queue(self) -> list:
        """Every queued request leaves (no engine of a role is left); their handles."""
        out = self.__dict__.pop("_orphans", [])
        if self.paper:
            for g, gq in enumerate(self.group_queues):
                while gq.items:
                    out.append(gq.pop().handle)
                self._heads = []
        else:
            out.extend(q.handle for q in self.fifo)
            self.fifo.clear()
        self.queued = 0
        return out
