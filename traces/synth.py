"""Synthetic agentic trajectories (the paper's workloads, reference/paper.md §5).

The model, per agent:
- an append intensity `s` (lognormal across agents, mean 1): agents whose tool outputs are large fill
  their context fast and so run fewer turns; this is what makes per-agent append and turns
  negatively correlated, as Table 2 requires (mean of turns x per-round size is far below the
  product of the means);
- round 0 appends the task prompt (`first_append_mean`, lognormal); every later round appends
  `s x lognormal(append)` tokens and generates `s^gen_coupling x lognormal(gen)` tokens (at most
  `gen_max`, the rollout's per-turn limit); a round's prompt is the whole context so far plus its
  append. `gen_coupling` (default 0: generation independent of the agent) makes agents that run many
  short rounds also generate less per round, which lowers the per-request mean generation below
  Table 2's per-agent mean (README, "Trace generator", on the paper's Fig. 11);
- a token budget: `full_fraction` of the agents run until their context is full (the preset's maximum
  context length, MAL); the others stop earlier, at a uniformly drawn fraction (from
  `early_stop_min`) of the context left after round 0 (tasks solved or abandoned early);
- a turn limit (`turns_max_ratio` x `turns_mean`), the RL rollout's turn cap, which bounds the tail.

The three targets `turns_mean`, `append_mean` and `gen_mean` are realised means (Table 2
definitions, traces/stats.py); the generator solves for the latent append scale, gen scale and
intensity spread that produce them on a fixed pilot population, so a flag like `--append-mean 600`
means what `trace stats` will show. The shape parameters are shared by the three paper presets and
were fitted once to Table 2's total and context means (traces/presets.py).

Agent-level draws are stratified (each latent's uniforms are a random permutation of the N strata),
so the means of a 500-agent trace stay within a few percent of the population's for any seed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from statistics import NormalDist

import numpy as np
import pyarrow as pa

from traces.errors import InputError
from traces.io import finite_number
from traces.schema import DEFAULT_BLOCK_SIZE, MAX_TOKENS, Trace, arrow_schema
from traces.stats import table2_means

PILOT_AGENTS = 2000
PILOT_SEED = 20260225  # the paper's v1 date; any fixed value works
# Rounds are drawn as (agents x turn limit) matrices. These bound one matrix, so time and memory: the pilot
# has fewer agents when the turn limit is above 1,048 (never for the paper presets, whose limit is <= 251),
# and a trace is drawn in chunks of at most 4,096 agents, fewer above a turn limit of 1,024.
PILOT_CELLS = 2**21
MIN_PILOT_AGENTS = 100
CHUNK_AGENTS = 4096
CHUNK_CELLS = 2**22
_inv_cdf = np.frompyfunc(NormalDist().inv_cdf, 1, 1)


INT_FIELDS = ("max_context", "block_size", "gen_max")  # the others are floats


@dataclass(frozen=True)
class SynthParams:
    """Every knob of the generator. Targets first, then the shape (see module docstring)."""

    max_context: int
    turns_mean: float
    append_mean: float
    gen_mean: float
    tool_latency_mean: float = 0.0
    block_size: int = DEFAULT_BLOCK_SIZE
    first_append_mean: float = 6000.0
    first_append_sigma: float = 0.3
    full_fraction: float = 0.76
    early_stop_min: float = 0.1
    append_sigma: float = 0.35
    gen_sigma: float = 0.5
    gen_coupling: float = 0.0
    gen_max: int = 8192
    intensity_tail_z: float = 2.0
    turns_max_ratio: float = 1.6
    tool_latency_sigma: float = 1.0

    def __post_init__(self):
        """Whole-number floats for the integer fields (1e5 for max_context) become integers; validate()
        refuses other floats there."""
        for name in INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(self, name, int(value))

    def validate(self) -> "SynthParams":
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in INT_FIELDS:
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise InputError(f"expected a whole number, got {value!r}", field=f.name)
                if value > MAX_TOKENS:
                    raise InputError(f"must be at most 2^40, got {value}", field=f.name)
            elif not finite_number(value):
                raise InputError(f"expected a finite number, got {value!r}", field=f.name)
        positive = ("max_context", "turns_mean", "append_mean", "gen_mean", "block_size", "gen_max",
                    "first_append_mean", "intensity_tail_z", "turns_max_ratio")
        for name in positive:
            if not getattr(self, name) > 0:
                raise InputError(f"must be > 0, got {getattr(self, name)}", field=name)
        for name in ("tool_latency_mean", "first_append_sigma", "append_sigma", "gen_sigma", "gen_coupling",
                     "tool_latency_sigma"):
            if not getattr(self, name) >= 0:
                raise InputError(f"must be >= 0, got {getattr(self, name)}", field=name)
        for name in ("full_fraction", "early_stop_min"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"must be in [0, 1], got {getattr(self, name)}", field=name)
        if self.turns_max_ratio < 1:
            raise InputError(f"must be >= 1, got {self.turns_max_ratio}", field="turns_max_ratio")
        if self.append_mean + self.gen_mean >= self.max_context:
            raise InputError("append_mean + gen_mean must be below max_context", field="max_context")
        if not math.isfinite(self.turns_max_ratio * self.turns_mean) or self.turns_max > MAX_TURNS_CAP:
            limit = self.turns_max_ratio * self.turns_mean
            raise InputError(f"turn limit {limit:.0f} (turns_max_ratio x turns_mean) is above {MAX_TURNS_CAP}",
                             field="turns_mean")
        return self

    @property
    def turns_max(self) -> int:
        return max(1, int(round(self.turns_max_ratio * self.turns_mean)))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class Latent:
    """What the solver finds: the pre-truncation scales that realise the targets."""

    append_scale: float
    gen_scale: float
    intensity_sigma: float
    fill_scale: float = 1.0   # share of the context agents may fill (below 1 only for few-turn targets)


# ----- sampling -----------------------------------------------------------------------------------
def _lognormal(mean: float, sigma: float, z):
    """Lognormal with the given *mean* from standard normal draws z (inf where it overflows: see _drawn)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return np.exp(np.log(mean) - 0.5 * sigma * sigma + sigma * z)


def _strata(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.permutation(n) + rng.random(n)) / n


def _agent_latents(p: SynthParams, lat: Latent, n: int, rng: np.random.Generator):
    """Stratified per-agent intensity, token budget and first append."""
    u_s, u_f, u_first = _strata(rng, n), _strata(rng, n), _strata(rng, n)
    z_lo = NormalDist().cdf(-p.intensity_tail_z)
    z = _inv_cdf(z_lo + u_s * (1 - 2 * z_lo)).astype(float)
    s = np.exp(lat.intensity_sigma * z)
    s /= s.mean()
    first = _lognormal(p.first_append_mean, p.first_append_sigma,
                       _inv_cdf(np.clip(u_first, 1e-12, 1 - 1e-12)).astype(float))
    early = u_f < 1 - p.full_fraction
    frac = np.where(early, p.early_stop_min + (1 - p.early_stop_min) * u_f / max(1e-12, 1 - p.full_fraction), 1.0)
    return s, first, frac


def _drawn(values: np.ndarray, what: str, *params: str) -> np.ndarray:
    """Draws must be finite numbers; parameters far out of range overflow (lognormal: e^(sigma^2))."""
    if not np.isfinite(values).all():
        raise InputError(f"the generator's draws of {what} overflow: lower {' or '.join(params)}")
    return values


def _sample_chunk(p: SynthParams, lat: Latent, s, first, frac, rng: np.random.Generator):
    """Rounds of a chunk of agents: (turns, append matrix, gen matrix), matrices cut at `turns`."""
    n, cap = len(s), p.turns_max
    with np.errstate(over="ignore"):
        gen_scale = lat.gen_scale * s[:, None] ** p.gen_coupling if p.gen_coupling else lat.gen_scale
    gen = _drawn(_lognormal(gen_scale, p.gen_sigma, rng.standard_normal((n, cap))), "generated tokens",
                 "gen_sigma", "gen_coupling")
    gen = np.clip(np.rint(gen), 1, p.gen_max).astype(np.int64)
    app = _drawn(s[:, None] * _lognormal(lat.append_scale, p.append_sigma, rng.standard_normal((n, cap))),
                 "appended tokens", "append_sigma")
    # a round above max_context always ends its agent before it, so the cut changes nothing but the dtype's range
    app = np.maximum(1, np.minimum(np.rint(app), p.max_context + 1)).astype(np.int64)
    first = _drawn(first, "task prompts", "first_append_mean", "first_append_sigma")
    app[:, 0] = np.clip(np.rint(first), 1, np.maximum(1, p.max_context - gen[:, 0]))
    budget = app[:, 0] + gen[:, 0] + frac * lat.fill_scale * (p.max_context - app[:, 0] - gen[:, 0])
    context_after = np.cumsum(app + gen, axis=1)
    over = context_after > budget[:, None] + 1e-9
    over[:, 0] = False  # round 0 always runs
    turns = np.where(over.any(axis=1), over.argmax(axis=1), cap)
    return turns, app, gen


def _flatten(turns, mat):
    keep = np.arange(mat.shape[1])[None, :] < turns[:, None]
    return mat[keep]


def pilot_agents(p: SynthParams) -> int:
    """Agents of the solver's pilot: 2,000, fewer for long turn limits (PILOT_CELLS)."""
    return max(MIN_PILOT_AGENTS, min(PILOT_AGENTS, PILOT_CELLS // p.turns_max))


def _pilot_means(p: SynthParams, lat: Latent) -> dict:
    rng = np.random.default_rng(PILOT_SEED)
    n = pilot_agents(p)
    s, first, frac = _agent_latents(p, lat, n, rng)
    turns, app, gen = _sample_chunk(p, lat, s, first, frac, rng)
    agent = np.repeat(np.arange(n), turns)
    return table2_means(agent, _flatten(turns, app), _flatten(turns, gen))


# ----- solving for the latent scales --------------------------------------------------------------
_SOLVED: dict[tuple, Latent] = {}


def solve_latent(p: SynthParams, *, tol: float = 0.002, max_iter: int = 60) -> Latent:
    """Find the latent scales whose pilot population realises the three targets (memoised).

    Append and gen scales follow their targets multiplicatively. Turns follow one knob x, by a secant on
    log(turns): x >= 0 is the intensity spread (more spread, more agents with small rounds and many
    turns); x < 0 keeps no spread and lets agents fill only e^x of their context (few-turn targets)."""
    key = tuple(sorted(p.as_dict().items()))
    if key in _SOLVED:
        return _SOLVED[key]
    _check_reachable(p)
    a_scale, g_scale, x = p.append_mean * 0.8, p.gen_mean, 1.0
    prev: tuple[float, float] | None = None  # (x, log turns) of the previous step
    for _ in range(max_iter):
        lat = _latent(a_scale, g_scale, x)
        m = _pilot_means(p, lat)
        ra = p.append_mean / m["append_mean"]
        rg = p.gen_mean / m["gen_mean"]
        rn = p.turns_mean / m["turns_mean"]
        if max(abs(ra - 1), abs(rg - 1), abs(rn - 1)) <= tol:
            _SOLVED[key] = lat
            return lat
        log_turns = math.log(m["turns_mean"])
        step = 0.7 * math.log(rn) * max(abs(x), 0.3)  # first step: proportional
        if prev is not None and abs(x - prev[0]) > 1e-9 and abs(log_turns - prev[1]) > 1e-9:
            slope = (log_turns - prev[1]) / (x - prev[0])
            if slope > 0:
                step = math.log(rn) / slope
        step = max(-0.5, min(0.5, step))
        new_x = min(SIGMA_MAX, max(X_MIN, x + step))
        if (new_x == x == SIGMA_MAX and rn > 1 + tol) or (new_x == x == X_MIN and rn < 1 - tol):
            break  # the knob is at its bound and turns still miss: out of reach
        prev = (x, log_turns)
        a_scale, g_scale, x = a_scale * ra, g_scale * rg, new_x
    m = _pilot_means(p, _latent(a_scale, g_scale, x))
    raise InputError(
        f"these targets are out of reach of the generator (closest: turns {m['turns_mean']:.0f}, append "
        f"{m['append_mean']:.0f}, gen {m['gen_mean']:.0f} for max_context {p.max_context}); "
        "fewer turns, shorter rounds or a longer max_context fit together", field="turns_mean")


def _latent(append_scale: float, gen_scale: float, x: float) -> Latent:
    return Latent(append_scale, gen_scale, max(0.0, x), math.exp(min(0.0, x)))


SIGMA_MAX = 4.0
X_MIN = math.log(0.02)
MAX_TURNS_CAP = 20_000


def _check_reachable(p: SynthParams) -> None:
    """Cheap refusals before any pilot run: targets no agent population could realise."""
    # Total tokens of an agent stay within max_context, and each round generates gen tokens on average,
    # so the mean number of turns cannot exceed ~max_context / gen (lognormal gens: a factor e^sigma^2).
    bound = p.max_context / p.gen_mean * math.exp(min(p.gen_sigma, 20.0) ** 2)  # sigma 20: no bound at all
    if p.turns_mean > bound:
        raise InputError(f"{p.turns_mean:g} turns of {p.gen_mean:g} generated tokens each cannot fit in "
                         f"max_context {p.max_context} (at most ~{bound:.0f} turns)", field="turns_mean")


# ----- the generator ------------------------------------------------------------------------------
def synthesize(p: SynthParams, agents: int, seed: int, *, source: str = "synth", progress=None) -> Trace:
    """Generate `agents` trajectories; the same parameters and seed give the same trace, bit for bit."""
    p.validate()
    if agents < 1:
        raise InputError(f"must be >= 1, got {agents}", field="agents")
    if seed < 0:
        raise InputError(f"must be >= 0, got {seed}", field="seed")
    lat = solve_latent(p)
    rng = np.random.default_rng(seed)
    s, first, frac = _agent_latents(p, lat, agents, rng)
    width = max(5, len(str(agents - 1)))
    ids, rnd, app_out, gen_out, lat_out = [], [], [], [], []
    chunk = max(1, min(CHUNK_AGENTS, CHUNK_CELLS // p.turns_max))
    for lo in range(0, agents, chunk):
        hi = min(agents, lo + chunk)
        turns, app, gen = _sample_chunk(p, lat, s[lo:hi], first[lo:hi], frac[lo:hi], rng)
        n_rows = int(turns.sum())
        if p.tool_latency_mean > 0:
            tool = _drawn(_lognormal(p.tool_latency_mean, p.tool_latency_sigma,
                                     rng.standard_normal((hi - lo, p.turns_max))),
                          "tool latencies", "tool_latency_mean", "tool_latency_sigma")
            tool[:, 0] = 0.0
            lat_out.append(_flatten(turns, tool))
        else:
            lat_out.append(np.zeros(n_rows))
        names = np.array([f"a{i:0{width}d}" for i in range(lo, hi)], dtype=object)
        ids.append(np.repeat(names, turns))
        starts = np.concatenate(([0], np.cumsum(turns)[:-1]))
        rnd.append(np.arange(n_rows) - np.repeat(starts, turns))
        app_out.append(_flatten(turns, app))
        gen_out.append(_flatten(turns, gen))
        if progress is not None:
            progress(hi - lo)
    cols = ["agent_id", "round", "append_tokens", "gen_tokens", "tool_latency_s"]
    meta = {
        "block_size": p.block_size,
        "source": source,
        "generator": "dualpath-bench traces.synth v1",
        "seed": seed,
        "agents": "known",
        "params": {**p.as_dict(), "latent": asdict(lat)},
    }
    table = pa.table(
        [pa.array(np.concatenate(ids), type=pa.string()), pa.array(np.concatenate(rnd)),
         pa.array(np.concatenate(app_out)), pa.array(np.concatenate(gen_out)),
         pa.array(np.concatenate(lat_out), type=pa.float64())],
        schema=arrow_schema(cols, meta))
    return Trace(table, meta)


def params_with(base: SynthParams, **overrides) -> SynthParams:
    """`base` with the given (non-None) fields replaced."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(clean) - set(SynthParams.names())
    if unknown:
        raise InputError(f"unknown generator parameter(s) {sorted(unknown)} (allowed: {', '.join(SynthParams.names())})")
    return replace(base, **clean)
