"""Bottleneck attribution (harness/attribution.py): unit checks on tables whose shares are known, and
small clusters whose answer is known by construction (a storage NIC far too slow, one far faster)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness import attribution as A

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "paper" / "offline-ds660b-64k.yaml"
SMALL = ("--set", "trace.synth.agents=32", "--set", "trace.synth.turns_mean=10",
         "--set", "systems=[basic,dualpath]", "--set", "cluster.prefill_nodes=2", "--set", "cluster.decode_nodes=2")


def hardware(tmp_path: Path, snic_gbps: float) -> Path:
    data = yaml.safe_load((REPO / "scenarios" / "hardware" / "hopper-paper.yaml").read_text())
    data.update(name=f"snic-{snic_gbps:g}", snic_gbps=snic_gbps)
    path = tmp_path / f"snic-{snic_gbps:g}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(cli, tmp_path: Path, snic_gbps: float):
    out = tmp_path / f"r{snic_gbps:g}"
    res = cli("run", SCENARIO, *SMALL, "--set", f"hardware={hardware(tmp_path, snic_gbps)}", "-o", out)
    assert res.rc == 0, res.err
    return res, json.loads((out / "summary.json").read_text())


def test_busy_phase_ends_when_running_agents_fall_below_half_the_peak():
    agents = pd.DataFrame({"t_arrival": [0.0, 0, 0, 0], "t_done": [10.0, 20, 30, 40]})
    requests = pd.DataFrame({"t_scheduled": [0.0], "t_done": [40.0]})
    assert A.busy_phase(requests, agents) == (0.0, 30.0)  # 4 running at peak; 1 (< 2) left at t=30


def test_link_and_compute_shares_from_known_bytes():
    caps = {"snic": 100.0, "cnic": 10.0, "dram": 1000.0}
    links = pd.DataFrame({"t_start": [0.0, 0, 1, 1], "t_end": [1.0, 1, 2, 2], "node": ["p0", "d0", "p0", "d0"],
                          "link": ["snic"] * 4, "direction": ["rx"] * 4, "bytes": [100, 0, 50, 10],
                          "traffic": ["kv_read"] * 4})
    s = A.link_shares(links, caps, 0.0, 2.0)
    assert s["snic_pe"] == pytest.approx(0.75) and s["snic_de"] == pytest.approx(0.05)
    engines = pd.DataFrame({"t": [0.0, 0.5, 1.0], "engine": ["p0.0"] * 3, "role": ["prefill"] * 3,
                            "step_s": [0.5, 0.5, 0.5], "batch_requests": [1, 1, 1]})
    assert A.compute_shares(engines, 0.0, 2.0)["pe_compute"] == pytest.approx(0.75)


def test_write_backs_do_not_count_against_a_storage_nic():
    """Write-backs constrain no link (simulated or live), so a DE's SNIC busy with them is not "limited":
    its share is its reads' (here 40 %), not the 150 % its unpaced writes would make."""
    caps = {"snic": 100.0, "cnic": 10.0, "dram": 1000.0}
    links = pd.DataFrame({"t_start": [0.0, 0.0], "t_end": [1.0, 1.0], "node": ["d0", "d0"], "link": ["snic"] * 2,
                          "direction": ["rx", "tx"], "bytes": [40, 150], "traffic": ["kv_read", "kv_write"]})
    assert A.link_shares(links, caps, 0.0, 1.0)["snic_de"] == pytest.approx(0.4)


def test_a_live_clusters_links_take_the_simulators_node_names():
    links = pd.DataFrame({"node": ["node0", "node2", "storage", "node1"], "link": ["snic", "cnic", "node0", "snic"],
                          "bytes": [1, 2, 3, 4]})
    named = A.live_links_as_simulated(links, prefill_nodes=2)
    assert named["node"].tolist() == ["p0", "d0", "p1"] and named["bytes"].tolist() == [1, 2, 4]


def test_snic_far_too_slow_is_the_bottleneck_and_dualpath_uses_both_nics(cli, tmp_path):
    res, summary = run(cli, tmp_path, 4)  # 100x slower than the paper's 400 Gbps storage NIC
    basic, dual = summary["systems"]["basic"], summary["systems"]["dualpath"]
    assert basic["bottleneck"]["resource"] == "snic_pe"
    assert basic["bottleneck"]["busy_share"] == basic["utilisation"]["snic_pe"] > 0.5
    assert "storage NICs" in basic["bottleneck"]["verdict"]
    assert dual["utilisation"]["snic_pe"] > 0.3 and dual["utilisation"]["snic_de"] > 0.3
    assert "basic: limited by snic_pe, " in res.out and "% busy" in res.out
    assert "dualpath over basic: JCT" in res.out
    assert set(summary["meta"]["profiles"]) == {"model", "hardware"}
    assert summary["meta"]["profiles"]["hardware"]["snic_gbps"] == 4
    for key in A.RATE_RESOURCES:
        assert 0 <= basic["utilisation_whole_run"][key] <= 1.0 + 1e-9


def test_snic_ten_times_faster_is_not_the_bottleneck(cli, tmp_path):
    _, summary = run(cli, tmp_path, 4000)
    basic = summary["systems"]["basic"]
    assert basic["bottleneck"]["resource"] not in ("snic_pe", "snic_de")
    assert basic["utilisation"]["snic_pe"] < 0.1


def test_attribution_from_a_loaded_results_directory_matches_the_summary(cli, tmp_path):
    from harness.results import load_results
    _, summary = run(cli, tmp_path, 40)
    again = A.attribute_results(load_results(tmp_path / "r40"))
    for system, got in again.items():
        assert got["bottleneck"] == summary["systems"][system]["bottleneck"]


def one_request(**kw) -> pd.DataFrame:
    row = {"t_sent": 0.0, "t_scheduled": 0.0, "queue_s": 1.0, "alloc_s": 0.0, "read_s": 2.0, "prefill_s": 3.0,
           "kv_transfer_s": 1.0, "t_first_token": 6.0, "t_done": 10.0, "prompt_tokens": 100, "cached_tokens": 50,
           "output_tokens": 10, "read_side": "pe", "status": "ok"}
    return pd.DataFrame([{**row, **kw}])


def test_holdings_of_a_known_request_give_known_occupancy():
    from harness.occupancy import holdings, mean_held
    # read 1-3 s, first token at 6 s, decoding from 7 s, done at 10 s; 2 bytes of KV per token
    basic = holdings(one_request(), "basic", 2.0)
    assert mean_held(basic["pe_hbm"], 0, 10) == pytest.approx(200 * 4 / 10)  # prompt KV from read done to decode
    assert mean_held(basic["dram_buffer"], 0, 10) == pytest.approx((100 * 2 + 200 * 1) / 10)  # PE read, DE buffer
    assert mean_held(basic["de_hbm"], 0, 10) == pytest.approx(220 * 9 / 10)
    layer = holdings(one_request(), "layerwise", 2.0)
    assert not len(layer["pe_hbm"][0])  # layer-wise prefill holds one layer's KV in HBM: not counted
    assert mean_held(layer["dram_buffer"], 0, 10) == pytest.approx((100 * 5 + 200 * 4) / 10)
    de_side = holdings(one_request(read_side="de"), "dualpath", 2.0)
    assert mean_held(de_side["dram_buffer"], 0, 10) == pytest.approx(200 * 6 / 10)  # whole prompt, read to decode
    oracle = holdings(one_request(), "oracle", 2.0)
    assert not len(oracle["dram_buffer"][0]) and mean_held(oracle["de_hbm"], 0, 10) > 0
    assert mean_held(basic["pe_hbm"], 3, 5) == pytest.approx(200)  # a window inside the holding: all of it


def test_a_tiny_staging_buffer_is_named_in_the_verdict(cli, tmp_path):
    out = tmp_path / "buf"
    res = cli("run", SCENARIO, *SMALL, "--set", "cluster.dram_buffer_gb=0.4", "-o", out)
    assert res.rc == 0, res.err
    dual = json.loads((out / "summary.json").read_text())["systems"]["dualpath"]
    assert dual["utilisation"]["wait_dram_buffer"] >= A.WAIT_SHARE > dual["utilisation"]["wait_pe_hbm"]
    assert "waited on the DRAM staging buffers (dram_buffer)" in dual["bottleneck"]["verdict"]
    for key in A.CAPACITY_RESOURCES:
        assert 0 <= dual["utilisation"][key] <= 1 and 0 <= dual["utilisation_whole_run"][key] <= 1


def test_default_buffers_are_not_named(cli, tmp_path):
    _, summary = run(cli, tmp_path, 400)
    for system in summary["systems"].values():
        assert "staging buffers" not in system["bottleneck"]["verdict"]
        assert system["utilisation"]["wait_dram_buffer"] < A.WAIT_SHARE


def test_http_attribution_says_what_the_scraped_gauges_allow():
    requests = pd.DataFrame({"t_scheduled": [0.0, 1.0], "t_done": [4.0, 5.0]})
    engines = pd.DataFrame({"t": [0.5, 1.5, 2.5, 3.5], "engine": ["srv"] * 4, "role": ["server"] * 4,
                            "batch_requests": [2, 4, 4, 1], "queued_tokens": [0, 3, 2, 0]})
    out = A.attribute({"backend": "http"}, requests, None, None, engines, "vllm")
    assert out["utilisation"]["server_queue"] == pytest.approx(0.5)
    assert out["bottleneck"]["resource"] == "server_queue"
    assert "not attributable" in out["bottleneck"]["verdict"]
    assert "snic_pe" not in out["utilisation"]  # no line rate or storage NIC is known for a real server
    bare = A.attribute({"backend": "http"}, requests, None, None, None, "vllm")
    assert bare["bottleneck"]["resource"] is None and "prometheus" in bare["bottleneck"]["verdict"]
    assert A.limited_line("vllm", out) == "vllm: server queued requests in 50 % of scrapes (busy phase)"


def test_pooled_repeats_that_disagree_keep_a_bottleneck():
    summary = {"bottleneck": {"resource": None, "busy_share": 0.5, "verdict": None},
               "utilisation": {k: 0.1 for k in A.RATE_RESOURCES} | {"snic_pe": 0.7},
               "repeats": [{"bottleneck": {"resource": "snic_pe"}}, {"bottleneck": {"resource": "pe_compute"}}]}
    b = A.bottleneck_of(summary)
    assert b["resource"] == "snic_pe" and "mean of 2 repeats" in b["verdict"] and "pe_compute" in b["verdict"]
    assert A.limited_line("basic", summary) == "basic: limited by snic_pe, 70 % busy"


def test_admission_replay_waits_for_room_first_come_first_served():
    import numpy as np
    from harness.occupancy import admit
    lo, hi, end = np.array([0.0, 1.0, 1.5]), np.array([10.0, 10.0, 2.0]), np.array([5.0, 8.0, 9.0])
    nbytes, key = np.array([60.0, 60.0, 60.0]), np.array(["p0.0"] * 3, dtype=object)
    at = admit(lo, hi, end, nbytes, key, 100.0, np.zeros(3, bool))
    assert list(at) == [0.0, 5.0, 2.0]  # the second waits for the first; the third is admitted by its span end (2 s)
    other = admit(lo, hi, end, nbytes, np.array(["p0.0", "p0.1", "p0.0"], dtype=object), 100.0, np.zeros(3, bool))
    assert list(other) == [0.0, 1.0, 2.0]  # its own engine has room at once
