"""engines/policy/dispatch.py: the scheduler's dispatch pass, driven with hand-made engine views (no
simulator), checked decision by decision against the paper's rules (reference/paper.md 4) and, for
random clusters, against a linear reference written here from the paper's text."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engines.policy import SYSTEMS, EngineView
from engines.policy.dispatch import Dispatcher

GB = 1e9


def views(pe_toks, de_specs, *, pe_nodes=None, de_nodes=None, de_group_size=None):
    """PEs with the given tok (node i // 2 unless given); DEs from (tok, seq, hbm_free_bytes), on nodes
    after the PEs' nodes, in groups of `de_group_size` (default: one group)."""
    pe_nodes = pe_nodes or [i // 2 for i in range(len(pe_toks))]
    first_de_node = max(pe_nodes) + 1 if pe_nodes else 0
    de_nodes = de_nodes or [first_de_node + i // 2 for i in range(len(de_specs))]
    size = de_group_size or len(de_specs)
    pes = [EngineView(id=i, node=n, tok=float(t)) for i, (t, n) in enumerate(zip(pe_toks, pe_nodes))]
    des = [EngineView(id=i, node=n, tok=float(t), seq=s, hbm_free_bytes=float(h), group=i // size)
           for i, ((t, s, h), n) in enumerate(zip(de_specs, de_nodes))]
    nodes = max(pe_nodes + de_nodes) + 1
    return pes, des, nodes


def dispatcher(system, pes, des, nodes, *, alpha=1e9, beta=1e9, z=1.05):
    return Dispatcher(SYSTEMS[system], pes, des, nodes=nodes, alpha=alpha, beta=beta, z_factor=z)


# ----- PE: Algorithm 1 -------------------------------------------------------------------------------------
def test_pe_c1_overloaded_gets_nothing_and_the_fewest_tokens_win():
    pes, des, nodes = views([5000, 1200, 900], [(0, 0, 100 * GB)])
    d = dispatcher("dualpath", pes, des, nodes, beta=1000)
    d.submit("r0", 100, 1.0, 0)
    (dec,) = d.dispatch()
    assert dec.pe == 2 and pes[2].tok == 1000 and pes[2].seq == 1


def test_pe_all_overloaded_stops_the_pass_and_the_queue_keeps_its_order():
    pes, des, nodes = views([1001, 5000], [(0, 0, 100 * GB)])
    d = dispatcher("dualpath", pes, des, nodes, beta=1000)
    for r in ("a", "b"):
        d.submit(r, 100, 1.0, 0)
    assert d.dispatch() == [] and d.queued == 2
    d.prefill_done(0, 100)  # PE 0 drops to 901 <= beta: the head goes (then 1001)
    assert [x.request for x in d.dispatch()] == ["a"]


def test_pe_c2_short_read_queue_beats_c3_with_fewer_tokens_and_reads_move_categories():
    # PE 0 on node 0, PE 1 on node 1; a request with a hit read on the PE side lengthens node 0's queue
    pes, des, nodes = views([0, 500], [(0, 0, 100 * GB)], pe_nodes=[0, 1])
    d = dispatcher("dualpath", pes, des, nodes, alpha=100)
    d.read_q[2] = 1e12  # the DE node's queue is long: reads go to the PE side
    d.submit("long-read", 10, 1.0, 150)
    first = d.dispatch()[0]
    assert first.pe == 0 and first.read_side == "pe" and d.read_q[0] == 150  # node 0 now over alpha: C3
    d.submit("next", 10, 1.0, 0)
    assert d.dispatch()[0].pe == 1  # C2 (node 1) before C3 (node 0) despite 500 > 10 tokens
    d.read_done(0, 150)  # node 0 back under alpha: C2 again, and the fewest tokens win
    d.submit("after", 10, 1.0, 0)
    assert d.dispatch()[0].pe == 0


def test_pe_ties_rotate_so_idle_engines_share_the_work():
    pes, des, nodes = views([0, 0, 0, 0], [(0, 0, 100 * GB)])
    d = dispatcher("basic", pes, des, nodes)
    for i in range(4):
        d.submit(i, 0, 0.0, 0)  # zero-length: loads stay equal, only the rotation decides
    assert [x.pe for x in d.dispatch()] == [0, 1, 2, 3]


# ----- DE: two levels, Z per group ---------------------------------------------------------------------------
def test_de_prefers_a_de_under_z_with_the_fewest_requests_else_the_fewest_tokens():
    # one group: DE0 tok 900 seq 1, DE1 tok 100 seq 5, DE2 tok 0 seq 0 but no HBM; Z = 1.05*(10+1000)/3 = 353.5
    pes, des, nodes = views([0], [(900, 1, 100 * GB), (100, 5, 100 * GB), (0, 0, 0.0)])
    d = dispatcher("dualpath", pes, des, nodes)
    d.submit("r", 10, 1 * GB, 0)
    assert d.dispatch()[0].de == 1  # only DE1 stays under Z (DE2 has no room)
    pes, des, nodes = views([0], [(900, 1, 100 * GB), (800, 5, 100 * GB)])
    d = dispatcher("dualpath", pes, des, nodes)
    d.submit("r", 10, 1 * GB, 0)  # Z = 1.05 * 1710 / 2 = 897.75: both DEs are "high": fewest tokens
    assert d.dispatch()[0].de == 1


def test_z_counts_only_the_head_of_the_private_queue_that_fits_in_free_hbm():
    # free HBM 10 GB in the group: requests of 4 GB each: two fit, so Z = 1.05 * (2 * 100 + 0) / 2 = 105
    pes, des, nodes = views([0, 0], [(0, 0, 5 * GB), (0, 0, 5 * GB)])
    d = dispatcher("dualpath", pes, des, nodes)
    for i in range(5):
        d.submit(i, 100, 4 * GB, 0)
    out = d.dispatch()
    assert [x.de for x in out] == [0, 1]  # the first under Z; the second: DE0 at 100 + 100 > 105: DE1
    assert d.queued == 3  # the third fits nowhere (1 GB left on each): the group waits


def test_a_full_group_holds_only_its_own_requests_in_place_and_resumes_when_hbm_frees():
    # two groups of two DEs; group 0 has no HBM; phase 1 alternates requests g0, g1, g0, g1 by load
    pes, des, nodes = views([0, 0], [(0, 0, 0.0), (0, 0, 0.0), (0, 0, 100 * GB), (0, 0, 100 * GB)],
                            de_group_size=2)
    d = dispatcher("dualpath", pes, des, nodes)
    for i in range(4):
        d.submit(f"r{i}", 1000, 1 * GB, 0)
    out = d.dispatch()
    assert [x.request for x in out] == ["r1", "r3"] and all(x.de in (2, 3) for x in out)
    assert d.queued == 2
    d.decode_done(out[0].de, 1000, 1 * GB)  # r1 done: group 1 holds 1,000 tokens, group 0's queue 2,000
    d.submit("r4", 1000, 1 * GB, 0)  # so r4 joins group 1 and goes at once
    assert [x.request for x in d.dispatch()] == ["r4"]
    des[0].hbm_free_bytes = 0.0
    d.decode_done(0, 0, 10 * GB)  # HBM frees in group 0: its requests go, in their order
    assert [x.request for x in d.dispatch()] == ["r0", "r2"]


# ----- read side ---------------------------------------------------------------------------------------------
def test_read_side_by_the_shorter_node_queue_ties_to_the_node_that_read_less():
    pes, des, nodes = views([0], [(0, 0, 100 * GB)], pe_nodes=[0])
    d = dispatcher("dualpath", pes, des, nodes)
    d.submit("a", 10, 1.0, 500)
    d.submit("b", 10, 1.0, 300)
    a, b = d.dispatch()
    assert a.read_side == "pe"  # both queues empty, nothing read yet: the PE side
    assert b.read_side == "de"  # the PE node now has 500 queued, the DE node none
    d.read_done(0, 500)
    d.read_done(1, 300)
    d.submit("c", 10, 1.0, 100)
    assert d.dispatch()[0].read_side == "de"  # queues equal (0): the DE node has read less (300 < 500)


def test_round_robin_pe_only_and_no_read():
    for system, expect in (("dualpath-rr", ["pe", "de", "pe"]), ("basic", ["pe", "pe", "pe"]),
                           ("oracle", ["none", "none", "none"])):
        pes, des, nodes = views([0], [(0, 0, 100 * GB)])
        d = dispatcher(system, pes, des, nodes)
        for i in range(3):
            d.submit(i, 10, 1.0, 50)
        assert [x.read_side for x in d.dispatch()] == expect, system
    d.submit("nothing-cached", 10, 1.0, 0)
    assert d.dispatch()[0].read_side == "none"


# ----- baselines ---------------------------------------------------------------------------------------------
def test_baseline_least_loaded_with_room_and_head_of_line_blocking():
    pes, des, nodes = views([300, 100], [(0, 0, 1 * GB), (50, 1, 100 * GB)])
    d = dispatcher("basic", pes, des, nodes)
    d.submit("big", 10, 2 * GB, 0)    # only DE1 has room
    d.submit("huge", 10, 500 * GB, 0)  # no DE can hold it: the FIFO stops here
    d.submit("small", 10, 1.0, 0)
    out = d.dispatch()
    assert [(x.request, x.pe, x.de) for x in out] == [("big", 1, 1)] and d.queued == 2


# ----- the indexed choice equals the paper's linear rule -------------------------------------------------------
def linear_pe(pes, read_q, alpha, beta, rotate):
    """reference/paper.md 4.2's sketch, with ties to the first id counting from `rotate`."""
    n = len(pes)
    pool = [e for e in pes if e.tok <= beta]
    if not pool:
        return -1
    return min(pool, key=lambda e: (read_q[e.node] > alpha, e.tok, (e.id - rotate) % n)).id


@settings(max_examples=150, deadline=None)
@given(toks=st.lists(st.integers(0, 6), min_size=1, max_size=9),
       ops=st.lists(st.tuples(st.sampled_from(["submit", "done", "read"]), st.integers(0, 8), st.integers(0, 4)),
                    max_size=30))
def test_the_indexed_pe_choice_matches_the_linear_rule(toks, ops):
    pes, des, nodes = views([t * 100 for t in toks], [(0, 0, 1e15)] * 2, de_nodes=[99, 99])
    d = dispatcher("dualpath", pes, des, nodes, alpha=150, beta=400)
    done_pending = []
    for op, i, k in ops:
        if op == "submit":
            d.submit(len(done_pending), 100 * k, 1.0, 50 * k)
            expect = linear_pe(pes, d.read_q, 150, 400, d.dispatched)
            out = d.dispatch()
            if expect < 0:
                assert out == [] and d.queued == 1
                return
            else:
                assert out[0].pe == expect
                done_pending.append((out[0].pe, 100 * k, out[0].read_side, 50 * k, out[0].de))
        elif op == "done" and done_pending:
            pe, length, side, hit, de = done_pending.pop(i % len(done_pending))
            d.prefill_done(pe, length)
        elif op == "read":
            node = i % nodes
            if d.read_q[node] >= 50 * k:
                d.read_done(node, 50 * k)


def keyed_de(length, need, engines, z, rotate):
    """reference/paper.md 4.3 phase 2 as one sort key (the rule choose_de_paper implements with scalars)."""
    n, best, best_key = len(engines), -1, None
    for i, e in enumerate(engines):
        if e.hbm_free_bytes < need:
            continue
        tie = ((e.id - rotate) % n, e.id)
        key = (0, e.seq, e.tok, tie) if e.tok + length <= z else (1, e.tok, 0, tie)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best


@settings(max_examples=400, deadline=None)
@given(engines=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 4), st.integers(0, 2), st.integers(0, 3)),
                        max_size=8),
       length=st.integers(0, 3), need=st.integers(0, 3), z=st.integers(0, 6), rotate=st.integers(0, 10))
def test_the_de_choice_matches_the_paper_rule_as_a_sort_key(engines, length, need, z, rotate):
    from engines.policy import choose_de_paper

    views_ = [EngineView(id=i, node=0, tok=100.0 * t, seq=s, hbm_free_bytes=float(h)) for i, t, s, h in engines]
    args = (100.0 * length, float(need), views_, 100.0 * z, rotate)
    assert choose_de_paper(*args) == keyed_de(*args)
