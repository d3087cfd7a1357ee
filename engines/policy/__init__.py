"""Scheduling decisions shared by both runtimes (sim and live): pure code over engine views.

No clock, no I/O: the caller passes engine views (objects with `EngineView`'s attributes), asks the
`Dispatcher` for decisions and applies them; intra-PE batching packs a PE's ready requests.
"""
from engines.policy.batching import BatchItem, pack_chunked, pack_whole
from engines.policy.de import choose_de_paper
from engines.policy.dispatch import Decision, Dispatcher
from engines.policy.pe import EngineView
from engines.policy.systems import SYSTEMS, SystemPolicy, system_policy

__all__ = ["BatchItem", "Decision", "Dispatcher", "EngineView", "SYSTEMS", "SystemPolicy", "choose_de_paper",
           "pack_chunked", "pack_whole", "system_policy"]
