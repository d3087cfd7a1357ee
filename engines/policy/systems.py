"""The ablation ladder (DESIGN.md "Systems"): what each system name turns on."""
from __future__ import annotations

from dataclasses import dataclass

from engines import contract
from traces.errors import InputError


@dataclass(frozen=True)
class SystemPolicy:
    name: str
    layerwise: bool        # layer-wise prefill: one layer's KV in HBM, load/compute/stream overlap
    read_sides: str        # "pe" | "round-robin" | "shorter-queue"
    paper_scheduler: bool  # PE alpha/beta fetch, DE two-level with Z, chunked compute quota
    free_io: bool          # oracle: storage reads, H2D/D2H and PE->DE transfers cost nothing


SYSTEMS = {
    "basic": SystemPolicy("basic", layerwise=False, read_sides="pe", paper_scheduler=False, free_io=False),
    "layerwise": SystemPolicy("layerwise", layerwise=True, read_sides="pe", paper_scheduler=False, free_io=False),
    "dualpath-rr": SystemPolicy("dualpath-rr", layerwise=True, read_sides="round-robin", paper_scheduler=False,
                                free_io=False),
    "dualpath": SystemPolicy("dualpath", layerwise=True, read_sides="shorter-queue", paper_scheduler=True,
                             free_io=False),
    "oracle": SystemPolicy("oracle", layerwise=True, read_sides="shorter-queue", paper_scheduler=True, free_io=True),
}

assert tuple(SYSTEMS) == contract.SYSTEMS  # the names are the contract's; this says what each turns on


def system_policy(name: str) -> SystemPolicy:
    try:
        return SYSTEMS[name]
    except KeyError:
        raise InputError(f"unknown system {name!r} (allowed: {', '.join(SYSTEMS)})", field="systems") from None
