"""Progress on stderr (never stdout, so `--json` output stays clean).

A bar when stderr is a terminal (or DUALPATH_PROGRESS=1); without a terminal (a pipe, a CI log) a plain
line every LINE_EVERY_S seconds of a long phase, so a log never sits silent; DUALPATH_PROGRESS=0 hides both.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator

LINE_EVERY_S = 10.0


def enabled() -> bool:
    flag = os.environ.get("DUALPATH_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false", "no")
    return sys.stderr.isatty()


def _lines_wanted() -> bool:
    return os.environ.get("DUALPATH_PROGRESS") is None and not sys.stderr.isatty()


@contextlib.contextmanager
def progress(total: float | None, desc: str, unit: str = "it") -> Iterator[Callable[[float], None]]:
    """Yield an `advance(n)` callable; a no-op when progress is disabled."""
    if not enabled():
        if not _lines_wanted():
            yield lambda n=1: None
            return
        state = {"done": 0.0, "last": time.monotonic()}

        def advance(n: float = 1) -> None:
            state["done"] += n
            now = time.monotonic()
            if now - state["last"] >= LINE_EVERY_S:
                state["last"] = now
                of = f"/{total:,.0f} {unit} ({100 * state['done'] / total:.0f} %)" if total else f" {unit}"
                print(f"{desc.strip()}: {state['done']:,.0f}{of}", file=sys.stderr, flush=True)
        yield advance
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
               mininterval=0.25)
    try:
        yield bar.update
    finally:
        bar.close()
