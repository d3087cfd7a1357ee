"""What an engine reports to the scheduler (reference/paper.md 4.1): the view every policy function reads."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineView:
    """What an engine reports to the scheduler. The runtimes' engine objects carry these attributes."""

    id: int
    node: int
    tok: float = 0.0              # unfinished tokens assigned to it
    seq: int = 0                  # unfinished requests assigned to it
    hbm_free_bytes: float = 0.0   # DEs: HBM not yet promised to a request
    group: int = 0
