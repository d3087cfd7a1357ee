"""The live runtime's data path: transport throughput and the pacer's accuracy.

    .venv/bin/python benchmarks/bench_live.py [--seconds 1.5] [--sizes 1,4,16,64] [--rates 0.1,0.5,2]

1. Throughput of `tcp` and `shm` channels (and `nixl` where nixl-cu12 is installed, issue 17) (engines/live/transport.py) for 1-64 MiB frames, sender in this
   process, receiver in a child process (its own core where there is one), as GB/s and as a share of
   memcpy (numpy copyto of the same size, one copy, this process) on the same machine. Goals (issue 14):
   shm >= 50 % of memcpy, tcp >= 2 GB/s. Beside tcp, this host's loopback TCP ceiling: blocking
   `sendall`/`recv_into` of the same sizes between two processes with the channels' socket buffers, no
   asyncio, no framing (`raw`).
2. The pacer (engines/live/pacer.py) over a real tcp channel at three rates (GB/s): achieved rate =
   bytes / time to send them, error against the set rate. Goal: within 1 %. (The bucket's depth, 10 ms
   of the rate, may go out at once at the start: the error is at most 0.01 s / --seconds above the rate.)
3. The router's overhead per request (benchmarks/bench_router.py, `--router 0` skips it).

Prints one table per part and a SUMMARY block.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.live.pacer import Pacer  # noqa: E402
from engines.live.transport import SOCK_BUF, ChannelClosed, connect, serve  # noqa: E402
from engines.live.nixl import available as nixl_available, exit_now  # noqa: E402

NIXL = nixl_available()

MiB = 1 << 20


def _receiver(kind: str, slot_bytes: int) -> None:
    async def main():
        done = asyncio.Event()

        async def sink(ch):
            try:
                while True:
                    header, view = await ch.recv()
                    if header.get("ack"):
                        await ch.send({"ok": 1})
            except ChannelClosed:
                pass
            finally:
                ch.close()
                done.set()
        server, port = await serve(kind, "127.0.0.1", 0, sink, slots=4, slot_bytes=slot_bytes)
        print(port, flush=True)
        await asyncio.wait_for(done.wait(), 600)
        server.cancel()
    asyncio.run(main())


def _raw_receiver(size: int) -> None:
    ls = socket.create_server(("127.0.0.1", 0))
    print(ls.getsockname()[1], flush=True)
    c, _ = ls.accept()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
    view, got = memoryview(bytearray(size)), 0
    while True:
        n = c.recv_into(view)
        if not n:
            break
        got += n
    c.sendall(str(got).encode())
    c.close()


def raw_tcp_gbs(size: int, seconds: float) -> float:
    """The loopback ceiling: blocking sockets between two processes, `size`-byte sends, for `seconds`."""
    proc = subprocess.Popen([sys.executable, __file__, "--raw-receiver", str(size)], stdout=subprocess.PIPE, text=True)
    try:
        s = socket.create_connection(("127.0.0.1", int(proc.stdout.readline())))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
        payload = np.random.randint(0, 255, size, dtype=np.uint8)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            s.sendall(payload)
            n += 1
        s.shutdown(socket.SHUT_WR)
        got = int(s.recv(64))  # the receiver answers once it has every byte
        elapsed = time.perf_counter() - t0
        s.close()
        return got / elapsed / 1e9
    finally:
        proc.wait(30)


def memcpy_gbs(size: int, seconds: float) -> float:
    src = np.random.randint(0, 255, size, dtype=np.uint8)
    dst = np.empty_like(src)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        np.copyto(dst, src)
        n += 1
    return n * size / (time.perf_counter() - t0) / 1e9


async def _send(kind: str, port: int, size: int, seconds: float, rate: float | None, slot_bytes: int):
    ch = await connect(kind, "127.0.0.1", port, pacer=Pacer(rate) if rate else None, slots=4, slot_bytes=slot_bytes)
    payload = np.random.randint(0, 255, size, dtype=np.uint8)
    await ch.send({"warm": 1}, payload)
    await ch.send({"ack": 1})
    await ch.recv()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        await ch.send({"i": n}, payload, traffic="kv_transfer")
        n += 1
    await ch.send({"ack": 1})  # the receiver has every byte when it answers
    await ch.recv()
    elapsed = time.perf_counter() - t0
    ch.close()
    return n * size, elapsed


def run_pair(kind: str, size: int, seconds: float, rate: float | None = None) -> tuple[int, float]:
    """The receiver is its own process, started as engines are (not multiprocessing: its own resource tracker)."""
    slot_bytes = max(size, MiB)
    proc = subprocess.Popen([sys.executable, __file__, "--receiver", kind, str(slot_bytes)], stdout=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline())
        return asyncio.run(_send(kind, port, size, seconds, rate, slot_bytes))
    finally:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--sizes", default="1,4,16,64", help="frame sizes in MiB")
    ap.add_argument("--rates", default="0.05,0.2,0.5", help="pacer rates in GB/s (below the tcp rate)")
    ap.add_argument("--router", type=int, default=300, help="requests for the router's overhead (0: skip)")
    ap.add_argument("--receiver", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--raw-receiver", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.receiver:
        _receiver(args.receiver[0], int(args.receiver[1]))
        if args.receiver[0] == "nixl":
            exit_now(0)
        return 0
    if args.raw_receiver:
        _raw_receiver(args.raw_receiver)
        return 0
    sizes = [int(float(s) * MiB) for s in args.sizes.split(",")]
    summary = {}
    nixl_gbs = []  # issue 17
    print(f"{'size':>7} {'memcpy GB/s':>12} {'raw GB/s':>9} {'tcp GB/s':>9} {'tcp/raw':>8} {'shm GB/s':>9} "
          f"{'shm %':>6}" + (f" {'nixl GB/s':>9} {'nixl %':>6}" if NIXL else ""))
    for size in sizes:
        ref = memcpy_gbs(size, args.seconds / 2)
        raw = raw_tcp_gbs(size, args.seconds)
        row = {}
        for kind in ("tcp", "shm", "nixl") if NIXL else ("tcp", "shm"):
            nbytes, elapsed = run_pair(kind, size, args.seconds)
            row[kind] = nbytes / elapsed / 1e9
        print(f"{size // MiB:>5}Mi {ref:>12.2f} {raw:>9.2f} {row['tcp']:>9.2f} {100 * row['tcp'] / raw:>7.0f}% "
              f"{row['shm']:>9.2f} {100 * row['shm'] / ref:>5.0f}%"
              + (f" {row['nixl']:>9.2f} {100 * row['nixl'] / ref:>5.0f}%" if NIXL else ""))
        summary[size // MiB] = (ref, row["tcp"], row["shm"], raw)
        if NIXL:
            nixl_gbs.append(row["nixl"])
    print(f"\n{'rate GB/s':>9} {'block':>6} {'achieved GB/s':>14} {'error':>8}")
    errors = []
    for rate in (float(r) for r in args.rates.split(",")):
        block = MiB
        nbytes, elapsed = run_pair("tcp", block, args.seconds, rate=rate * 1e9)
        got = nbytes / elapsed / 1e9
        errors.append(abs(got / rate - 1))
        print(f"{rate:>9.2f} {'1Mi':>6} {got:>14.4f} {100 * (got / rate - 1):>+7.2f}%")
    router = None
    if args.router:
        from bench_router import bench_router
        router = bench_router(args.router)
    worst_tcp = min(v[1] for v in summary.values())
    worst_raw = min(v[1] / v[3] for v in summary.values())
    worst_shm = min(v[2] / v[0] for v in summary.values())
    print("\nSUMMARY")
    print(f"tcp min {worst_tcp:.2f} GB/s (goal >= 2; this host's raw loopback ceiling: tcp >= "
          f"{100 * worst_raw:.0f} % of it)  shm min {100 * worst_shm:.0f} % of memcpy (goal >= 50 %)  "
          f"pacer worst error {100 * max(errors):.2f} % (goal <= 1 %)")
    if router:
        print(router)
    if NIXL:
        print(f"nixl min {min(nixl_gbs):.2f} GB/s")
        exit_now(0)  # NIXL can crash in the interpreter's teardown
    return 0


if __name__ == "__main__":
    sys.exit(main())
