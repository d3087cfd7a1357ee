"""`dualpath calibrate`: measure this host into a hardware profile the simulator accepts.

What stands for what (one host plays one node):
- storage NIC (`snic_gbps`, one SNIC): read bandwidth of a file in `--storage-dir`, cold (O_DIRECT where
  the file system allows it, else after dropping the file's pages with posix_fadvise) and warm (from the
  page cache); the cold figure goes into the profile;
- compute NIC (`cnic_gbps`): loopback TCP socket throughput (the live cluster's transport);
- DRAM (`dram_bw_bytes_s`): memcpy, one buffer per thread, counted as read + write traffic;
- GPU (`gpu.*`): with torch, matmul throughput (BF16; FP8 where torch has it on CUDA, else BF16's) and
  device memory copy on CUDA, or the CPU; without torch, numpy FP32 matmul and memcpy stand in, with
  a note. Attention throughput (torch's scaled_dot_product_attention) is measured and written as a
  comment: profiles have no key for it.
Every value is the median of its repeats, written with method, size, repeats and spread
((max - min) / median) in a comment.
"""
from __future__ import annotations

import mmap
import os
import platform
import shutil
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from traces.errors import InputError

MiB = 1 << 20
CHUNK = 4 * MiB


@dataclass
class Measure:
    value: float          # the median
    unit: str
    method: str
    size: str
    samples: list[float]

    @property
    def spread(self) -> float:
        return (max(self.samples) - min(self.samples)) / self.value if self.value else 0.0

    def comment(self) -> str:
        return (f"{self.method}; {self.size}; median of {len(self.samples)}, spread {100 * self.spread:.0f} % "
                f"(min {min(self.samples):.4g}, max {max(self.samples):.4g} {self.unit})")


def _repeat(fn: Callable[[], float], repeats: int) -> list[float]:
    return [fn() for _ in range(repeats)]


def _measure(fn, repeats, unit, method, size) -> Measure:
    samples = _repeat(fn, repeats)
    return Measure(statistics.median(samples), unit, method, size, samples)


# ----- storage ----------------------------------------------------------------------------------
def _write_file(path: Path, size: int) -> None:
    block = np.random.default_rng(0).integers(0, 256, CHUNK, dtype=np.uint8).tobytes()
    with open(path, "wb") as fh:
        for _ in range(size // CHUNK):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())


def _read_direct(path: Path) -> float:
    """Bytes/s of one O_DIRECT pass (raises OSError where the file system refuses O_DIRECT)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, CHUNK)  # page aligned, as O_DIRECT needs
    try:
        t0 = time.perf_counter()
        total = 0
        while True:
            n = os.readv(fd, [buf])
            if n <= 0:
                break
            total += n
        return total / (time.perf_counter() - t0)
    finally:
        buf.close()
        os.close(fd)


def _read_buffered(path: Path, drop_first: bool) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop_first and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        t0 = time.perf_counter()
        total = 0
        with os.fdopen(os.dup(fd), "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(view)
                if not n:
                    break
                total += n
        return total / (time.perf_counter() - t0)
    finally:
        os.close(fd)


def check_storage_dir(directory: Path) -> None:
    """Bad input before any measuring: a directory this process cannot write a test file in."""
    try:
        fd, name = tempfile.mkstemp(prefix=".dualpath-calibrate-", dir=directory)
    except OSError as exc:
        raise InputError(f"cannot write a test file there ({exc.strerror})", path=str(directory),
                         field="--storage-dir") from None
    os.close(fd)
    os.unlink(name)


def storage(directory: Path, size: int, repeats: int) -> tuple[Measure, Measure, list[str]]:
    """(cold, warm) read bandwidth of a `size`-byte file written in `directory`, bytes/s."""
    notes = []
    free = shutil.disk_usage(directory).free
    if free < 2 * size:
        size = max(CHUNK, (free // 4) // CHUNK * CHUNK)
        notes.append(f"storage: only {free / MiB:.0f} MiB free in {directory}: the test file is {size // MiB} MiB")
    check_storage_dir(directory)
    fd, name = tempfile.mkstemp(prefix=".dualpath-calibrate-", dir=directory)
    os.close(fd)
    path = Path(name)
    try:
        try:
            _write_file(path, size)
        except OSError as exc:
            raise InputError(f"cannot write the {size // MiB} MiB test file ({exc.strerror}); try a smaller "
                             "--size-mb", path=str(directory), field="--storage-dir") from None
        label = f"a {size // MiB} MiB file in {directory}, {CHUNK // MiB} MiB reads"
        try:
            _read_direct(path)  # probe (and warm nothing: O_DIRECT bypasses the cache)
            cold = _measure(lambda: _read_direct(path), repeats, "B/s", "O_DIRECT sequential read", label)
        except OSError as exc:
            notes.append(f"storage: O_DIRECT refused in {directory} ({exc.strerror}); cold reads drop the file's "
                         "cached pages first (posix_fadvise DONTNEED)")
            cold = _measure(lambda: _read_buffered(path, True), repeats, "B/s",
                            "buffered read after posix_fadvise(DONTNEED)", label)
        _read_buffered(path, False)  # into the page cache
        warm = _measure(lambda: _read_buffered(path, False), repeats, "B/s", "buffered read from the page cache", label)
    finally:
        path.unlink(missing_ok=True)
    return cold, warm, notes


# ----- memory and loopback ----------------------------------------------------------------------
def memcpy(size: int, repeats: int) -> Measure:
    """DRAM traffic (read + write) of numpy copies, one buffer per thread, bytes/s."""
    threads = max(1, min(os.cpu_count() or 1, 8))
    per = max(MiB, size // threads)
    src = [np.ones(per, dtype=np.uint8) for _ in range(threads)]
    dst = [np.empty(per, dtype=np.uint8) for _ in range(threads)]
    for s, d in zip(src, dst):
        np.copyto(d, s)  # touch every page first

    def once() -> float:
        workers = [threading.Thread(target=np.copyto, args=(d, s)) for s, d in zip(src, dst)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return 2 * per * threads / (time.perf_counter() - t0)
    return _measure(once, repeats, "B/s", f"numpy copyto on {threads} thread(s), read + write bytes counted",
                    f"{threads} x {per // MiB} MiB", )


def loopback_tcp(size: int, repeats: int) -> Measure:
    """Bytes/s one TCP connection over 127.0.0.1 carries (a listener on a free port, stopped after)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)
    port = server.getsockname()[1]
    received: list[int] = []

    def sink() -> None:
        conn, _ = server.accept()
        conn.settimeout(30)
        buf = bytearray(CHUNK)
        total = 0
        with conn:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                total += n
        received.append(total)

    payload = memoryview(bytes(CHUNK))

    def once() -> float:
        t = threading.Thread(target=sink, daemon=True)
        t.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            t0 = time.perf_counter()
            for _ in range(size // CHUNK):
                c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            t.join(30)
            dt = time.perf_counter() - t0
        if t.is_alive() or received.pop() != size // CHUNK * CHUNK:
            raise RuntimeError("loopback TCP: the receiver did not get every byte")
        return size // CHUNK * CHUNK / dt
    try:
        return _measure(once, repeats, "B/s", "one TCP connection over 127.0.0.1, 4 MiB sendall",
                        f"{size // MiB} MiB per repeat")
    finally:
        server.close()


# ----- compute ----------------------------------------------------------------------------------
def numpy_matmul(n: int, repeats: int) -> Measure:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b  # warm up

    def once() -> float:
        t0 = time.perf_counter()
        a @ b
        return 2 * n**3 / (time.perf_counter() - t0)
    return _measure(once, repeats, "FLOP/s", "numpy FP32 matmul (torch not installed)", f"{n} x {n} x {n}")


def torch_compute(repeats: int) -> dict:
    """With torch: matmul (BF16, FP8 on CUDA where torch has it), attention, device memory copy."""
    import torch

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    where = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"

    def timed(fn, flops: float) -> Callable[[], float]:
        def once() -> float:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            return flops / (time.perf_counter() - t0)
        return once

    out: dict = {"device": where, "cuda": cuda, "notes": []}
    n = 8192 if cuda else 1024
    reps = 10 if cuda else 1
    # CPUs without AMX emulate BF16 matmul (~100x slower than FP32): on the CPU, FP32 is what it computes
    dtype, dname = (torch.bfloat16, "BF16") if cuda else (torch.float32, "FP32")
    if not cuda:
        out["notes"].append("CPU: matmul and attention measured in FP32 (BF16 is emulated on most CPUs)")
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)

    def mm():
        for _ in range(reps):
            torch.mm(a, b)
    mm()
    out["bf16"] = _measure(timed(mm, 2 * n**3 * reps), repeats, "FLOP/s", f"torch.mm {dname} on {where}",
                           f"{n} x {n} x {n}, {reps} per repeat")
    out["fp8"] = None
    if cuda and hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm"):
        try:
            a8, b8 = a.to(torch.float8_e4m3fn), b.t().contiguous().t().to(torch.float8_e4m3fn)
            one = torch.ones((), device=dev)

            def mm8():
                for _ in range(reps):
                    torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
            mm8()
            out["fp8"] = _measure(timed(mm8, 2 * n**3 * reps), repeats, "FLOP/s",
                                  f"torch._scaled_mm FP8 e4m3 on {where}", f"{n} x {n} x {n}, {reps} per repeat")
        except (RuntimeError, TypeError) as exc:
            out["notes"].append(f"FP8 matmul not measured ({str(exc).splitlines()[0][:80]}): set to BF16's")
    heads, seq, dim = (32, 4096, 128) if cuda else (8, 1024, 64)
    q = torch.randn(1, heads, seq, dim, device=dev, dtype=dtype)

    def attn():
        for _ in range(reps):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    attn()
    # causal: QK^T and PV (2 x 2 h s^2 d) over half of the pairs
    out["attention"] = _measure(timed(attn, 2 * heads * seq * seq * dim * reps), repeats, "FLOP/s",
                                f"scaled_dot_product_attention {dname} causal on {where}",
                                f"{heads} heads x {seq} tokens x {dim}, {reps} per repeat")
    if cuda:
        size = 1 << 30
        x = torch.empty(size, dtype=torch.uint8, device=dev)
        y = torch.empty_like(x)
        out["hbm"] = _measure(timed(lambda: y.copy_(x), 2 * size), repeats, "B/s",
                              "device-to-device copy, read + write bytes counted", "1 GiB")
        out["hbm_bytes"] = float(torch.cuda.get_device_properties(0).total_memory)
        out["gpus"] = torch.cuda.device_count()
    return out


def host_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0.0


# ----- the profile ------------------------------------------------------------------------------
def calibrate(out: Path, storage_dir: Path, size_mb: int = 256, repeats: int = 3,
              report: Callable[[str], None] = lambda line: None) -> dict:
    """Measure, write the profile YAML to `out` (atomically), return the measures and notes."""
    size = max(1, size_mb) * MiB // CHUNK * CHUNK or CHUNK
    report(f"storage read: {size // MiB} MiB in {storage_dir}")
    cold, warm, notes = storage(storage_dir, size, repeats)
    report("memcpy")
    mem = memcpy(size, repeats)
    report("loopback TCP")
    tcp = loopback_tcp(size, repeats)
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    gpu: dict = {}
    if have_torch:
        report("torch: matmul, attention")
        t = torch_compute(repeats)
        notes += t["notes"]
        gpu = {"bf16": t["bf16"], "fp8": t["fp8"] or t["bf16"], "attention": t["attention"],
               "hbm": t.get("hbm", mem), "hbm_bytes": t.get("hbm_bytes", host_memory_bytes()),
               "gpus": t.get("gpus", 1), "device": t["device"]}
        if t["fp8"] is None and t["cuda"] and not t["notes"]:
            notes.append("FP8 matmul not available in this torch: peak_flops_fp8 is BF16's")
        if not t["cuda"]:
            notes.append("no CUDA device: the CPU stands in for one GPU (its memory for HBM)")
    else:
        notes.append("torch not installed (pip install -e '.[live]'): numpy FP32 matmul stands in for the GPU, "
                     "no attention figure")
        report("numpy matmul")
        m = numpy_matmul(1024, repeats)
        gpu = {"bf16": m, "fp8": m, "attention": None, "hbm": mem, "hbm_bytes": host_memory_bytes(), "gpus": 1,
               "device": f"CPU ({os.cpu_count()} cores)"}
    text = render(out.stem, cold, warm, mem, tcp, gpu, notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return {"storage_cold": cold, "storage_warm": warm, "memcpy": mem, "loopback_tcp": tcp, "gpu": gpu,
            "notes": notes}


def render(name: str, cold: Measure, warm: Measure, mem: Measure, tcp: Measure, gpu: dict, notes: list[str]) -> str:
    """The profile as YAML, each measured value with how it was measured in a comment."""
    gbps = lambda m: round(m.value * 8 / 1e9, 3)  # noqa: E731
    lines = [f"# Measured by `dualpath calibrate` on {platform.node()} ({platform.platform()}),",
             f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. One host stands for one node; see harness/calibrate.py.",
             "# These are achieved rates, not line rates: the simulator derates NICs by sim.snic_efficiency and",
             "# sim.cnic_efficiency, so run with --set sim.snic_efficiency=1 --set sim.cnic_efficiency=1.",
             *[f"# note: {n}" for n in notes],
             f"name: {name}",
             f"gpus_per_node: {gpu['gpus']}        # {gpu['device']}",
             "gpu:",
             f"  peak_flops_bf16: {gpu['bf16'].value:.4g}   # {gpu['bf16'].comment()}",
             f"  peak_flops_fp8: {gpu['fp8'].value:.4g}    # {gpu['fp8'].comment()}",
             f"  hbm_bw_bytes_s: {gpu['hbm'].value:.4g}    # {gpu['hbm'].comment()}",
             f"  hbm_bytes: {gpu['hbm_bytes']:.4g}         # total device (or host) memory",
             f"cnic_gbps: {gbps(tcp)}   # loopback TCP: {tcp.comment()}",
             "snic_count: 1",
             f"snic_gbps: {gbps(cold)}  # cold storage read: {cold.comment()}",
             f"# warm (page cache) read: {gbps(warm)} Gbps = {warm.value / 1e9:.3g} GB/s: {warm.comment()}",
             f"dram_bw_bytes_s: {mem.value:.4g}   # memcpy: {mem.comment()}"]
    if gpu.get("attention") is not None:
        a = gpu["attention"]
        lines.append(f"# attention throughput (no profile key): {a.value:.4g} FLOP/s: {a.comment()}")
    return "\n".join(lines) + "\n"
