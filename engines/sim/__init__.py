"""Runtime 1: a deterministic discrete-event simulation of a PD-disaggregated cluster (virtual time)."""
from engines.sim.records import MemorySink, NullSink
from engines.sim.run import check_fits, simulate

__all__ = ["MemorySink", "NullSink", "check_fits", "simulate"]
