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
        for name in ("turns_mean", "append_mean", "gen_mean"):  # every agent runs round 0; rounds hold >= 1 token
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if self.gen_mean > self.gen_max:
            raise InputError(f"must be at most gen_max {self.gen_max} (the per-round limit; --set gen_max=N), got "
                             f"{self.gen_mean}", field="gen_mean")
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
    first_scale: float = 1.0  # the task prompt's scale (the steady search moves it with the append scale)


def latent_meta(lat: Latent) -> dict:
    """The latent as the trace's metadata states it (first_scale only where it is not 1: older traces)."""
    out = asdict(lat)
    if out["first_scale"] == 1.0:
        del out["first_scale"]
    return out


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
    first = _lognormal(task_prompt_mean(p) * lat.first_scale, p.first_append_sigma,
                       _inv_cdf(np.clip(u_first, 1e-12, 1 - 1e-12)).astype(float))
    early = u_f < 1 - p.full_fraction
    frac = np.where(early, p.early_stop_min + (1 - p.early_stop_min) * u_f / max(1e-12, 1 - p.full_fraction), 1.0)
    return s, first, frac


def task_prompt_mean(p: SynthParams) -> float:
    """Round 0's mean append: `first_append_mean`, at most a quarter of an agent's appended tokens (turns x
    append / 4), and at least one round's append: so few-turn targets (3 turns of 64 tokens) stay reachable.
    The paper presets' 6,000 is below their cap (9,120 for paper-32k), so they draw exactly as before."""
    return min(p.first_append_mean, p.append_mean * max(1.0, p.turns_mean / 4))


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
    gen = _drawn(_lognormal(gen_scale, p.gen_sigma, _round_normals(p, rng, n, cap)), "generated tokens",
                 "gen_sigma", "gen_coupling")
    gen = np.clip(np.rint(gen), 1, p.gen_max).astype(np.int64)
    app = _drawn(s[:, None] * _lognormal(lat.append_scale, p.append_sigma, _round_normals(p, rng, n, cap)),
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


FEW_TURNS = 16  # below this mean, each round's draws are stratified across agents


def _round_normals(p: SynthParams, rng: np.random.Generator, n: int, cap: int) -> np.ndarray:
    """Standard normals for the rounds of n agents. Agents of few turns average few draws, so their means over
    a few hundred agents would vary by more than 5 % between seeds: below FEW_TURNS mean turns, every round's
    draws are stratified across the agents (each column a random permutation of the n strata), as the
    agents' own latents are. Longer agents (the paper presets) draw independently, as they always have."""
    if p.turns_mean >= FEW_TURNS:
        return rng.standard_normal((n, cap))
    u = (np.argsort(rng.random((n, cap)), axis=0) + rng.random((n, cap))) / n
    return _inv_cdf(np.clip(u, 1e-12, 1 - 1e-12)).astype(float)


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
    turns); x < 0 keeps no spread and lets agents fill only e^x of their context (few-turn targets).
    Targets this misses (means of a token or two, where rounding and the floor of 1 flatten the response,
    or agents that fill a tiny share of a long context) get a second, steadier search: secant steps on
    every scale and longer steps in x. The paper presets converge in the first, so their bytes are those
    of the first search."""
    key = tuple(sorted(p.as_dict().items()))
    if key in _SOLVED:
        return _SOLVED[key]
    _check_reachable(p)
    lat, m = _search(p, tol, max_iter, steady=False)
    if lat is None:
        lat, m = _search(p, STEADY_TOL, 4 * max_iter, steady=True)
    if lat is None:
        raise out_of_reach(p, m)
    _SOLVED[key] = lat
    return lat


def _search(p: SynthParams, tol: float, max_iter: int, steady: bool) -> tuple[Latent | None, dict]:
    """One search for the latent scales: (the solution or None, the pilot means where it stopped). The
    steady search bisects x once turns are bracketed (turns move in steps where rounds are a few tokens)
    and steps every scale by its secant."""
    a_scale, g_scale, x = p.append_mean * 0.8, p.gen_mean, 1.0
    a_start = a_scale
    prev: tuple[float, float] | None = None  # (x, log turns) of the previous step
    prev_scales: tuple[float, float, float, float] | None = None  # log (a scale, append, g scale, gen)
    low = high = None  # steady: the largest x with too few turns, the smallest with too many
    m: dict = {}
    for _ in range(max_iter):
        lat = _latent(a_scale, g_scale, x, a_scale / a_start if steady else 1.0)
        m = _pilot_means(p, lat)
        ra = p.append_mean / m["append_mean"]
        rg = p.gen_mean / m["gen_mean"]
        rn = p.turns_mean / m["turns_mean"]
        if max(abs(ra - 1), abs(rg - 1), abs(rn - 1)) <= tol:
            return lat, m
        log_turns = math.log(m["turns_mean"])
        step = 0.7 * math.log(rn) * max(abs(x), 0.3)  # first step: proportional
        if prev is not None and abs(x - prev[0]) > 1e-9 and abs(log_turns - prev[1]) > 1e-9:
            slope = (log_turns - prev[1]) / (x - prev[0])
            if slope > 0:
                step = math.log(rn) / slope
        if steady:
            step = max(-3.0, min(3.0, step))  # the fill share spans decades: longer steps
            if abs(rn - 1) > tol:
                if rn > 1:
                    low = x if low is None else max(low, x)
                else:
                    high = x if high is None else min(high, x)
            if low is not None and high is not None:
                if low >= high or high - low < 1e-9:  # the scales moved under the bracket: start again
                    low = high = None
                else:
                    step = (low + high) / 2 - x
        else:
            step = max(-0.5, min(0.5, step))
        new_x = min(SIGMA_MAX, max(X_MIN, x + step))
        if (new_x == x == SIGMA_MAX and rn > 1 + tol) or (new_x == x == X_MIN and rn < 1 - tol):
            break  # the knob is at its bound and turns still miss: out of reach
        prev = (x, log_turns)
        if steady:
            now = (math.log(a_scale), math.log(m["append_mean"]), math.log(g_scale), math.log(m["gen_mean"]))
            ra = _secant_ratio(ra, now[0:2], prev_scales[0:2] if prev_scales else None)
            rg = _secant_ratio(rg, now[2:4], prev_scales[2:4] if prev_scales else None)
            prev_scales = now
        a_scale, g_scale, x = a_scale * ra, g_scale * rg, new_x
    return None, m


def _secant_ratio(ratio: float, now: tuple[float, float], before: tuple[float, float] | None) -> float:
    """The factor for a scale whose mean is `ratio` off its target: divided by the mean's elasticity to
    the scale, measured on the last step (a mean floored at one token barely moves with its scale)."""
    if before is None or abs(now[0] - before[0]) < 1e-12:
        return ratio
    elasticity = (now[1] - before[1]) / (now[0] - before[0])
    if not elasticity > 0:
        return ratio
    step = math.log(ratio) / min(1.0, max(0.05, elasticity))
    return math.exp(max(-2.0, min(2.0, step)))


def out_of_reach(p: SynthParams, m: dict) -> InputError:
    """The refusal of targets the search missed: why, and the largest turns (or the smallest context) that
    fit an agent of the mean turns and round sizes."""
    need = p.turns_mean * (p.append_mean + p.gen_mean)
    fit_turns = max(1, math.floor(p.max_context / (p.append_mean + p.gen_mean)))
    closest = (f"closest: turns {m['turns_mean']:.1f}, append {m['append_mean']:.1f}, gen {m['gen_mean']:.1f}"
               if m else "")
    return InputError(
        f"{p.turns_mean:g} turns of {p.append_mean:g} appended + {p.gen_mean:g} generated tokens "
        f"({need:,.0f} tokens for the mean agent) are out of reach in max_context {p.max_context:,} "
        f"({closest}); turns_mean at most {fit_turns:,} fits, or max_context at least {math.ceil(need):,}",
        field="turns_mean")


def _latent(append_scale: float, gen_scale: float, x: float, first_scale: float = 1.0) -> Latent:
    return Latent(append_scale, gen_scale, max(0.0, x), math.exp(min(0.0, x)), first_scale)


SIGMA_MAX = 4.0
STEADY_TOL = 0.01  # the second search's tolerance: the presets' 5 % band with room for seeds
X_MIN = math.log(1e-9)  # agents may fill as little as this share of their context (single-turn targets)
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
    check_agents(p, agents)
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
        "params": {**p.as_dict(), "latent": latent_meta(lat)},
    }
    table = pa.table(
        [pa.array(np.concatenate(ids), type=pa.string()), pa.array(np.concatenate(rnd)),
         pa.array(np.concatenate(app_out)), pa.array(np.concatenate(gen_out)),
         pa.array(np.concatenate(lat_out), type=pa.float64())],
        schema=arrow_schema(cols, meta))
    return Trace(table, meta)


MAX_AGENTS = 10_000_000
MAX_ROUNDS = 100_000_000  # ~4 GB of rows in memory before they are written


def check_agents(p: SynthParams, agents: int, field: str = "agents") -> None:
    """Refuse, before drawing anything, a trace too large to hold: more than MAX_AGENTS agents, or more
    than MAX_ROUNDS rounds expected (agents x turns_mean)."""
    if isinstance(agents, bool) or not isinstance(agents, (int, np.integer)):
        raise InputError(f"expected a whole number, got {agents!r}", field=field)
    if agents < 1:
        raise InputError(f"must be >= 1, got {agents}", field=field)
    if agents > MAX_AGENTS:
        raise InputError(f"{agents:,} agents is above the bound of {MAX_AGENTS:,}", field=field)
    rounds = agents * p.turns_mean
    if rounds > MAX_ROUNDS:
        most = int(MAX_ROUNDS // p.turns_mean)
        raise InputError(f"{agents:,} agents of {p.turns_mean:g} turns are ~{rounds:,.0f} rounds, above the bound "
                         f"of {MAX_ROUNDS:,} (at most {most:,} agents for these targets)", field=field)


def params_with(base: SynthParams, **overrides) -> SynthParams:
    """`base` with the given (non-None) fields replaced."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(clean) - set(SynthParams.names())
    if unknown:
        raise InputError(f"unknown generator parameter(s) {sorted(unknown)} (allowed: {', '.join(SynthParams.names())})")
    return replace(base, **clean)
