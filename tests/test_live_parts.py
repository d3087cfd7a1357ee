"""The live runtime's parts: the virtual-clock pacer, the block store, and the tcp/shm transports over
real sockets on 127.0.0.1 (free ports)."""
from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given, settings, strategies as st

from engines.live.pacer import Pacer
from engines.live.store import BlockStore, chain_hash_ids, chain_keys
from engines.live.transport import ChannelClosed, connect, serve


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@given(st.floats(1e3, 1e12), st.lists(st.integers(1, 1 << 26), min_size=1, max_size=50))
def test_pacer_books_exactly_bytes_over_rate(rate, sizes):
    clock = FakeClock()
    p = Pacer(rate, clock=clock)
    for n in sizes:
        p.reserve(n)
    assert p.free_at == pytest.approx(sum(sizes) / rate - p.burst_s, rel=1e-9)
    assert p.bytes == sum(sizes)


def test_pacer_carries_no_credit_from_idle_time():
    clock = FakeClock()
    p = Pacer(1000.0, clock=clock, burst_s=0.005)
    assert p.reserve(1000) == pytest.approx((-0.005, 0.995))
    clock.t = 10.0  # idle for 9 s: the next booking earns only the bucket's depth
    assert p.reserve(500) == pytest.approx((-0.005, 0.495))
    clock.t = 10.496  # late by 1 ms (a sleep's overshoot): the next booking starts where the last ended
    assert p.reserve(500)[0] == pytest.approx(-0.001)


def test_pacer_rejects_a_zero_rate():
    with pytest.raises(ValueError):
        Pacer(0)


def test_chained_keys_name_prefixes():
    a = chain_keys(list(range(40)), 16)
    b = chain_keys(list(range(32)) + [7] * 8, 16)
    c = chain_keys([99] + list(range(1, 40)), 16)
    assert len(a) == 2 and a == b          # the partial last block has no key
    assert c[0] != a[0] and c[1] != a[1]   # a change in block 0 changes every later key
    assert chain_hash_ids([1, 2]) [0] == chain_hash_ids([1, 3])[0] != chain_hash_ids([2, 2])[0]


def test_block_store_round_trip(tmp_path):
    store = BlockStore(tmp_path, layers=3, block_tokens=4, bytes_per_token_layer=5)
    keys = chain_keys(list(range(12)), 4)
    data = os.urandom(store.block_bytes)
    store.write(keys[0], data)
    assert store.hit_blocks(keys) == 1
    out = bytearray(store.block_bytes)
    assert store.read_into(keys[0], out) == 60 and bytes(out) == data
    layer = bytearray(store.layer_bytes)
    store.read_layer_into(keys[0], 2, layer)
    assert bytes(layer) == data[40:60]
    with pytest.raises(ValueError):
        store.write(keys[1], b"short")
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("kind", ["tcp", "shm"])
def test_channel_moves_every_byte_and_counts_it(kind):
    async def main():
        got = []
        done = asyncio.Event()

        async def echo(ch):
            try:
                while True:
                    header, view = await ch.recv()
                    got.append((header["i"], bytes(view)))
                    await ch.send({"i": header["i"], "traffic": "kv_transfer"}, view, traffic="kv_transfer")
            except ChannelClosed:
                done.set()
            finally:
                ch.close()
        server, port = await serve(kind, "127.0.0.1", 0, echo)
        ch = await connect(kind, "127.0.0.1", port)
        payloads = [os.urandom(n) for n in (0, 1, 4096, 3 << 20)]
        back = []
        for i, p in enumerate(payloads):
            await ch.send({"i": i, "traffic": "kv_read"}, p, traffic="kv_read")
            header, view = await asyncio.wait_for(ch.recv(), 10)
            back.append(bytes(view))
        ch.close()
        await asyncio.wait_for(done.wait(), 10)
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        return payloads, got, back, dict(ch.counters)
    payloads, got, back, counters = asyncio.run(main())
    assert [g[1] for g in got] == payloads and back == payloads
    total = sum(map(len, payloads))
    assert counters[("tx", "kv_read")] == total and counters[("rx", "kv_transfer")] == total


def test_a_closed_peer_is_a_clear_error():
    async def main():
        async def drop(ch):
            ch.close()
        server, port = await serve("tcp", "127.0.0.1", 0, drop)
        ch = await connect("tcp", "127.0.0.1", port)
        try:
            with pytest.raises(ChannelClosed):
                await asyncio.wait_for(ch.recv(), 10)
        finally:
            ch.close()
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)
    asyncio.run(main())
