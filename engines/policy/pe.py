"""Prefill-engine choice: the paper's fetch with alpha/beta categories, and the least-loaded baseline.

reference/paper.md 4.2: C1 (tok_e > beta) gets nothing; C2 (read queue <= alpha) first, then C3
(read queue > alpha); inside a category the engine with the fewest unfinished tokens; the fetch stops
when both C2 and C3 are empty. The caller applies a choice by adding the request to tok and seq.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass
class EngineView:
    """What an engine reports to the scheduler. The runtimes' engine objects carry these attributes."""

    id: int
    node: int
    tok: float = 0.0              # unfinished tokens assigned to it
    seq: int = 0                  # unfinished requests assigned to it
    hbm_free_bytes: float = 0.0   # DEs: HBM not yet promised to a request
    group: int = 0


def choose_pe_paper(engines: Sequence[EngineView], read_q: Callable[[int], float], alpha: float,
                    beta: float, rotate: int = 0) -> int:
    """Index of the PE for the request at the head of the queue, or -1 (all overloaded: stop).

    Exact ties go to the first engine id counting from `rotate` (callers rotate it per request, so idle
    engines share the work instead of the lowest id taking it all)."""
    n = len(engines)
    best, best_key = -1, None
    for i, e in enumerate(engines):
        if e.tok > beta:
            continue  # C1: overloaded
        key = (0 if read_q(e.node) <= alpha else 1, e.tok, (e.id - rotate) % n, e.id)  # C2 before C3, fewest tok
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best


def choose_pe_least_loaded(engines: Sequence[EngineView], rotate: int = 0) -> int:
    """Baseline: the PE with the fewest unfinished tokens (no cap); ties as in choose_pe_paper."""
    n = len(engines)
    best, best_key = -1, None
    for i, e in enumerate(engines):
        key = (e.tok, (e.id - rotate) % n, e.id)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best


def fetch_pe_paper(lengths: Sequence[float], engines: Sequence[EngineView],
                   read_q: Callable[[int], float], alpha: float, beta: float) -> list[int]:
    """Algorithm 1 over a queue: a PE per request, in order, until none fits (updates tok, seq)."""
    out: list[int] = []
    for length in lengths:
        i = choose_pe_paper(engines, read_q, alpha, beta)
        if i < 0:
            break
        engines[i].tok += length
        engines[i].seq += 1
        out.append(i)
    return out
