"""Progress bars on stderr (never stdout, so `--json` output stays clean).

Shown when stderr is a terminal, or when DUALPATH_PROGRESS=1; hidden with DUALPATH_PROGRESS=0.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator


def enabled() -> bool:
    flag = os.environ.get("DUALPATH_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false", "no")
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress(total: float | None, desc: str, unit: str = "it") -> Iterator[Callable[[float], None]]:
    """Yield an `advance(n)` callable; a no-op when progress is disabled."""
    if not enabled():
        yield lambda n=1: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
               mininterval=0.25)
    try:
        yield bar.update
    finally:
        bar.close()
