"""Agentic workloads: the trace contract, the synthetic generator, Mooncake import/export, statistics.

`traces` imports neither `engines` nor `harness` (DESIGN.md: data flows one way).
"""
from traces.errors import InputError
from traces.io import read_trace, write_trace
from traces.schema import Trace

__all__ = ["InputError", "Trace", "read_trace", "write_trace"]
