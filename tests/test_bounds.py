"""`dualpath bounds`: the paper's eq. 9 in exact fractions, its binding constraints, --pd verdicts, and the
invariant that ties the bounds to the link loads they come from."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.costmodel import hardware_spec
from engines.costmodel.profiles import GpuSpec, HardwareSpec
from harness.bounds import (DE_CNIC_READ, DE_CNIC_WRITE, DE_DRAM, PE_CNIC_WRITE, exact, parse_pd, pd_bounds,
                            storage_compute_balance)

GPU = GpuSpec(1e15, 2e15, 3e12, 80e9)


def hw(g=8, cnic=400.0, snics=1, snic=400.0, dram=500e9) -> HardwareSpec:
    return HardwareSpec("test", g, GPU, cnic, snics, snic, dram)


def test_hopper_paper_is_one_seventh_to_seven_halves(cli):
    b = pd_bounds(hardware_spec("hopper-paper"))
    assert (b.lower, b.upper) == (Fraction(1, 7), Fraction(7, 2))
    assert b.lower_binds == (PE_CNIC_WRITE,)
    assert b.upper_binds == (DE_CNIC_WRITE, DE_DRAM)  # the paper: both bind at 3.5; DE CNIC read is 6
    assert {c.name: c.bound for c in b.constraints}[DE_CNIC_READ] == 6
    r = cli("bounds", "--hardware", "hopper-paper")
    assert r.rc == 0 and "1/7 <= P/D <= 7/2" in r.out.splitlines()[1]
    assert "DE CNIC write, DE DRAM" in r.out


def test_two_storage_nics_narrow_it_to_one_third_to_one(cli):
    b = pd_bounds(hardware_spec("hopper-2snic"))
    assert (b.lower, b.upper, b.upper_binds) == (Fraction(1, 3), Fraction(1), (DE_DRAM,))
    assert "1/3 <= P/D <= 1" in cli("bounds", "--hardware", "hopper-2snic").out


@pytest.mark.parametrize("spec, lower, upper", [
    (hw(g=4), Fraction(1, 3), Fraction(3, 2)),               # paper 2, derived: g=4, s=1
    (hw(snic=200.0), Fraction(1, 15), Fraction(15, 2)),      # g=8, s=0.5 (200G SNIC)
    (hw(snics=2), Fraction(1, 3), Fraction(1)),              # g=8, s=2
])
def test_the_papers_derived_examples(spec, lower, upper):
    b = pd_bounds(spec)
    assert (b.lower, b.upper) == (lower, upper)


def test_every_shipped_profile_has_a_range_or_says_why_not(cli):
    from engines.costmodel.profiles import PROFILE_DIRS

    for path in sorted(PROFILE_DIRS["hardware"].glob("*.yaml")):
        r = cli("bounds", "--hardware", path.stem)
        assert r.rc == 0, r.err
        line = r.out.splitlines()[1]
        assert "<= P/D <=" in line or line.startswith("no bottleneck-free P/D"), line
    r = cli("bounds", "--hardware", "gb200-nvl72")  # s = 2 of g = 4: DE CNIC read bound 0 < lower bound 1
    assert "the upper bound 0 (DE CNIC read) is below the lower bound 1 (PE CNIC write)" in r.out


def test_pd_verdict_inside_and_outside(cli):
    r = cli("bounds", "--hardware", "hopper-paper", "--pd", "2:4")
    assert "2P4D: P/D = 1/2 (0.5) is inside the range (3.5x the lower bound; the upper bound is 7x it)" in r.out
    r = cli("bounds", "--hardware", "hopper-paper", "--pd", "8P1D", "--json")
    v = r.json()["pd"]
    assert v["inside"] is False and v["ratio"]["fraction"] == "8"
    assert v["loads"][DE_CNIC_WRITE]["fraction"] == "17/8"  # (s/g)(2 P/D + 1) = 17/8 of line rate
    assert set(v["over_line_rate"]) == {DE_CNIC_READ, DE_CNIC_WRITE, DE_DRAM}
    v = cli("bounds", "--hardware", "hopper-paper", "--pd", "1:8", "--json").json()["pd"]  # 1/8 < 1/7
    assert v["inside"] is False and v["over_line_rate"] == [PE_CNIC_WRITE]
    assert v["loads"][PE_CNIC_WRITE]["fraction"] == "9/8"   # (s/g)(1 + D/P)
    assert cli("bounds", "--hardware", "hopper-paper", "--pd", "1:7", "--json").json()["pd"]["inside"] is True


def test_json_carries_exact_fractions(cli):
    out = cli("bounds", "--hardware", "hopper-paper", "--json").json()
    assert out["range"] == "1/7 <= P/D <= 7/2"
    assert out["lower"] == {"fraction": "1/7", "value": pytest.approx(1 / 7)}
    assert out["upper_binds"] == [DE_CNIC_WRITE, DE_DRAM]


@pytest.mark.parametrize("args, where", [
    (("--hardware", "no-such-box"), "hardware"),
    (("--hardware", "hopper-paper", "--pd", "2-4"), "--pd"),
    (("--hardware", "hopper-paper", "--pd", "0:4"), "--pd"),
    (("--hardware", "hopper-paper", "--model", "no-such-model"), "model"),
])
def test_bad_input_is_one_line_and_exit_2(cli, args, where):
    r = cli("bounds", *args)
    assert r.rc == 2 and r.out == "" and len(r.err_lines) == 1 and where in r.err


def test_parse_pd_forms():
    assert parse_pd("2:4") == parse_pd("2P4D") == parse_pd("2p4d") == (2, 4)


def test_exact_keeps_decimals():
    assert exact(500.0e9) == 500_000_000_000 and exact(0.1) == Fraction(1, 10) and exact(3) == 3


@settings(max_examples=200, deadline=None)
@given(g=st.integers(1, 16), cnic=st.sampled_from([100.0, 200.0, 400.0, 800.0]), snics=st.integers(1, 4),
       snic=st.sampled_from([100.0, 200.0, 400.0, 800.0]), dram_gb=st.integers(50, 2000))
def test_bounds_are_where_a_link_reaches_its_line_rate(g, cnic, snics, snic, dram_gb):
    """At each end of the range the binding constraints' links run at exactly their line rate and no
    link is over it; just outside, a link is over it. (The bounds come from eq. 9's inequalities and
    the loads from the per-pair traffic: two derivations that must agree.)"""
    b = pd_bounds(hw(g, cnic, snics, snic, dram_gb * 1e9))

    def loads(r: Fraction):
        return b.loads(r.numerator, r.denominator)
    if b.empty:
        return
    ends = [(b.lower, b.lower_binds, Fraction(99, 100))] if b.lower > 0 else []
    if b.upper is not None and b.upper > 0:
        ends.append((b.upper, b.upper_binds, Fraction(101, 100)))
    for r, binds, beyond in ends:
        at = loads(r)
        assert all(at[name] == 1 for name in binds), (r, at)
        assert all(v <= 1 for v in at.values()), (r, at)
        assert any(v > 1 for v in loads(r * beyond).values())
    inside = (b.lower + b.upper) / 2 if b.upper is not None else b.lower + 1
    if inside > 0:
        assert all(v <= 1 for v in loads(inside).values())


def test_model_balance_is_storage_over_compute(cli):
    spec = hardware_spec("hopper-paper")
    bal = storage_compute_balance(spec, "deepseek-v3.2-660b")
    cached, new = bal["shape"]["cached"], bal["shape"]["new"]
    assert bal["storage_tokens_s_per_node"] == pytest.approx(50e9 / 48_068 * (cached + new) / cached)
    s, c = bal["storage_tokens_s_per_node"], bal["prefill_tokens_s_per_node"]
    assert bal["dualpath_balanced_pd"] == pytest.approx(s / (c - s))
    r = cli("bounds", "--hardware", "hopper-paper", "--model", "deepseek-v3.2-660b")
    assert "DualPath's storage meets prefill compute at P/D =" in r.out


def test_model_balance_when_compute_binds_everywhere(cli):
    """An H20 node computes less than its storage feeds: no P/D makes DualPath storage-bound."""
    bal = storage_compute_balance(hardware_spec("hopper-h20"), "deepseek-v3.2-660b")
    assert bal["prefill_tokens_s_per_node"] < bal["storage_tokens_s_per_node"]
    assert bal["dualpath_balanced_pd"] is None and bal["basic_storage_bound"] is False
    assert "prefill compute binds at any P/D" in cli("bounds", "--hardware", "hopper-h20", "--model",
                                                     "deepseek-v3.2-660b").out


def test_sim_rates_use_the_simulators_link_efficiencies(cli):
    """s = 0.549 x 400 / (0.8 x 400): the simulator's range is wider than the paper's (1P8D is inside it)."""
    from engines.costmodel import SimConstants

    k = SimConstants()
    b = pd_bounds(hardware_spec("hopper-paper"), k.cnic_efficiency, k.snic_efficiency)
    s = exact(k.snic_efficiency) / exact(k.cnic_efficiency)
    assert b.s == s and b.lower == s / (8 - s)
    assert b.upper == (8 - s) / (2 * s) and b.upper_binds == (DE_CNIC_WRITE,)  # DRAM's 7.6 no longer ties
    out = cli("bounds", "--hardware", "hopper-paper", "--sim-rates", "--pd", "1:8", "--json").json()
    assert out["pd"]["inside"] is True and out["rates"].startswith("simulator rates")


@pytest.mark.slow
def test_the_simulator_moves_the_bytes_eq9_counts(tmp_path):
    """Eq. 9's traffic model, fed with the storage reads a simulated run measured on each side, gives the
    CNIC and DRAM loads the run measured (means over the run; miss-token KV, ~1 % here, is the gap)."""
    from harness.cli import main
    from harness.bounds import link_loads
    from harness.compare import link_utilisation
    from harness.results import load_results

    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "paper" / "offline-ds660b-64k.yaml"
    out = tmp_path / "r"
    assert main(["run", str(scenario), "--set", "model=deepseek-27b", "--set", "trace.synth.agents=3",
                 "--set", "systems=[basic,dualpath]", "--set", "cluster.prefill_nodes=1",
                 "--set", "cluster.decode_nodes=2", "-o", str(out)]) == 0
    results, spec = load_results(out), hardware_spec("hopper-paper")
    names = {PE_CNIC_WRITE: "prefill cnic rx", DE_CNIC_READ: "decode cnic tx", DE_CNIC_WRITE: "decode cnic rx",
             DE_DRAM: "decode dram", "PE CNIC read": "prefill cnic tx", "PE DRAM": "prefill dram"}
    for system, summary in results["summary"]["systems"].items():
        links = results["links"][results["links"]["system"] == system]
        util = link_utilisation(links, spec, {"prefill": 1, "decode": 2}, summary["duration_s"])
        pe_read = util["prefill snic rx"]["mean"] * spec.snic_bytes_s
        de_read = util.get("decode snic rx", {"mean": 0.0})["mean"] * spec.snic_bytes_s
        if system == "basic":
            assert de_read == 0
        else:
            assert de_read > 0
        predicted = link_loads(1, 2, 8, pe_read, de_read, spec.cnic_bytes_s, spec.dram_bw_bytes_s)
        for constraint, measured_class in names.items():
            assert util[measured_class]["mean"] == pytest.approx(predicted[constraint], rel=0.05), (system, constraint)
