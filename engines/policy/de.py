"""Decode-engine choice inside a group: phase 2 of the paper's two-level DE scheduler (reference/paper.md
4.3). Among the DEs with enough free HBM, prefer those that stay under Z (tok + len <= Z), taking the
one with the fewest requests; otherwise the DE with the fewest tokens. Phase 1 (which group) and Z
itself live in engines/policy/dispatch.py.
"""
from __future__ import annotations

from typing import Sequence

from engines.policy.pe import EngineView


def choose_de_paper(length: float, need: float, engines: Sequence[EngineView], z: float, rotate: int = 0) -> int:
    """Phase 2 for one request inside a group: index into `engines`, or -1 if none has the HBM.
    Exact ties go to the first engine id counting from `rotate`."""
    n = len(engines)
    best, best_key = -1, None
    for i, e in enumerate(engines):
        if e.hbm_free_bytes < need:
            continue
        tie = ((e.id - rotate) % n, e.id)
        key = (0, e.seq, e.tok, tie) if e.tok + length <= z else (1, e.tok, 0, tie)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best
