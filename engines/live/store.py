"""The storage service's data: KV as Full Blocks `[layers, block_tokens, bytes_per_token_layer]` in real
files, keyed by chained prefix-block hashes (a block's key covers every token before it, so equal keys mean
equal prefixes, as in the paper's prefix cache).

One file per block, named by its hex key, under `root`; a block is written whole to a temporary name and
renamed, so a reader never sees half a block. `hit_blocks(keys)` is how many leading blocks are stored.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

ROOT_KEY = b"\0" * 16


def chain_keys(tokens: Sequence[int], block_tokens: int) -> list[bytes]:
    """The chained keys of the full blocks of `tokens` (a partial last block has none)."""
    keys, prev = [], ROOT_KEY
    for i in range(0, len(tokens) - block_tokens + 1, block_tokens):
        h = hashlib.blake2b(prev, digest_size=16)
        h.update(b",".join(str(t).encode() for t in tokens[i:i + block_tokens]))
        prev = h.digest()
        keys.append(prev)
    return keys


def chain_hash_ids(hash_ids: Iterable[int]) -> list[bytes]:
    """Chained keys from a trace's per-block hash ids (Mooncake-style traces)."""
    keys, prev = [], ROOT_KEY
    for hid in hash_ids:
        prev = hashlib.blake2b(prev + int(hid).to_bytes(8, "little", signed=True), digest_size=16).digest()
        keys.append(prev)
    return keys


class BlockStore:
    def __init__(self, root: str | os.PathLike, layers: int, block_tokens: int, bytes_per_token_layer: int):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.layers = layers
        self.block_tokens = block_tokens
        self.bytes_per_token_layer = bytes_per_token_layer
        self.block_bytes = layers * block_tokens * bytes_per_token_layer
        self.layer_bytes = block_tokens * bytes_per_token_layer
        self.bytes_read = 0
        self.bytes_written = 0

    def path(self, key: bytes) -> Path:
        return self.root / key.hex()

    def has(self, key: bytes) -> bool:
        return self.path(key).is_file()

    def hit_blocks(self, keys: Sequence[bytes]) -> int:
        n = 0
        for k in keys:
            if not self.has(k):
                break
            n += 1
        return n

    def write(self, key: bytes, data) -> None:
        view = memoryview(data).cast("B")
        if view.nbytes != self.block_bytes:
            raise ValueError(f"a Full Block is {self.block_bytes} bytes, got {view.nbytes}")
        final = self.path(key)
        if final.exists():
            return
        tmp = final.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(view)
        os.replace(tmp, final)
        self.bytes_written += view.nbytes

    def read_into(self, key: bytes, out) -> int:
        """Read a whole block into the buffer `out` (no intermediate copy); its size in bytes."""
        view = memoryview(out).cast("B")
        with open(self.path(key), "rb", buffering=0) as f:
            n = f.readinto(view[:self.block_bytes])
        if n != self.block_bytes:
            raise OSError(f"block {key.hex()} is short: {n} of {self.block_bytes} bytes")
        self.bytes_read += n
        return n

    def read_layer_into(self, key: bytes, layer: int, out) -> int:
        """Read one layer's slice of a block (`block_tokens x bytes_per_token_layer`) into `out`."""
        view = memoryview(out).cast("B")
        with open(self.path(key), "rb", buffering=0) as f:
            f.seek(layer * self.layer_bytes)
            n = f.readinto(view[:self.layer_bytes])
        if n != self.layer_bytes:
            raise OSError(f"block {key.hex()} layer {layer} is short: {n} of {self.layer_bytes} bytes")
        self.bytes_read += n
        return n
