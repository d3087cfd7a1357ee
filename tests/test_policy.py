"""engines/policy: the pure scheduling functions (reference/paper.md 4), checked against the paper's rules
and small reference implementations written here from the paper's text."""
from __future__ import annotations

import copy
import random

import pytest

from engines.policy import (SYSTEMS, BatchItem, EngineView, assign_de_paper, choose_de_least_loaded,
                            choose_de_paper, choose_group, choose_pe_least_loaded, choose_pe_paper, fetch_pe_paper,
                            pack_chunked, pack_whole, read_side_pe_only, read_side_round_robin,
                            read_side_shorter_queue, system_policy, z_threshold, group_z, plan_groups)
from traces.errors import InputError


def pes(*toks, nodes=None, ids=None):
    """PE views with the given unfinished tokens; node i // 2 unless given; ids 0..n-1 unless given."""
    nodes = nodes if nodes is not None else [i // 2 for i in range(len(toks))]
    ids = ids if ids is not None else list(range(len(toks)))
    return [EngineView(id=i, node=n, tok=float(t)) for i, n, t in zip(ids, nodes, toks)]


def des(*specs, ids=None):
    """DE views from (tok, seq, hbm_free_bytes) triples."""
    ids = ids if ids is not None else list(range(len(specs)))
    return [EngineView(id=i, node=0, tok=float(t), seq=s, hbm_free_bytes=float(h)) for i, (t, s, h) in zip(ids, specs)]


# ----- PE choice (paper Algorithm 1) -------------------------------------------------------------------------
class TestChoosePePaper:
    def test_fewest_tokens_when_all_read_queues_are_short(self):
        engines = pes(50, 20, 30)
        assert choose_pe_paper(engines, lambda n: 0.0, alpha=100, beta=1000) == 1

    def test_c1_overloaded_engines_get_nothing(self):
        engines = pes(5000, 1200, 900)  # beta 1000: the first two are overloaded
        assert choose_pe_paper(engines, lambda n: 0.0, alpha=100, beta=1000) == 2

    def test_tok_equal_to_beta_is_not_overloaded(self):
        # C1 is tok > beta (strict); an engine at exactly beta is still C2/C3
        assert choose_pe_paper(pes(1000), lambda n: 0.0, alpha=100, beta=1000) == 0

    def test_all_overloaded_returns_minus_one(self):
        assert choose_pe_paper(pes(1001, 5000), lambda n: 0.0, alpha=100, beta=1000) == -1
        assert choose_pe_paper([], lambda n: 0.0, alpha=100, beta=1000) == -1

    def test_c2_short_read_queue_beats_c3_with_fewer_tokens(self):
        # engine 0 on node 0 (long read queue) has fewer tokens, engine 1 on node 1 (short queue) more
        engines = pes(10, 900, nodes=[0, 1])
        read_q = {0: 500.0, 1: 50.0}.__getitem__
        assert choose_pe_paper(engines, read_q, alpha=100, beta=1000) == 1

    def test_read_queue_equal_to_alpha_is_short(self):
        engines = pes(10, 900, nodes=[0, 1])
        read_q = {0: 101.0, 1: 100.0}.__getitem__  # node 1 exactly at alpha: C2
        assert choose_pe_paper(engines, read_q, alpha=100, beta=1000) == 1

    def test_c3_used_when_c2_is_empty(self):
        engines = pes(300, 200, 900, nodes=[0, 0, 1])
        read_q = {0: 500.0, 1: 400.0}.__getitem__  # every node over alpha: fewest tokens among C3
        assert choose_pe_paper(engines, read_q, alpha=100, beta=1000) == 1

    def test_c2_engine_over_beta_falls_back_to_c3(self):
        engines = pes(2000, 700, nodes=[1, 0])
        read_q = {0: 500.0, 1: 0.0}.__getitem__  # the C2 engine is overloaded (C1)
        assert choose_pe_paper(engines, read_q, alpha=100, beta=1000) == 1

    def test_ties_broken_by_id_not_by_position(self):
        engines = pes(10, 10, 10, ids=[7, 3, 5], nodes=[0, 0, 0])
        assert choose_pe_paper(engines, lambda n: 0.0, alpha=100, beta=1000) == 1  # id 3
        assert choose_pe_least_loaded(engines) == 1

    def test_does_not_mutate(self):
        engines = pes(10, 20)
        before = copy.deepcopy(engines)
        choose_pe_paper(engines, lambda n: 0.0, alpha=1, beta=100)
        assert engines == before


def test_choose_pe_least_loaded_ignores_beta_and_read_queues():
    engines = pes(5e9, 4e9, 6e9)
    assert choose_pe_least_loaded(engines) == 1
    assert choose_pe_least_loaded([]) == -1


def _paper_fetch(lengths, engines, read_q, alpha, beta):
    """reference/paper.md 4.2's sketch, with ties by id."""
    out = []
    for length in lengths:
        c2 = [e for e in engines if e.tok <= beta and read_q(e.node) <= alpha]
        c3 = [e for e in engines if e.tok <= beta and read_q(e.node) > alpha]
        pool = c2 or c3
        if not pool:
            break
        e = min(pool, key=lambda e: (e.tok, e.id))
        e.tok += length
        e.seq += 1
        out.append(engines.index(e))
    return out


class TestFetchPePaper:
    def test_assigns_updates_and_stops_when_all_overloaded(self):
        engines = pes(0, 0)
        got = fetch_pe_paper([8, 8, 8, 8, 8, 8], engines, lambda n: 0.0, alpha=100, beta=10)
        # e0 8, e1 8, e0 16 (8 <= 10), e1 16 (8 <= 10), then both are over beta: stop
        assert got == [0, 1, 0, 1]
        assert [e.tok for e in engines] == [16, 16]
        assert [e.seq for e in engines] == [2, 2]

    def test_empty_queue(self):
        engines = pes(0)
        assert fetch_pe_paper([], engines, lambda n: 0.0, 1, 1) == []
        assert engines[0].seq == 0

    def test_read_queue_does_not_change_within_a_fetch(self):
        # the node read queues are what the engines reported at fetch time
        engines = pes(0, 0, nodes=[0, 1])
        read_q = {0: 1000.0, 1: 0.0}.__getitem__
        got = fetch_pe_paper([10, 10, 10], engines, read_q, alpha=100, beta=25)
        assert got == [1, 1, 1]  # C2 (node 1) until engine 1 is over beta: 30 > 25 only after the third
        assert engines[0].tok == 0

    @pytest.mark.parametrize("seed", range(40))
    def test_matches_the_papers_sketch(self, seed):
        rng = random.Random(seed)
        n = rng.randint(1, 6)
        nodes = [rng.randint(0, 2) for _ in range(n)]
        toks = [rng.choice([0, 100, 500, 1000, 1500]) for _ in range(n)]
        queues = {k: rng.choice([0.0, 50.0, 100.0, 150.0]) for k in range(3)}
        lengths = [rng.randint(1, 600) for _ in range(rng.randint(0, 15))]
        a, b = pes(*toks, nodes=nodes), pes(*toks, nodes=nodes)
        got = fetch_pe_paper(lengths, a, queues.__getitem__, alpha=100, beta=1000)
        want = _paper_fetch(lengths, b, queues.__getitem__, alpha=100, beta=1000)
        assert got == want
        assert [(e.tok, e.seq) for e in a] == [(e.tok, e.seq) for e in b]


# ----- DE choice (two levels) --------------------------------------------------------------------------------
class TestZThreshold:
    def test_formula(self):
        engines = des((100, 1, 500), (300, 2, 500))  # 1000 bytes free in the group
        queue = [(40, 300), (60, 300), (80, 300), (10, 200)]
        # R = the head that fits in 1000 bytes: the first three (900 bytes); the fourth is not reached
        assert z_threshold(queue, engines, 1.05) == pytest.approx(1.05 * (40 + 60 + 80 + 100 + 300) / 2)

    def test_stops_at_first_request_that_does_not_fit(self):
        engines = des((0, 0, 100))
        queue = [(10, 60), (20, 60), (5, 10)]  # the second does not fit: the third is not counted either
        assert z_threshold(queue, engines, 1.0) == pytest.approx(10)

    def test_empty_queue_and_empty_group(self):
        engines = des((100, 0, 0), (200, 0, 0))
        assert z_threshold([], engines, 1.05) == pytest.approx(1.05 * 150)
        assert z_threshold([(10, 0)], [], 1.05) == pytest.approx(1.05 * 10)


def test_choose_group_smallest_total_tokens_ties_to_lower_index():
    g0, g1, g2 = des((100, 0, 0), (100, 0, 0)), des((50, 0, 0), (100, 0, 0)), des((150, 0, 0))
    assert choose_group([g0, g1, g2]) == 1
    assert choose_group([g0, g2]) == 1  # 200 vs 150
    assert choose_group([g2, des((150, 0, 0))]) == 0


class TestChooseDePaper:
    def test_prefers_non_high_engine_with_fewest_requests(self):
        # Z = 1000; both stay under Z with the request; engine 1 has more tokens but fewer requests
        engines = des((100, 5, 1e9), (400, 1, 1e9))
        assert choose_de_paper(50, 10, engines, z=1000) == 1

    def test_non_high_beats_high_even_with_more_tokens(self):
        engines = des((950, 0, 1e9), (990, 9, 1e9))
        # engine 0 + 60 > 1000 (high); engine 1 + 60 > 1000 too -> both high: fewest tokens
        assert choose_de_paper(60, 10, engines, z=1000) == 0
        engines = des((950, 0, 1e9), (900, 9, 1e9))
        # now engine 1 stays at 960 <= Z: non-high wins over the high engine with fewer requests
        assert choose_de_paper(60, 10, engines, z=1000) == 1

    def test_tok_plus_len_equal_to_z_is_not_high(self):
        engines = des((500, 0, 1e9), (940, 3, 1e9))
        # engine 1: 940 + 60 = 1000 = Z (not high) but has more requests than engine 0 (also not high)
        assert choose_de_paper(60, 10, engines, z=1000) == 0
        engines = des((2000, 0, 1e9), (940, 3, 1e9))
        assert choose_de_paper(60, 10, engines, z=1000) == 1

    def test_hbm_filter(self):
        engines = des((0, 0, 99), (5000, 9, 100))
        assert choose_de_paper(10, 100, engines, z=1e9) == 1  # hbm_free >= need: equal is enough
        assert choose_de_paper(10, 101, engines, z=1e9) == -1

    def test_ties_by_id(self):
        engines = des((100, 1, 1e9), (100, 1, 1e9), ids=[4, 2])
        assert choose_de_paper(10, 1, engines, z=1e9) == 1
        assert choose_de_paper(10, 1, engines, z=0) == 1


def test_choose_de_least_loaded():
    engines = des((10, 0, 50), (20, 0, 500), (5, 0, 10))
    assert choose_de_least_loaded(100, engines) == 1
    assert choose_de_least_loaded(10, engines) == 2
    assert choose_de_least_loaded(1000, engines) == -1


def test_each_groups_z_counts_only_the_requests_planned_for_it():
    groups = [des((0, 0, 1e9), (0, 0, 1e9)), des((300, 0, 1e9), (0, 0, 1e9))]
    lengths = [100] * 5
    plan = plan_groups(lengths, groups)
    assert plan == [0, 0, 0, 0, 1]  # g0: 0, 100, 200, then 300 ties g1's 300 (lower index); then g1 (300 < 400)
    z = group_z(lengths, [1] * 5, plan, groups, 1.0)
    assert z == [pytest.approx(400 / 2), pytest.approx((100 + 300) / 2)]
    # the old way (every group's Z over the whole queue) inflates it with the other group's requests
    old = z_threshold([(100, 1)] * 5, groups[0], 1.0)
    assert old == pytest.approx(500 / 2) and old > z[0]


class TestAssignDePaper:
    def test_phase_one_balances_groups_then_phase_two_inside(self):
        groups = [des((0, 0, 1e9), (0, 0, 1e9)), des((100, 0, 1e9), (0, 0, 1e9))]
        out = assign_de_paper([50, 50, 50], [1, 1, 1], groups, 1.05)
        # phase 1: g0 (0) -> 50; g0 (50) vs g1 (100) -> g0, 100; tie 100/100 -> g0
        assert [g for g, _ in out] == [0, 0, 0]
        assert sorted(e.seq for e in groups[0]) == [1, 2]
        assert sum(e.tok for e in groups[0]) == 150
        assert [e.seq for e in groups[1]] == [0, 0]

    def test_updates_hbm_tok_seq(self):
        groups = [des((0, 0, 100), (0, 0, 100))]
        out = assign_de_paper([10, 20], [60, 60], groups, 1.05)
        assert len(out) == 2
        assert sorted(e.hbm_free_bytes for e in groups[0]) == [40, 40]
        assert sorted(e.tok for e in groups[0]) == [10, 20]

    def test_stops_at_first_request_no_de_can_hold(self):
        groups = [des((0, 0, 100))]
        out = assign_de_paper([10, 10, 10], [60, 60, 10], groups, 1.05)
        # the second needs 60 bytes but only 40 are left: stop, even though the third would fit
        assert out == [(0, 0)]
        assert groups[0][0].hbm_free_bytes == 40
        assert groups[0][0].seq == 1


# ----- read side ---------------------------------------------------------------------------------------------
def test_read_side_shorter_queue_ties_to_pe():
    q = {0: 100.0, 1: 50.0, 2: 100.0}.__getitem__
    assert read_side_shorter_queue(0, 1, q) == "de"
    assert read_side_shorter_queue(1, 0, q) == "pe"
    assert read_side_shorter_queue(0, 2, q) == "pe"


def test_read_side_shorter_queue_breaks_ties_by_bytes_read_so_far():
    q = {0: 0.0, 1: 0.0}.__getitem__   # both queues empty: the node that has read less takes it
    assert read_side_shorter_queue(0, 1, q, {0: 500.0, 1: 100.0}.__getitem__) == "de"
    assert read_side_shorter_queue(0, 1, q, {0: 100.0, 1: 500.0}.__getitem__) == "pe"
    assert read_side_shorter_queue(0, 1, q, {0: 100.0, 1: 100.0}.__getitem__) == "pe"
    # the queue decides whenever the queues differ
    q = {0: 10.0, 1: 20.0}.__getitem__
    assert read_side_shorter_queue(0, 1, q, {0: 1e9, 1: 0.0}.__getitem__) == "pe"


def test_read_side_round_robin_alternates_and_instances_are_independent():
    rr = read_side_round_robin()
    got = [rr(0, 1, lambda n: 0.0) for _ in range(5)]
    assert got == ["pe", "de", "pe", "de", "pe"]
    assert read_side_round_robin()(0, 1, lambda n: 0.0) == "pe"
    assert rr(0, 1, lambda n: 0.0) == "de"


def test_read_side_pe_only():
    assert {read_side_pe_only(0, 1, {0: 1e9, 1: 0.0}.__getitem__) for _ in range(3)} == {"pe"}


# ----- intra-PE batching -------------------------------------------------------------------------------------
U = 2.0 ** -10  # about 1 ms: a power of two keeps the toy times exact in binary floating point


def attn(cached, tokens):
    """A toy attention time: U per token, plus U per token for every 1,024 cached tokens (monotone)."""
    return tokens * U * (1 + cached / 1024)


def max_chunk_brute(cached, new, budget):
    best = 0
    for k in range(1, new + 1):
        if attn(cached, k) <= budget:
            best = k
    return best


class TestPackChunked:
    def test_everything_fits(self):
        queue = [(0, 10), (100, 20), (5, 30)]
        out = pack_chunked(queue, attn, max_chunk_brute, quota_s=1.0)
        assert [(b.index, b.cached, b.tokens) for b in out] == [(0, 0, 10), (1, 100, 20), (2, 5, 30)]
        assert all(isinstance(b, BatchItem) for b in out)
        assert [b.attention_s for b in out] == [attn(c, n) for c, n in queue]

    def test_request_over_the_quota_is_chunked_to_the_largest_fitting_chunk(self):
        queue = [(0, 100), (0, 300), (0, 5)]  # 100 U + 300 U with a 250 U quota
        out = pack_chunked(queue, attn, max_chunk_brute, quota_s=250 * U)
        assert [(b.index, b.cached, b.tokens) for b in out] == [(0, 0, 100), (1, 0, 150)]  # FIFO: the third waits
        assert out[1].attention_s == attn(0, 150)
        assert sum(b.attention_s for b in out) == 250 * U

    def test_chunk_with_context(self):
        queue = [(20 * 1024, 500)]  # 21 U per token at 20K context
        out = pack_chunked(queue, attn, max_chunk_brute, quota_s=2100 * U)
        assert [(b.index, b.tokens) for b in out] == [(0, 100)]
        out = pack_chunked(queue, attn, max_chunk_brute, quota_s=2120 * U)
        assert [(b.index, b.tokens) for b in out] == [(0, 100)]  # 101 tokens would be 2121 U

    def test_first_request_alone_too_big_makes_one_token_of_progress(self):
        out = pack_chunked([(0, 10)], attn, max_chunk_brute, quota_s=0.0)
        assert [(b.index, b.tokens) for b in out] == [(0, 1)]

    def test_quota_exactly_used_next_request_waits(self):
        queue = [(0, 300), (0, 10)]
        out = pack_chunked(queue, attn, max_chunk_brute, quota_s=attn(0, 300))
        assert [(b.index, b.tokens) for b in out] == [(0, 300)]

    def test_empty_queue(self):
        assert pack_chunked([], attn, max_chunk_brute, 0.3) == []

    def test_batch_speed_scales_the_budget(self):
        # a batch of n runs at speed(n) of the per-request prediction: predicted time = sum / speed(n)
        def speed(n):
            return min(1.0, 0.5 * n)
        queue = [(0, 100), (0, 100), (0, 100)]
        out = pack_chunked(queue, attn, max_chunk_brute, quota_s=200 * U, speed=speed)
        # 1 request: budget 100 U (fits); 2: budget 200 U (fits); 3: budget 200 U, full: left out
        assert [(b.index, b.tokens) for b in out] == [(0, 100), (1, 100)]
        out = pack_chunked(queue, attn, max_chunk_brute, quota_s=160 * U, speed=speed)
        # 1: budget 80 U -> chunk of 80 tokens, and the batch ends there
        assert [(b.index, b.tokens) for b in out] == [(0, 80)]

    @pytest.mark.parametrize("seed", range(20))
    def test_invariants_random(self, seed):
        rng = random.Random(seed)
        queue = [(rng.randint(0, 60000), rng.randint(1, 800)) for _ in range(rng.randint(1, 12))]
        quota = rng.choice([0.05, 0.3, 1.0])
        out = pack_chunked(queue, attn, max_chunk_brute, quota)
        # FIFO prefix, whole requests except possibly the last, never over the quota unless one token
        assert [b.index for b in out] == list(range(len(out)))
        for b in out[:-1]:
            assert b.tokens == queue[b.index][1]
        assert 1 <= out[-1].tokens <= queue[out[-1].index][1]
        total = sum(b.attention_s for b in out)
        assert total <= quota + 1e-12 or (len(out) == 1 and out[0].tokens == 1)
        last = out[-1]
        if last.tokens < queue[last.index][1] and not (len(out) == 1 and last.tokens == 1):
            # the chunk is the largest that fits: one more token would go over
            assert total - last.attention_s + attn(last.cached, last.tokens + 1) > quota
        if len(out) < len(queue) and last.tokens == queue[last.index][1]:
            nxt = queue[len(out)]  # the next request could not add even one token
            assert total + attn(nxt[0], 1) > quota


class TestPackWhole:
    def test_whole_requests_fifo_within_quota(self):
        queue = [(0, 100), (0, 100), (0, 100)]
        out = pack_whole(queue, attn, quota_s=250 * U)
        assert [(b.index, b.tokens) for b in out] == [(0, 100), (1, 100)]

    def test_at_least_one_even_over_the_quota(self):
        out = pack_whole([(0, 1000), (0, 1)], attn, quota_s=100 * U)
        assert [(b.index, b.tokens) for b in out] == [(0, 1000)]

    def test_stops_at_first_that_does_not_fit(self):
        out = pack_whole([(0, 100), (0, 300), (0, 10)], attn, quota_s=250 * U)
        assert [b.index for b in out] == [0]  # the third would fit but FIFO stops at the second

    def test_never_chunks(self):
        rng = random.Random(3)
        queue = [(rng.randint(0, 9000), rng.randint(1, 900)) for _ in range(30)]
        out = pack_whole(queue, attn, quota_s=0.5)
        assert all(b.tokens == queue[b.index][1] for b in out)


# ----- systems -----------------------------------------------------------------------------------------------
def test_the_five_systems_and_their_flags():
    assert list(SYSTEMS) == ["basic", "layerwise", "dualpath-rr", "dualpath", "oracle"]
    flags = {n: (p.layerwise, p.read_sides, p.paper_scheduler, p.free_io) for n, p in SYSTEMS.items()}
    assert flags == {
        "basic": (False, "pe", False, False),
        "layerwise": (True, "pe", False, False),
        "dualpath-rr": (True, "round-robin", False, False),
        "dualpath": (True, "shorter-queue", True, False),
        "oracle": (True, "shorter-queue", True, True),
    }
    assert all(system_policy(n).name == n for n in SYSTEMS)


def test_unknown_system_is_an_input_error_naming_the_allowed():
    with pytest.raises(InputError) as info:
        system_policy("dualpth")
    assert info.value.field == "systems"
    assert "dualpth" in str(info.value) and "dualpath-rr" in str(info.value)
