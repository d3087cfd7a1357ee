"""engines/policy: the pure scheduling functions (reference/paper.md 4), checked against the paper's rules
and small reference implementations written here from the paper's text."""
from __future__ import annotations

import copy
import random

import pytest

from engines.policy import SYSTEMS, BatchItem, EngineView, choose_de_paper, pack_chunked, pack_whole, system_policy
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


# ----- DE choice (two levels) --------------------------------------------------------------------------------
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
