"""Prefix-cache hits from Mooncake-style hash ids, with an infinite cache.

Hash ids name fixed-size blocks of the prompt. A block is reused only as part of a leading run of
blocks already seen *in the same position after the same predecessors*, so the cache is a trie keyed
by (parent node, hash id). This is exact for prefix hashes (Mooncake's) and stays correct for content
hashes that repeat at other positions.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def infinite_cache_hits(hash_ids: pa.Array, prompt_tokens: np.ndarray, block_size: int,
                        order: np.ndarray | None = None) -> np.ndarray:
    """Cached tokens per row: the leading blocks an infinite cache has already seen when the row is
    served (rows served in `order`, default file order); the last block counts by its real length."""
    if isinstance(hash_ids, pa.ChunkedArray):
        hash_ids = hash_ids.combine_chunks()
    offsets = hash_ids.offsets.to_numpy()
    values = hash_ids.values.to_numpy().tolist()
    prompt = np.asarray(prompt_tokens, dtype=np.int64)
    n = len(prompt)
    hits = np.zeros(n, dtype=np.int64)
    trie: dict[tuple[int, int], int] = {}
    rows = range(n) if order is None else order.tolist()
    for i in rows:
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        node = 0
        matched = 0
        j = lo
        while j < hi:
            child = trie.get((node, values[j]))
            if child is None:
                break
            node = child
            matched += 1
            j += 1
        while j < hi:  # insert the rest of this prompt's blocks
            child = len(trie) + 1
            trie[(node, values[j])] = child
            node = child
            j += 1
        hits[i] = min(matched * block_size, int(prompt[i]))
    return hits
