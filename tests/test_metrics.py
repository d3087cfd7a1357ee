"""harness.metrics: HDR statistics, merging, and the system summary computed from records."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import metrics
from harness.metrics import (PERCENTILES, format_table, hdr_from_values, latency_stats, merge_hdr,
                             new_histogram, record_seconds, stats_from_hdr, summarize_system)

# durations from 1 us to a day, in seconds, as whole microseconds (what HDR records)
durations_s = st.integers(min_value=1, max_value=86_400_000_000).map(lambda us: us / 1e6)
value_lists = st.lists(durations_s, min_size=1, max_size=300)
HDR_RELATIVE_ERROR = 2.0 ** -10  # 3 significant digits: 2048 sub-buckets, half of them per octave


def _counts(hist) -> np.ndarray:
    return np.ctypeslib.as_array(hist.counts).copy()


# ----- HDR helpers -----------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(value_lists)
def test_hdr_percentiles_match_exact_order_statistics_within_0_1_percent(values):
    stats = latency_stats(values)
    us = np.sort(np.rint(np.asarray(values) * 1e6))
    n = len(us)
    assert stats["count"] == n and stats["out_of_range"] == 0
    for p in PERCENTILES:
        rank = max(1, int(p * n / 100 + 0.5))  # HdrHistogram's rank for percentile p
        exact_us = us[rank - 1]
        got_us = stats[f"p{p:g}"] * 1e6
        # HDR reports the top of the exact value's bucket: never below it, at most 0.1 % above
        assert exact_us - 1e-3 <= got_us <= exact_us * (1 + HDR_RELATIVE_ERROR) + 1e-3, (p, exact_us, got_us)
        # and so within 0.1 % of numpy's percentile of the same definition (first value reaching rank)
        assert got_us == pytest.approx(np.percentile(us, 100 * (rank - 0.5) / n, method="inverted_cdf"),
                                       rel=HDR_RELATIVE_ERROR, abs=1e-3)
    assert us[-1] - 1e-3 <= stats["max"] * 1e6 <= us[-1] * (1 + HDR_RELATIVE_ERROR) + 1e-3
    assert stats["mean"] == pytest.approx(np.mean(values), rel=HDR_RELATIVE_ERROR, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10 ** 12), min_size=0, max_size=200))
def test_bucketed_recording_fills_the_same_counters_as_recording_each_value(values_us):
    fast, bad = hdr_from_values(np.asarray(values_us, dtype=np.float64) / 1e6)
    slow = new_histogram()
    for v in values_us:
        assert slow.record_value(v)
    assert bad == 0
    assert np.array_equal(_counts(fast), _counts(slow))
    assert fast.get_total_count() == slow.get_total_count()
    assert fast.get_max_value() == slow.get_max_value()
    assert fast.get_min_value() == slow.get_min_value()


@settings(max_examples=40, deadline=None)
@given(st.lists(value_lists, min_size=1, max_size=4))
def test_merging_encoded_histograms_equals_one_histogram_of_the_union(parts):
    encoded = [stats_from_hdr(hdr_from_values(part)[0])["hdr"] for part in parts]
    merged = merge_hdr(encoded)
    union, _ = hdr_from_values([v for part in parts for v in part])
    assert np.array_equal(_counts(merged), _counts(union))
    merged_stats, union_stats = stats_from_hdr(merged), stats_from_hdr(union)
    assert merged_stats == union_stats


def test_values_out_of_range_are_counted_not_dropped_silently_and_nan_is_skipped():
    week_s = 7 * 24 * 3600
    stats = latency_stats([0.5, -0.001, math.inf, 10 * week_s, math.nan, 1.5])
    assert stats["count"] == 2
    assert stats["out_of_range"] == 3
    assert stats["max"] == pytest.approx(1.5, rel=HDR_RELATIVE_ERROR)


def test_record_value_refusal_is_counted(monkeypatch):
    hist = new_histogram()
    monkeypatch.setattr(hist, "record_value", lambda value, count=1: False)
    assert record_seconds(hist, [1.0, 1.0, 2.0]) == 3


def test_empty_distribution_has_count_zero_and_no_values():
    stats = latency_stats([])
    assert stats["count"] == 0 and stats["p99"] is None and stats["hdr"] is None and stats["mean"] is None


def test_interval_histograms_split_by_window():
    out = metrics.interval_histograms([0.1, 0.9, 1.0, 2.5, math.nan], [1.0, 2.0, 3.0, 4.0, 5.0], 1.0)
    assert [(start, h.get_total_count()) for start, h, _ in out] == [(0.0, 2), (1.0, 1), (2.0, 1)]


# ----- the system summary ----------------------------------------------------------------------------
def _requests(**overrides) -> pd.DataFrame:
    """Five requests: four ok (one with a single output token), one error with a huge TTFT."""
    base = {
        "system": ["s"] * 5, "agent_id": ["a", "a", "b", "b", "c"], "round": [0, 1, 0, 1, 0],
        "t_scheduled": [0.0, 2.0, 0.0, 3.0, 0.0],
        "t_sent": [0.0, 2.5, 0.0, 3.0, 0.0],
        "t_first_token": [1.0, 3.0, 2.0, 3.5, 500.0],
        "t_second_token": [1.1, 3.2, 2.2, np.nan, np.nan],
        "t_done": [2.0, 4.0, 3.0, 3.5, np.nan],
        "prompt_tokens": [100, 200, 100, 300, 100],
        "expected_cached_tokens": [0, 100, 0, 200, 0],
        "cached_tokens": [0.0, 90.0, np.nan, 150.0, 0.0],
        "output_tokens": [11, 11, 6, 1, 0],
        "read_side": ["none", "pe", "none", "de", "none"], "read_bytes": [0, 10, 0, 20, 0],
        "queue_s": [0.5, 0.5, 0.5, 0.5, 0.5], "alloc_s": [np.nan] * 5,
        "read_s": [0.0, 0.5, 0.0, 0.25, 0.0], "prefill_s": [0.5, 0.5, 1.5, 0.25, 0.0],
        "kv_transfer_s": [np.nan] * 5,
        "status": ["ok", "ok", "ok", "ok", "error"], "error": [None, None, None, None, "boom"],
    }
    base.update(overrides)
    return pd.DataFrame(base)


AGENTS = pd.DataFrame({"system": ["s"] * 3, "agent_id": ["a", "b", "c"], "t_arrival": [0.0, 0.0, 0.0],
                       "t_done": [4.0, 3.5, np.nan], "rounds": [2, 2, 1], "jct_s": [4.0, 3.5, np.nan],
                       "status": ["ok", "ok", "error"]})


def _close(got, want):
    return got == pytest.approx(want, rel=HDR_RELATIVE_ERROR, abs=1e-6)


def test_summary_counts_throughput_and_latency_definitions():
    s = summarize_system(_requests(), AGENTS, None, None, None, 1.0)
    assert s["counts"]["requests"] == {"total": 5, "ok": 4, "error": 1, "timeout": 0, "cancelled": 0}
    assert s["counts"]["agents"] == 3 and s["counts"]["agents_done"] == 2 and s["counts"]["rounds"] == 5
    assert s["makespan_jct_s"] == 4.0
    assert s["duration_s"] == 4.0  # first scheduled at 0, last done at 4
    assert s["throughput"]["requests_per_s"] == 1.0
    assert s["throughput"]["prompt_tokens_per_s"] == 700 / 4
    assert s["throughput"]["output_tokens_per_s"] == 29 / 4
    assert s["throughput"]["agents_per_s"] == 0.5
    lat = s["latency"]
    # the failed request (TTFT 500 s) is counted, never measured
    assert lat["ttft_s"]["count"] == 4 and _close(lat["ttft_s"]["max"], 2.0)
    assert _close(lat["ttft_s"]["p50"], 1.0)  # TTFTs 1, 1, 2, 0.5 -> rank 2 of sorted
    assert _close(lat["ttft_from_sent_s"]["max"], 2.0) and _close(lat["ttft_from_sent_s"]["p50"], 0.5)
    assert _close(lat["dispatch_lag_s"]["max"], 0.5) and lat["dispatch_lag_s"]["count"] == 4
    assert lat["ttst_s"]["count"] == 3 and _close(lat["ttst_s"]["max"], 2.2)  # from t_scheduled
    # TPOT only for output_tokens > 1: (2-1)/10, (4-3)/10, (3-2)/5
    assert lat["tpot_s"]["count"] == 3 and _close(lat["tpot_s"]["max"], 0.2) and _close(lat["tpot_s"]["p50"], 0.1)
    assert lat["e2e_s"]["count"] == 4 and _close(lat["e2e_s"]["max"], 3.0)
    assert lat["jct_s"]["count"] == 2 and _close(lat["jct_s"]["max"], 4.0)
    assert "itl_s" not in lat
    assert any("1 request(s) did not complete" in w for w in s["warnings"])


def test_hit_rates_use_ok_requests_and_only_known_cached_tokens():
    s = summarize_system(_requests(), None, None, None, None, 1.0)
    assert s["hit_rate_expected"] == pytest.approx(300 / 700)
    assert s["hit_rate_achieved"] == pytest.approx(240 / 600)  # the NaN row (100 prompt tokens) left out
    none_known = summarize_system(_requests(cached_tokens=[np.nan] * 5), None, None, None, None, 1.0)
    assert none_known["hit_rate_achieved"] is None


def test_ttft_breakdown_shares_skip_columns_without_values():
    s = summarize_system(_requests(), None, None, None, None, 1.0)
    mean_ttft = np.mean([1.0, 1.0, 2.0, 0.5])
    assert set(s["ttft_breakdown_share"]) == {"queue_s", "read_s", "prefill_s"}
    assert s["ttft_breakdown_share"]["queue_s"] == pytest.approx(0.5 / mean_ttft)
    assert s["ttft_breakdown_share"]["prefill_s"] == pytest.approx(np.mean([0.5, 0.5, 1.5, 0.25]) / mean_ttft)


def test_slo_attainment_goodput_and_percentile_judgement():
    slo = {"ttft_s": 1.0, "tpot_s": 0.15}
    s = summarize_system(_requests(), None, None, None, slo, 1.0)["slo"]
    # request 0: ttft 1, tpot .1 -> met; 1: ttft 1, tpot .1 -> met; 2: ttft 2 -> missed;
    # 3: ttft .5 and a single output token (TPOT counts as met) -> met; 4 failed -> missed
    assert s["good_requests"] == 3 and s["failed_requests"] == 1 and s["attainment"] == 0.6
    assert s["goodput_rps"] == 0.75
    assert s["judged_at"] == "mean" and s["met"] is False and s["values"]["ttft_s"] == math.inf
    p50 = summarize_system(_requests(), None, None, None, {**slo, "percentile": 50}, 1.0)["slo"]
    # TTFT 0.5, 1, 1, 2 and the failure as inf: the 3rd of 5 is 1.0
    assert p50["judged_at"] == "p50" and p50["met"] is True and _close(p50["values"]["ttft_s"], 1.0)
    p90 = summarize_system(_requests(), None, None, None, {**slo, "percentile": 90}, 1.0)["slo"]
    assert p90["met"] is False and p90["values"]["ttft_s"] == math.inf
    all_ok = summarize_system(_requests(status=["ok"] * 4 + ["cancelled"]), None, None, None, slo, 1.0)["slo"]
    assert all_ok["attainment"] == 0.75 and _close(all_ok["values"]["ttft_s"], 1.125)  # cancelled: not judged
    assert summarize_system(_requests(), None, None, None, {}, 1.0)["slo"] is None


def test_timeouts_fail_the_slo_they_would_otherwise_pass():
    n = 10
    req = pd.DataFrame({"round": [0] * n, "t_scheduled": [0.0] * n, "t_sent": [0.0] * n,
                        "t_first_token": [0.1] * 5 + [np.nan] * 5, "t_second_token": [np.nan] * n,
                        "t_done": [0.2] * 5 + [np.nan] * 5, "output_tokens": [2] * 5 + [0] * 5,
                        "status": ["ok"] * 5 + ["timeout"] * 5})
    s = summarize_system(req, None, None, None, {"ttft_s": 1.0}, 1.0)["slo"]
    assert s["met"] is False and s["attainment"] == 0.5 and s["failed_requests"] == 5


def test_itl_list_column_is_flattened():
    req = _requests(itl_s=[[0.1, 0.2], [0.3], [], None, [9.0]])
    lat = summarize_system(req, None, None, None, None, 1.0)["latency"]["itl_s"]
    assert lat["count"] == 3 and _close(lat["max"], 0.3)


def _links(rows):
    cols = ["t_start", "node", "link", "direction", "traffic", "bytes"]
    df = pd.DataFrame(rows, columns=cols)
    df["t_end"] = df["t_start"] + 1.0
    df["system"] = "s"
    return df


def test_snic_balance_counts_idle_nodes_and_ignores_other_traffic():
    links = _links([
        (0.0, "n0", "snic", "rx", "kv_read", 300), (0.0, "n1", "snic", "rx", "kv_read", 100),
        (0.0, "n1", "snic", "rx", "kv_read", 200),  # two rows of one node in a window add up
        (1.0, "n0", "snic", "rx", "kv_read", 400),  # n1 and n2 read nothing: 400 / (400 / 3)
        (1.0, "n2", "snic", "tx", "kv_write", 10 ** 9), (1.0, "n1", "cnic0", "rx", "kv_read", 10 ** 9),
        (2.0, "n0", "snic", "rx", "kv_transfer", 10 ** 9),  # no reads in window 2: skipped
    ])
    s = summarize_system(None, None, links, None, None, 1.0)
    ratios = [300 / 200, 3.0]
    assert s["snic_windows"] == 2
    # windows weighted by their read bytes (600 and 400): a nearly idle window counts for little
    assert s["snic_balance"] == pytest.approx(np.average(ratios, weights=[600, 400]))
    assert s["snic_balance_p90"] == pytest.approx(np.percentile(ratios, 90))
    assert summarize_system(None, None, _links([]), None, None, 1.0)["snic_balance"] is None


def test_attention_balance_per_step_and_early_window():
    t = [0.0, 0.0, 10.0, 10.0, 10.0, 20.0, 30.0, 30.0]
    engines = pd.DataFrame({
        "system": "s", "t": t, "engine": ["p0", "p1", "p0", "p1", "d0", "p0", "p0", "p1"],
        "role": ["prefill", "prefill", "prefill", "prefill", "decode", "prefill", "prefill", "prefill"],
        "batch_requests": 1, "batch_tokens": 1,
        "attention_s": [0.3, 0.1, 0.2, 0.2, 5.0, 0.7, 0.0, 0.0],  # t=20 alone, t=30 no attention: skipped
        "step_s": 1.0, "queued_tokens": 0, "read_queue_tokens": 0})
    requests = _requests(t_scheduled=[0.0] * 5, t_done=[100.0, 1, 1, 1, np.nan])
    s = summarize_system(requests, None, None, engines, None, 1.0)
    assert s["attention_balance"] == pytest.approx(np.mean([1.5, 1.0]))
    assert s["attention_balance_early"] == pytest.approx(1.5)  # first 5 % of 100 s: only t=0
    grouped = engines.assign(group=["g0", "g1", "g0", "g0", "g0", "g0", "g0", "g0"])
    s2 = summarize_system(requests, None, None, grouped, None, 1.0)
    assert s2["attention_balance"] == pytest.approx(1.0)  # t=0 now has one engine per group


def test_summary_of_nothing_has_no_numbers_but_does_not_fail():
    s = summarize_system(None, None, None, None, {"ttft_s": 1.0}, 1.0)
    assert s["counts"]["requests"]["total"] == 0 and s["duration_s"] is None
    assert s["throughput"]["requests_per_s"] is None and s["latency"]["ttft_s"]["count"] == 0
    assert s["slo"]["attainment"] is None and s["slo"]["met"] is False


def test_dispatch_lag_warning():
    req = _requests(t_sent=[0.05, 2.05, 0.05, 3.05, 0.0])
    assert any("dispatch lag" in w for w in summarize_system(req, None, None, None, None, 1.0)["warnings"])
    assert not any("dispatch lag" in w for w in summarize_system(_requests(t_sent=[0.0, 2.0, 0.0, 3.0, 0.0]), None,
                                                                 None, None, None, 1.0)["warnings"])


def test_format_table_has_one_aligned_row_per_system():
    a = summarize_system(_requests(), AGENTS, None, None, None, 1.0)
    b = summarize_system(None, None, None, None, None, 1.0)
    lines = format_table({"basic": a, "dualpath": b}).splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "system"
    assert len({len(line) for line in lines[:2]}) == 1  # aligned (last row may be shorter at the end)
    row = lines[1].split()
    assert row[0] == "basic" and row[1] == "4/5" and row[2] == "4"
    assert row[3] == "1" and row[-1] == "0.400"
    assert lines[2].split()[1:] == ["0/0"] + ["-"] * 7


@settings(max_examples=10, deadline=None)  # hdrh's own loops take ~50 ms per histogram
@given(st.lists(st.integers(min_value=0, max_value=10 ** 12), min_size=1, max_size=100))
def test_vectorised_statistics_equal_hdrh_own_methods(values_us):
    hist, _ = hdr_from_values(np.asarray(values_us, dtype=np.float64) / 1e6)
    stats = stats_from_hdr(hist)
    assert stats["mean"] * 1e6 == pytest.approx(hist.get_mean_value(), rel=1e-12)
    by_percentile = hist.get_percentile_to_value_dict(list(PERCENTILES))
    for p in PERCENTILES:
        assert round(stats[f"p{p:g}"] * 1e6) == by_percentile[p]
    assert metrics.exact_percentile(values_us, 99.0) <= hist.get_value_at_percentile(99.0)


def _first_rounds(scheduled, sent) -> pd.DataFrame:
    n = len(scheduled)
    return pd.DataFrame({"round": [0] * n, "t_scheduled": scheduled, "t_sent": sent, "status": ["ok"] * n})


def test_arrival_rates_compare_what_was_sent_with_the_schedule():
    scheduled = np.arange(11.0)  # 1 agent/s
    held_back = scheduled + np.linspace(0.0, 1.0, 11)  # each start a little later than the one before
    a = metrics.arrival_rates(_first_rounds(scheduled, held_back), {"mode": "constant", "rate_aps": 1.0})
    assert a["requested_rate_aps"] == 1.0 and a["agents_started"] == 11
    assert a["scheduled_rate_aps"] == pytest.approx(1.0) and a["achieved_rate_aps"] == pytest.approx(10 / 11)
    assert a["achieved_over_scheduled"] == pytest.approx(10 / 11) and a["start_span_diff_s"] == pytest.approx(1.0)
    warned = summarize_system(_first_rounds(scheduled, held_back), None, None, None, None, 1.0)["warnings"]
    assert any("agents started at 0.9091/s against 1/s" in w for w in warned), warned
    on_time = summarize_system(_first_rounds(scheduled, scheduled + 1e-4), None, None, None, None, 1.0)
    assert on_time["arrival"]["achieved_over_scheduled"] == pytest.approx(1.0) and on_time["warnings"] == []


def test_a_few_ms_late_over_a_short_span_is_not_an_arrival_rate_warning():
    s = summarize_system(_first_rounds([0.0, 0.1, 0.2], [0.0, 0.1, 0.203]), None, None, None, None, 1.0)
    assert s["arrival"]["achieved_over_scheduled"] < 1 - metrics.ARRIVAL_RATE_WARN
    assert not any("agents started" in w for w in s["warnings"])


def test_offline_arrivals_have_no_rate():
    a = metrics.arrival_rates(_first_rounds([0.0] * 4, [0.0, 0.001, 0.002, 0.003]), {"mode": "offline"})
    assert a["scheduled_rate_aps"] is None and "achieved_over_scheduled" not in a
