"""Which side reads a request's hit KV from storage (reference/paper.md 4.4).

The whole request's read goes to one side: the PE node (PE read path) or the DE node (DE read path).
"""
from __future__ import annotations

import itertools
from typing import Callable


def read_side_shorter_queue(pe_node: int, de_node: int, read_q: Callable[[int], float],
                            read_so_far: Callable[[int], float] | None = None) -> str:
    """DualPath: the side whose node has the shorter storage read queue. Ties (both queues empty, the
    common case when storage is not the bottleneck; the paper does not say) go to the node that has
    read less so far, so idle SNICs share the work instead of the PE side taking all of it."""
    pe_q, de_q = read_q(pe_node), read_q(de_node)
    if pe_q != de_q or read_so_far is None:
        return "de" if de_q < pe_q else "pe"
    return "de" if read_so_far(de_node) < read_so_far(pe_node) else "pe"


def read_side_round_robin() -> Callable[..., str]:
    """DualPath without its scheduler ("+DPL"): alternate PE and DE sides, request by request."""
    turn = itertools.cycle(("pe", "de"))
    return lambda pe_node, de_node, read_q, read_so_far=None: next(turn)


def read_side_pe_only(pe_node: int, de_node: int, read_q: Callable[[int], float], read_so_far=None) -> str:
    """The baseline: only the PE side reads."""
    return "pe"
