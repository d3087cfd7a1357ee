"""Scheduling decisions shared by both runtimes (sim and live): pure functions over engine views.

No clock, no I/O: the caller passes engine views (objects with `EngineView`'s attributes) and applies
the returned decisions.
"""
from engines.policy.batching import BatchItem, pack_chunked, pack_whole
from engines.policy.de import (assign_de_paper, choose_de_least_loaded, choose_de_paper, choose_group,
                               group_z, plan_groups, z_threshold)
from engines.policy.pe import EngineView, choose_pe_least_loaded, choose_pe_paper, fetch_pe_paper
from engines.policy.read_side import read_side_pe_only, read_side_round_robin, read_side_shorter_queue
from engines.policy.systems import SYSTEMS, SystemPolicy, system_policy

__all__ = [
    "BatchItem", "EngineView", "SYSTEMS", "SystemPolicy", "assign_de_paper", "choose_de_least_loaded",
    "choose_de_paper", "choose_group", "choose_pe_least_loaded", "group_z", "plan_groups", "choose_pe_paper", "fetch_pe_paper",
    "pack_chunked", "pack_whole", "read_side_pe_only", "read_side_round_robin", "read_side_shorter_queue",
    "system_policy", "z_threshold",
]
