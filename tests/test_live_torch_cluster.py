"""`live.compute: torch` end to end (scenarios/live/torch-1p1d.yaml): multi-round agents get the same
generated tokens (`output_digest`) under every system and under the reference `kv_cache: false` (every
prompt recomputed, nothing read or moved), on tcp, shm and nixl (where installed); a stored block zeroed between two runs on
one store changes the tokens of the requests that load it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("torch")

from engines.live import nixl  # noqa: E402
from tests.test_live_cluster import gone  # noqa: E402

LIVE = Path(__file__).resolve().parents[1] / "scenarios" / "live"
SYSTEMS = ["basic", "layerwise", "dualpath-rr", "dualpath", "oracle"]
pytestmark = pytest.mark.slow


def scenario(tmp_path: Path, name: str, **live) -> Path:
    s = yaml.safe_load((LIVE / "torch-1p1d.yaml").read_text())
    s["model"] = str(LIVE / s["model"])
    s["hardware"] = str(LIVE / s["hardware"])
    s["live"].update(live)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def start(path: Path, out: Path, *sets: str) -> subprocess.Popen:
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "-o", str(out), "--json",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, out: Path) -> pd.DataFrame:
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err[-2000:]
    pids = [int(p.split("=")[1]) for line in err.splitlines() if " pids " in line
            for p in line.split(" pids ")[1].split()]
    assert pids and gone(pids)
    req = pd.read_parquet(out / "requests.parquet")
    assert (req.status == "ok").all() and req.output_digest.notna().all()
    assert (req.output_tokens == req.max_tokens).all()
    return req


@pytest.mark.parametrize("transport", ["tcp", "shm", pytest.param(
    "nixl", marks=pytest.mark.skipif(not nixl.available(), reason="nixl-cu12 is not installed here"))])
def test_every_system_gives_the_reference_tokens(tmp_path, transport):
    path = scenario(tmp_path, "s", transport=transport)
    ref = start(path, tmp_path / "ref", "live.kv_cache=false", "systems=[basic]")  # the two runs at once
    runs = start(path, tmp_path / "runs")
    ref_rows, rows = finish(ref, tmp_path / "ref"), finish(runs, tmp_path / "runs")
    assert (ref_rows.cached_tokens == 0).all()
    assert set(rows.system) == set(SYSTEMS)
    assert rows.groupby("agent_id")["round"].nunique().min() >= 2  # multi-round agents
    assert rows.cached_tokens.sum() > 0 and (rows.read_bytes > 0).any()  # the others load stored KV
    want = ref_rows.set_index(["agent_id", "round"]).output_digest
    for system, got in rows.groupby("system"):
        got = got.set_index(["agent_id", "round"]).output_digest
        assert got.sort_index().equals(want.sort_index()), f"{system} on {transport} differs from the reference"


def test_a_zeroed_stored_block_changes_the_tokens_that_load_it(tmp_path):
    store = tmp_path / "kv"
    path = scenario(tmp_path, "s", storage_dir=str(store))
    first = finish(start(path, tmp_path / "a", "systems=[basic]"), tmp_path / "a")
    blocks = sorted(store.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert blocks
    victim = blocks[0]  # the first block written: the first block of the first prompt to finish prefill
    victim.write_bytes(bytes(victim.stat().st_size))
    second = finish(start(path, tmp_path / "b", "systems=[basic]"), tmp_path / "b")
    assert (second.cached_tokens > 0).all()  # the second run loads every prompt's stored prefix
    both = first.merge(second, on=["agent_id", "round"], suffixes=("_a", "_b"))
    differ = both[both.output_digest_a != both.output_digest_b]
    assert len(differ) > 0, "a zeroed block went unnoticed"
    assert len(differ) < len(both)  # agents that never load it get the same tokens as before
