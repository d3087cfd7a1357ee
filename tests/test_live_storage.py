"""The storage service as a real process (`dualpath engine --role storage`): blocks written and read back
over tcp and shm on free 127.0.0.1 ports, reads paced at the SNIC rate, byte counters in /metrics equal to
the bytes moved, and the process gone after SIGTERM."""
from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
import yaml

from engines.live.store import chain_keys
from engines.live.transport import connect
from harness.prometheus import parse

LAYERS, BLOCK, BPT = 4, 16, 1024       # a Full Block of 64 KiB
BLOCK_BYTES = LAYERS * BLOCK * BPT
RATE = 4e6                             # 4 MB/s per node SNIC: 8 blocks take >= 0.13 s


def start(tmp_path, transport):
    cfg = {"storage_dir": str(tmp_path / "kv"), "layers": LAYERS, "block_tokens": BLOCK,
           "bytes_per_token_layer": BPT, "snic_bytes_s": RATE, "nodes": 2, "transport": transport}
    path = tmp_path / "storage.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "engine", "--role", "storage", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY "):
        proc.kill()
        proc.wait(10)
        pytest.fail(f"storage did not start: {line!r} {proc.stderr.read()}")
    return proc, json.loads(line[6:])


def stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(20)
    assert proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    return rc


async def exercise(ports, transport):
    import aiohttp
    keys = chain_keys(list(range(8 * BLOCK)), BLOCK)
    blocks = [os.urandom(BLOCK_BYTES) for _ in keys]
    ch = await connect(transport, "127.0.0.1", ports["data_port"])
    for k, b in zip(keys, blocks):
        await ch.send({"op": "write", "key": k.hex(), "node": 1}, b, traffic="kv_write")
        header, _ = await asyncio.wait_for(ch.recv(), 10)
        assert header == {"op": "written", "key": k.hex()}
    base = f"http://127.0.0.1:{ports['http_port']}"
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/hit", json={"keys": [k.hex() for k in keys[:5]] + ["00" * 16]}) as r:
            assert (await r.json()) == {"hit_blocks": 5}
        async with s.post(base + "/hit", data="nope") as r:
            assert r.status == 400 and "error" in await r.json()
        t0 = time.perf_counter()
        await ch.send({"op": "read", "keys": [k.hex() for k in keys], "node": 0})
        got = []
        while True:
            header, view = await asyncio.wait_for(ch.recv(), 10)
            if header.get("op") == "read_done":
                break
            got.append(bytes(view))
        elapsed = time.perf_counter() - t0
        async with s.get(base + "/metrics") as r:
            samples = parse(await r.text())
    ch.close()
    return blocks, got, elapsed, samples


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_storage_process_round_trip_paced_and_counted(tmp_path, transport):
    proc, ports = start(tmp_path, transport)
    try:
        blocks, got, elapsed, samples = asyncio.run(exercise(ports, transport))
    finally:
        rc = stop(proc)
    assert rc == 0
    assert got == blocks
    total = len(blocks) * BLOCK_BYTES
    assert elapsed >= total / RATE - 0.010 - 0.002   # never faster than the SNIC (less the bucket's depth)
    counted = {(lab["device"], lab["direction"], lab["traffic"]): v for name, lab, v in samples
               if name == "dualpath_link_bytes_total"}
    assert counted == {("storage_node0", "tx", "kv_read"): total, ("storage_node1", "rx", "kv_write"): total}
    assert len(list((tmp_path / "kv").iterdir())) == len(blocks)


def test_storage_config_errors_are_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"storage_dir": "x", "layers": 0, "block_tokens": 1, "bytes_per_token_layer": 1,
                                    "snic_bytes_s": 1, "nodes": 1}))
    r = subprocess.run([sys.executable, "-m", "harness.cli", "engine", "--role", "storage", "--config", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "layers" in r.stderr


def test_an_engine_writes_back_while_its_long_read_runs(tmp_path):
    """A SNIC is full duplex: a DE's write-back (tx) does not wait behind its own DE-side read (rx)."""
    from pathlib import Path

    import numpy as np

    from engines.live.engine import Part
    live = Path(__file__).resolve().parents[1] / "scenarios" / "live"
    proc, ports = start(tmp_path, "tcp")

    async def main():
        part = Part({"node": 0, "layers": LAYERS, "block_tokens": BLOCK, "bytes_per_token_layer": BPT,
                     "cnic_bytes_s": 1e9, "model": str(live / "live-tiny.model.yaml"),
                     "hardware": str(live / "live-host.hardware.yaml"),
                     "storage": {"host": "127.0.0.1", "data_port": ports["data_port"]}})
        n = 40  # 40 x 64 KiB at 4 MB/s: the read takes >= 0.65 s
        keys = chain_keys(list(range(n * BLOCK)), BLOCK)
        kv = np.random.randint(0, 255, (LAYERS, n * BLOCK * BPT), dtype=np.uint8)
        await part.write_blocks(keys, kv, 0)
        into = np.zeros_like(kv)
        read = asyncio.create_task(part.read_blocks([k.hex() for k in keys], into))
        for _ in range(1000):  # until the read holds its channel (yields, bounded)
            if part.storage_lock["read"].locked():
                break
            await asyncio.sleep(0)
        new = chain_keys(list(range(7, 7 + 2 * BLOCK)), BLOCK)
        await part.write_blocks(new, kv[:, :2 * BLOCK * BPT].copy(), 0)
        written_while_reading = not read.done()
        await read
        for ch in part.storage.values():
            ch.close()
        part.close()
        return written_while_reading, bool((into == kv).all())
    try:
        written_while_reading, same = asyncio.run(main())
    finally:
        assert stop(proc) == 0
    assert written_while_reading and same
