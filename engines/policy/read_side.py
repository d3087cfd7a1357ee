"""Which side reads a request's hit KV from storage (reference/paper.md 4.4).

The whole request's read goes to one side: the PE node (PE read path) or the DE node (DE read path).
"""
from __future__ import annotations

import itertools
from typing import Callable


def read_side_shorter_queue(pe_node: int, de_node: int, read_q: Callable[[int], float]) -> str:
    """DualPath: the side whose node has the shorter storage read queue (ties: PE side)."""
    return "de" if read_q(de_node) < read_q(pe_node) else "pe"


def read_side_round_robin() -> Callable[[int, int, Callable[[int], float]], str]:
    """DualPath without its scheduler ("+DPL"): alternate PE and DE sides, request by request."""
    turn = itertools.cycle(("pe", "de"))
    return lambda pe_node, de_node, read_q: next(turn)


def read_side_pe_only(pe_node: int, de_node: int, read_q: Callable[[int], float]) -> str:
    """The baseline: only the PE side reads."""
    return "pe"
