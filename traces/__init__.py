"""Agentic workloads: the trace contract, the synthetic generator, Mooncake import/export, statistics.

`traces` imports neither `engines` nor `harness` (DESIGN.md: data flows one way). Its names load on first
use (PEP 562), so `from traces.errors import InputError` does not import pandas and pyarrow: the live
cluster's parts start in a fraction of the time.
"""
from traces.errors import InputError

__all__ = ["InputError", "Trace", "read_trace", "write_trace"]


def __getattr__(name: str):
    if name in ("read_trace", "write_trace"):
        from traces import io
        return getattr(io, name)
    if name == "Trace":
        from traces.schema import Trace
        return Trace
    raise AttributeError(f"module 'traces' has no attribute {name!r}")
