"""Bootstrap confidence intervals of a candidate/baseline ratio, for results that vary run to run.

Each side is a list of repeats (the runs of one system, `dualpath run --repeats N`). Two kinds of metric:

- per-request statistics (a latency's mean or percentile): each repeat is a histogram of its requests'
  values (bucket values and counts, `metrics.histogram_buckets`). A bootstrap sample draws the repeats
  with replacement and then, within each drawn repeat, its requests with replacement (a multinomial over
  its buckets), and computes the statistic over the pooled draw: so the interval holds both the
  run-to-run noise and the request-to-request noise of each run;
- per-run numbers (makespan JCT, throughput): each repeat is one value; a sample draws the repeats with
  replacement and takes their mean.

The two sides are drawn independently and the interval is the percentile interval of the ratio of their
statistics. The generator is seeded, so the same inputs give the same interval.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SAMPLES = 2000
LEVEL = 0.95


def statistic(name: str):
    """`mean` or `pNN` (`p99`, `p99.9`) over a matrix of bucket counts (samples x buckets) and the values."""
    if name == "mean":
        return lambda counts, values: (counts @ values) / np.maximum(counts.sum(axis=1), 1)
    if not (name.startswith("p") and _is_number(name[1:])):
        raise ValueError(f"unknown statistic {name!r}")
    p = float(name[1:])

    def percentile(counts, values):
        n = counts.sum(axis=1)
        target = np.maximum(1, np.floor(p * n / 100 + 0.5))  # the rank HdrHistogram reports (metrics)
        index = (np.cumsum(counts, axis=1) >= target[:, None]).argmax(axis=1)
        return values[index]
    return percentile


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def ratio_interval_requests(base: Sequence[tuple[np.ndarray, np.ndarray]],
                            cand: Sequence[tuple[np.ndarray, np.ndarray]], stat: str, *, seed: int,
                            samples: int = SAMPLES, level: float = LEVEL) -> tuple[float, float]:
    """Interval of stat(candidate)/stat(baseline) for a per-request statistic; each repeat is
    (bucket values, counts)."""
    values = np.unique(np.concatenate([v for v, _ in [*base, *cand]] or [np.zeros(0)]))
    fn = statistic(stat)
    rng = np.random.default_rng(seed)

    def draw(repeats) -> np.ndarray:
        pooled = np.zeros((samples, len(values)), dtype=np.int64)
        chosen = rng.integers(0, len(repeats), size=(samples, len(repeats)))
        for r, (v, c) in enumerate(repeats):
            n = int(c.sum())
            rows = np.flatnonzero((chosen == r).any(axis=1))
            times = (chosen[rows] == r).sum(axis=1)
            if n == 0 or len(rows) == 0:
                continue
            columns = np.searchsorted(values, v)
            for k in range(1, int(times.max()) + 1):  # a repeat drawn k times adds k independent resamples
                at = rows[times >= k]
                pooled[np.ix_(at, columns)] += rng.multinomial(n, c / n, size=len(at))
        return fn(pooled, values)

    b, c = draw(base), draw(cand)
    return _percentile_interval(c, b, level)


def ratio_interval_runs(base: Sequence[float], cand: Sequence[float], *, seed: int, samples: int = SAMPLES,
                        level: float = LEVEL) -> tuple[float, float]:
    """Interval of mean(candidate)/mean(baseline) for a per-run number, the runs resampled."""
    rng = np.random.default_rng(seed)

    def draw(runs) -> np.ndarray:
        runs = np.asarray(runs, dtype=np.float64)
        return runs[rng.integers(0, len(runs), size=(samples, len(runs)))].mean(axis=1)

    b, c = draw(base), draw(cand)
    return _percentile_interval(c, b, level)


def _percentile_interval(cand: np.ndarray, base: np.ndarray, level: float) -> tuple[float, float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(base == 0, np.where(cand == 0, 1.0, np.inf), cand / base)
    tail = (1 - level) / 2
    lo, hi = np.quantile(ratio, [tail, 1 - tail])
    return float(lo), float(hi)
