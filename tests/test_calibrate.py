"""`dualpath calibrate`: a profile the simulator accepts, every measured value with how it was measured;
the O_DIRECT fallback; bad input."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from engines.costmodel import hardware_spec
from harness import calibrate

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "paper" / "offline-ds660b-64k.yaml"
MEASURED = ("peak_flops_bf16", "peak_flops_fp8", "hbm_bw_bytes_s", "cnic_gbps", "snic_gbps", "dram_bw_bytes_s")


@pytest.fixture
def no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError, whatever is installed


def test_profile_loads_and_says_how_each_value_was_measured(cli, tmp_path, no_torch):
    out = tmp_path / "host.yaml"
    r = cli("calibrate", "-o", out, "--storage-dir", tmp_path, "--size-mb", "8", "--repeats", "2")
    assert r.rc == 0, r.err
    assert "torch not installed" in r.err
    spec = hardware_spec(str(out))  # the loader the simulator uses
    assert spec.name == "host" and spec.gpus_per_node == 1 and spec.snic_count == 1
    for value in (spec.cnic_gbps, spec.snic_gbps, spec.dram_bw_bytes_s, spec.gpu.peak_flops_bf16,
                  spec.gpu.hbm_bw_bytes_s, spec.gpu.hbm_bytes):
        assert value > 0
    lines = out.read_text().splitlines()
    for key in MEASURED:
        line = next(line for line in lines if line.strip().startswith(f"{key}:"))
        assert "#" in line and "median of 2" in line and "spread" in line, line
    assert any(line.startswith("# warm (page cache) read:") for line in lines)
    assert any("--set sim.snic_efficiency=1" in line for line in lines)
    assert yaml.safe_load(out.read_text())["cnic_gbps"] == spec.cnic_gbps
    assert [p.name for p in tmp_path.iterdir()] == ["host.yaml"]  # the test file and temp profile are gone


def test_cold_reads_fall_back_when_o_direct_is_refused(monkeypatch, tmp_path):
    def refuse(path):
        raise OSError(22, "Invalid argument")
    monkeypatch.setattr(calibrate, "_read_direct", refuse)
    cold, warm, notes = calibrate.storage(tmp_path, 8 << 20, 1)
    assert "posix_fadvise" in cold.method and any("O_DIRECT refused" in n for n in notes)
    assert cold.value > 0 and warm.value > 0
    assert list(tmp_path.iterdir()) == []


def test_loopback_counts_every_byte():
    m = calibrate.loopback_tcp(8 << 20, 2)
    assert len(m.samples) == 2 and all(s > 0 for s in m.samples)
    assert min(m.samples) <= m.value <= max(m.samples)


@pytest.mark.slow
def test_run_accepts_the_calibrated_profile(cli, tmp_path, no_torch):
    """`dualpath run --set hardware=PROFILE`: a 2-agent DS 27B run on a cluster whose CPU "GPUs" hold it."""
    out = tmp_path / "host.yaml"
    assert cli("calibrate", "-o", out, "--storage-dir", tmp_path, "--size-mb", "8", "--repeats", "1").rc == 0
    r = cli("run", SCENARIO, "--set", f"hardware={out}", "--set", "model=deepseek-27b",
            "--set", "trace.synth.agents=2", "--set", "trace.synth.turns_mean=6", "--set", "trace.synth.append_mean=2000",
            "--set", "systems=[dualpath]", "--set", "cluster.prefill_nodes=4", "--set", "cluster.decode_nodes=4",
            "--set", "cluster.prefill_group_nodes=4", "--set", "sim.snic_efficiency=1", "--set", "sim.cnic_efficiency=1",
            "-o", tmp_path / "run")
    if r.rc == 2 and "HBM" in r.err:
        pytest.skip(f"this host's memory cannot hold DS 27B over 4 nodes: {r.err.strip()}")
    assert r.rc == 0, r.err
    assert "dualpath" in r.out


@pytest.mark.parametrize("args, where", [
    (("-o", "host.txt"), "--output"),
    (("-o", "host.yaml", "--storage-dir", "no/such/dir"), "--storage-dir"),
    (("-o", "no/such/dir/host.yaml"), "--output"),
    (("-o", "host.yaml", "--size-mb", "0"), "--size-mb"),
    (("-o", "host.yaml", "--repeats", "0"), "--repeats"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, monkeypatch, args, where):
    monkeypatch.chdir(tmp_path)
    r = cli("calibrate", *args)
    assert r.rc == 2 and len(r.err_lines) == 1 and where in r.err
    assert list(tmp_path.iterdir()) == []


def test_torch_measures_matmul_and_attention_when_installed():
    pytest.importorskip("torch", reason="torch is an extra ('.[live]')")
    t = calibrate.torch_compute(1)
    assert t["bf16"].value > 0 and t["attention"].value > 0 and t["device"]
    if not t["cuda"]:
        assert "FP32" in t["bf16"].method


def test_an_unwritable_storage_dir_is_bad_input(cli, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(calibrate.tempfile, "mkstemp", refuse)
    r = cli("calibrate", "-o", tmp_path / "host.yaml", "--storage-dir", tmp_path, "--size-mb", "8")
    assert r.rc == 2 and len(r.err_lines) == 1
    assert r.err_lines[-1].endswith("--storage-dir: cannot write a test file there (Permission denied)")
    assert list(tmp_path.iterdir()) == []
