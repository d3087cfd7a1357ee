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
    Under Z: the fewest requests, then the fewest tokens; else the fewest tokens. Exact ties go to the
    first engine id counting from `rotate`. (Scalar comparisons instead of key tuples: this runs once
    per dispatched request over a whole group.)"""
    n = len(engines)
    low = high = -1
    low_seq = low_tok = low_tie = high_tok = high_tie = 0
    for i, e in enumerate(engines):
        if e.hbm_free_bytes < need:
            continue
        tok = e.tok
        if tok + length <= z:
            seq = e.seq
            if low >= 0:
                if seq > low_seq or (seq == low_seq and tok > low_tok):
                    continue
                if seq == low_seq and tok == low_tok:
                    tie = ((e.id - rotate) % n, e.id)
                    if tie >= low_tie:
                        continue
                    low, low_tie = i, tie
                    continue
            low, low_seq, low_tok, low_tie = i, seq, tok, ((e.id - rotate) % n, e.id)
        elif low < 0:
            if high >= 0:
                if tok > high_tok:
                    continue
                if tok == high_tok:
                    tie = ((e.id - rotate) % n, e.id)
                    if tie >= high_tie:
                        continue
                    high, high_tie = i, tie
                    continue
            high, high_tok, high_tie = i, tok, ((e.id - rotate) % n, e.id)
    return low if low >= 0 else high
