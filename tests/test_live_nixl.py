"""`live.transport: nixl` where nixl-cu12 is installed: a channel moves every byte both ways and counts
it, in a child process that ends as engine parts do (os._exit after an orderly shutdown, past the
library's crash at interpreter exit); without NIXL a run asking for it is refused in one line."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engines.live import nixl

LIVE = Path(__file__).resolve().parents[1] / "scenarios" / "live"
REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import asyncio, hashlib, os
    from engines.live.transport import ChannelClosed, connect, serve
    from engines.live.nixl import exit_now

    async def main():
        got, done = [], asyncio.Event()
        async def echo(ch):
            try:
                while True:
                    header, view = await ch.recv()
                    got.append(bytes(view))
                    await ch.send({"i": header["i"], "traffic": "kv_transfer"}, view, traffic="kv_transfer")
            except ChannelClosed:
                done.set()
            finally:
                ch.close()
        server, port = await serve("nixl", "127.0.0.1", 0, echo, slot_bytes=4 << 20)
        ch = await connect("nixl", "127.0.0.1", port, slot_bytes=4 << 20)
        payloads = [os.urandom(n) for n in (0, 1, 4096, 3 << 20, 5)]
        back = []
        for i, p in enumerate(payloads):
            await ch.send({"i": i, "traffic": "kv_read"}, p, traffic="kv_read")
            header, view = await asyncio.wait_for(ch.recv(), 30)
            back.append(bytes(view))
        ch.close()
        await asyncio.wait_for(done.wait(), 30)
        server.cancel()
        total = sum(map(len, payloads))
        ok = got == payloads and back == payloads
        print("RESULT", ok, ch.counters[("tx", "kv_read")] == total, ch.counters[("rx", "kv_transfer")] == total,
              flush=True)
    asyncio.run(main())
    exit_now(0)
""")


@pytest.mark.skipif(not nixl.available(), reason="nixl-cu12 is not installed here")
def test_a_nixl_channel_moves_every_byte_and_its_process_exits_cleanly():
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RESULT True True True" in r.stdout


def test_nixl_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(nixl, "api", lambda: (_ for _ in ()).throw(ImportError(f"nixl is not installed: {nixl.INSTALL}")))
    from harness import backend_live
    from traces.errors import InputError
    with pytest.raises(InputError, match="live.transport: nixl is not installed: pip install nixl-cu12"):
        backend_live.check({"live": {"transport": "nixl"}, "model": str(LIVE / "live-tiny.model.yaml"),
                            "hardware": str(LIVE / "live-host.hardware.yaml")}, None)
