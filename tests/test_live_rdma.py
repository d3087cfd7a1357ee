"""`live.transport: rdma` without a device: the registration plan, the work-request schedule, device
detection (each way it can find nothing says why in one line) and the run refused with exit 2."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from engines.live import rdma

LIVE = Path(__file__).resolve().parents[1] / "scenarios" / "live"


@given(slots=st.integers(1, 16), slot_bytes=st.integers(1, 1 << 22))
def test_the_plan_puts_every_slot_on_its_own_pages(slots, slot_bytes):
    send, recv = rdma.plan(slots, slot_bytes)
    for region in (send, recv):
        assert len(region.slot_offsets) == slots and region.length % rdma.PAGE == 0
        assert all(o % rdma.PAGE == 0 for o in region.slot_offsets)
        ends = [o + slot_bytes for o in region.slot_offsets]
        assert all(e <= n for e, n in zip(ends, region.slot_offsets[1:] + (region.length,)))  # no overlap
    assert recv.access & rdma.ACCESS_REMOTE_WRITE and not send.access & rdma.ACCESS_REMOTE_WRITE
    assert send.slot_offsets == recv.slot_offsets  # a send slot is written into the same receive slot


def test_the_plan_refuses_an_empty_pool():
    with pytest.raises(ValueError, match="slots >= 1"):
        rdma.plan(0, 4096)


@given(nbytes=st.integers(0, 1 << 20), max_msg=st.integers(256, 1 << 16), max_wr=st.integers(1, 64))
def test_the_schedule_writes_every_byte_once_within_the_queue_depth(nbytes, max_msg, max_wr):
    posts = rdma.schedule(nbytes, max_msg, max_wr)
    wrs = [w for p in posts for w in p]
    assert sum(w.length for w in wrs) == nbytes
    assert all(a.offset + a.length == b.offset for a, b in zip(wrs, wrs[1:])) and (not wrs or wrs[0].offset == 0)
    assert all(0 < w.length <= max_msg for w in wrs)
    for p in posts:  # each post fits the send queue and asks for exactly one completion, its last
        assert 0 < len(p) <= max_wr and [w.signaled for w in p] == [False] * (len(p) - 1) + [True]


def _fake_pyverbs(monkeypatch, get_device_list):
    device = types.SimpleNamespace(get_device_list=get_device_list)
    monkeypatch.setitem(sys.modules, "pyverbs", types.SimpleNamespace(device=device))
    monkeypatch.setitem(sys.modules, "pyverbs.device", device)


def test_no_pyverbs_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyverbs", None)  # import fails
    with pytest.raises(rdma.RdmaUnavailable, match="python3-pyverbs.*system-site-packages"):
        rdma.probe()


def test_a_host_without_rdma_is_named(monkeypatch):
    def broken():
        raise OSError("Failed to get devices list")
    _fake_pyverbs(monkeypatch, broken)
    with pytest.raises(rdma.RdmaUnavailable, match=r"ibv_get_device_list failed \(Failed to get devices list\)"):
        rdma.probe()
    _fake_pyverbs(monkeypatch, lambda: [])
    with pytest.raises(rdma.RdmaUnavailable, match="found no RDMA device"):
        rdma.probe()
    _fake_pyverbs(monkeypatch, lambda: [types.SimpleNamespace(name=b"mlx5_0")])
    assert rdma.probe() == "mlx5_0"


def test_rdma_here_is_refused_in_one_line_with_exit_2(tmp_path):
    try:
        rdma.probe()
        pytest.skip("this host has an RDMA device")
    except rdma.RdmaUnavailable:
        pass
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(LIVE / "io-bound-1p1d.yaml"), "-o", str(out),
                        "--set", "live.transport=rdma"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and not out.exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("--set: live.transport: rdma is not available here: ")
