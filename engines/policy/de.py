"""Decode-engine choice: the paper's two-level scheduler with HBM admission, and a baseline.

reference/paper.md 4.3. Phase 1: a request goes to the DE group with the smallest total unfinished
tokens. Phase 2, inside the group: R = the head of the queue that fits in the group's free HBM;
Z = z_factor x (sum of len over R + sum of tok_e) / |E|; each request, in order, goes to a DE with
enough free HBM, preferring DEs that stay under Z (fewest requests first), else the DE with the fewest
tokens; the fetch stops at the first request no DE can hold.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from engines.policy.pe import EngineView


def z_threshold(queue: Iterable[tuple[float, float]], engines: Sequence[EngineView], z_factor: float) -> float:
    """Z for a group: queue = (len, HBM bytes needed) of the requests waiting for it, in order."""
    free = sum(e.hbm_free_bytes for e in engines)
    fit_len, used = 0.0, 0.0
    for length, need in queue:
        if used + need > free:
            break
        used += need
        fit_len += length
    return z_factor * (fit_len + sum(e.tok for e in engines)) / max(1, len(engines))


def choose_group(groups: Sequence[Sequence[EngineView]]) -> int:
    """Phase 1: the group with the smallest sum of unfinished tokens."""
    return min(range(len(groups)), key=lambda g: (sum(e.tok for e in groups[g]), g))


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


def choose_de_least_loaded(need: float, engines: Sequence[EngineView], rotate: int = 0) -> int:
    """Baseline: the DE with the fewest unfinished tokens among those with room, or -1 (ties rotate)."""
    n = len(engines)
    best, best_key = -1, None
    for i, e in enumerate(engines):
        if e.hbm_free_bytes < need:
            continue
        key = (e.tok, (e.id - rotate) % n, e.id)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best


def plan_groups(lengths: Sequence[float], groups: Sequence[Sequence[EngineView]]) -> list[int]:
    """Phase 1 over a queue: each request to the group with the smallest unfinished tokens, counting
    the requests planned before it (the group's private queue)."""
    group_tok = [sum(e.tok for e in g) for g in groups]
    plan = []
    for length in lengths:
        g = min(range(len(groups)), key=lambda k: (group_tok[k], k))
        plan.append(g)
        group_tok[g] += length
    return plan


def group_z(lengths: Sequence[float], hbm_need: Sequence[float], plan: Sequence[int],
            groups: Sequence[Sequence[EngineView]], z_factor: float) -> list[float]:
    """Z of every group over the requests planned for it (phase 2 looks at its own private queue)."""
    return [z_threshold([(l, n) for l, n, p in zip(lengths, hbm_need, plan) if p == g], groups[g], z_factor)
            for g in range(len(groups))]


def assign_de_paper(lengths: Sequence[float], hbm_need: Sequence[float], groups: Sequence[Sequence[EngineView]],
                    z_factor: float) -> list[tuple[int, int]]:
    """Both phases over a queue: (group, index in group) per request until one does not fit."""
    plan = plan_groups(lengths, groups)
    z = group_z(lengths, hbm_need, plan, groups, z_factor)
    out = []
    for length, need, g in zip(lengths, hbm_need, plan):
        i = choose_de_paper(length, need, groups[g], z[g])
        if i < 0:
            break
        e = groups[g][i]
        e.hbm_free_bytes -= need
        e.tok += length
        e.seq += 1
        out.append((g, i))
    return out
