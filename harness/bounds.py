"""The paper's bottleneck-free P/D range (reference/paper.md 2, eq. 9) for a hardware profile, in exact
fractions.

Notation: g GPUs per node, one CNIC of line rate B per GPU, s = snic_count x snic_gbps / cnic_gbps (a
node's storage bandwidth in CNICs), M = DRAM bandwidth per node, P and D prefill and decode nodes. With
DualPath's reads spread evenly over every node's SNIC at line rate, each link's load as a share of its
capacity is:

| constraint    | load                    | bound                    |
|---------------|-------------------------|--------------------------|
| PE CNIC read  | 2s/g                    | s <= g/2 (any P/D)       |
| PE CNIC write | (s/g)(1 + D/P)          | P/D >= s/(g - s)         |
| DE CNIC read  | (s/g)(P/D + 2)          | P/D <= (g - 2s)/s        |
| DE CNIC write | (s/g)(2 P/D + 1)        | P/D <= (g - s)/(2s)      |
| PE DRAM       | 2sB/M                   | 2sB <= M (any P/D)       |
| DE DRAM       | (3 + 2 P/D) sB/M        | P/D <= (M/(sB) - 3)/2    |

Line rates, no efficiencies (the paper's analysis). The range is sufficient, not necessary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from engines.costmodel import HardwareSpec
from traces.errors import InputError

PE_CNIC_READ, PE_CNIC_WRITE = "PE CNIC read", "PE CNIC write"
DE_CNIC_READ, DE_CNIC_WRITE = "DE CNIC read", "DE CNIC write"
PE_DRAM, DE_DRAM = "PE DRAM", "DE DRAM"
PAPER_64K_SHAPE = (32_721, 429)   # Table 2, paper-64k: mean context and append (reference/paper.md 5)


def exact(x: float | int) -> Fraction:
    """A profile number as the decimal it was written as (500.0e9 -> 500000000000, 0.1 -> 1/10)."""
    if isinstance(x, int):
        return Fraction(x)
    return Fraction(repr(float(x)))


@dataclass(frozen=True)
class Constraint:
    name: str
    kind: str                 # "lower" (P/D >=), "upper" (P/D <=) or "any" (a condition on the hardware alone)
    bound: Fraction | None    # the P/D bound; None for kind "any"
    formula: str
    holds: bool = True        # kind "any": whether the hardware meets it


@dataclass(frozen=True)
class PdBounds:
    hardware: str
    g: int
    cnic_bytes_s: Fraction    # B
    s: Fraction
    dram_bytes_s: Fraction    # M
    constraints: tuple[Constraint, ...]
    lower: Fraction           # 0 when nothing bounds below
    upper: Fraction | None    # None: unbounded
    lower_binds: tuple[str, ...] = field(default=())
    upper_binds: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        broken = any(c.kind == "any" and not c.holds for c in self.constraints)
        return broken or (self.upper is not None and self.upper < self.lower)

    def loads(self, p: int, d: int) -> dict[str, Fraction]:
        """Each link's load at P prefill and D decode nodes as a share of its line rate (1 = full), with
        every node's SNIC reading at line rate and reads split evenly (DualPath, eq. 9's assumptions)."""
        sb = self.s * self.cnic_bytes_s
        return link_loads(p, d, self.g, sb, sb, self.cnic_bytes_s, self.dram_bytes_s)

    def verdict(self, p: int, d: int) -> dict:
        """Whether P:D lies inside, and by what margin: the ratio to each end (> 1 inside)."""
        r = Fraction(p, d)
        above = None if self.lower == 0 else r / self.lower          # x the lower bound
        below = None if self.upper is None else (self.upper / r if r else None)  # the upper bound is x r
        inside = not self.empty and r >= self.lower and (self.upper is None or r <= self.upper)
        loads = self.loads(p, d)
        over = [name for name, load in loads.items() if load > 1]
        return {"pd": f"{p}:{d}", "ratio": r, "inside": inside, "times_above_lower": above,
                "upper_times_ratio": below, "distance_to_lower": r - self.lower,
                "distance_to_upper": None if self.upper is None else self.upper - r,
                "loads": loads, "over_line_rate": over,
                "busiest": max(loads, key=lambda k: loads[k]) if loads else None}


def link_loads(p: int, d: int, g: int, pe_read, de_read, cnic_bytes_s, dram_bytes_s) -> dict:
    """Eq. 9's per-link traffic for any read rates: `pe_read` and `de_read` bytes/s read from storage by
    each prefill and each decode node (PE and DE read paths), as shares of a CNIC's rate (CNICs, per
    GPU) and of M (DRAM, per node, read + write). PE read path: hops 3 and 5 read the PE CNIC, 4 writes
    it; 7 and 9 write the DE CNIC, 8 reads it; the DE DRAM takes 7 and 8. DE read path: hop 5 writes the
    PE CNIC; 3 and 6 read the DE CNIC, 7 writes it; the DE DRAM takes 2, 3 and 6 (reference/paper.md 2).
    Miss-token KV (about 1 % of hit KV at the paper's hit rates) is left out, as in the paper."""
    pe_total, de_total = p * pe_read, d * de_read
    out = {PE_CNIC_READ: 2 * pe_read / g / cnic_bytes_s,
           PE_CNIC_WRITE: (pe_total + de_total) / (p * g) / cnic_bytes_s,
           DE_CNIC_READ: (pe_total + 2 * de_total) / (d * g) / cnic_bytes_s,
           DE_CNIC_WRITE: (2 * pe_total + de_total) / (d * g) / cnic_bytes_s}
    if dram_bytes_s:
        out[PE_DRAM] = 2 * pe_read / dram_bytes_s
        out[DE_DRAM] = (2 * pe_total + 3 * de_total) / d / dram_bytes_s
    return out


def pd_bounds(hw: HardwareSpec, cnic_efficiency: float = 1, snic_efficiency: float = 1) -> PdBounds:
    """Eq. 9 at line rates, or (efficiencies < 1) at the rates a link achieves, as the simulator's
    `cnic_efficiency` and `snic_efficiency` have it (DRAM stays at M)."""
    g = hw.gpus_per_node
    cnic = exact(hw.cnic_gbps) * exact(cnic_efficiency)
    if g <= 0 or cnic <= 0:
        raise InputError(f"{hw.name}: eq. 9 needs gpus_per_node > 0 and cnic_gbps > 0",
                         field="gpus_per_node" if g <= 0 else "cnic_gbps")
    b = cnic * 10**9 / 8
    s = hw.snic_count * exact(hw.snic_gbps) * exact(snic_efficiency) / cnic
    m = exact(hw.dram_bw_bytes_s)
    cons: list[Constraint] = [Constraint(PE_CNIC_READ, "any", None, "2s/g <= 1", holds=2 * s <= g)]
    if s == 0:  # no storage bandwidth: no read traffic, nothing bounds P/D
        return PdBounds(hw.name, g, b, s, m, tuple(cons), Fraction(0), None)
    cons.append(Constraint(PE_CNIC_WRITE, "lower", s / (g - s) if g > s else None, "P/D >= s/(g-s)", holds=g > s))
    cons.append(Constraint(DE_CNIC_READ, "upper", (g - 2 * s) / s, "P/D <= (g-2s)/s"))
    cons.append(Constraint(DE_CNIC_WRITE, "upper", (g - s) / (2 * s), "P/D <= (g-s)/(2s)"))
    if m > 0:
        cons.append(Constraint(PE_DRAM, "any", None, "2sB <= M", holds=2 * s * b <= m))
        cons.append(Constraint(DE_DRAM, "upper", (m / (b * s) - 3) / 2, "P/D <= (M/(sB)-3)/2"))
    else:
        cons.append(Constraint(DE_DRAM, "any", None, "M > 0", holds=False))
    # a condition that fails empties the range; a lower bound that cannot hold (g <= s) too
    cons = [c if c.kind != "lower" or c.bound is not None else Constraint(c.name, "any", None, "s < g", holds=False)
            for c in cons]
    lowers = [c for c in cons if c.kind == "lower"]
    uppers = [c for c in cons if c.kind == "upper"]
    lower = max((c.bound for c in lowers), default=Fraction(0))
    upper = min((c.bound for c in uppers), default=None)
    return PdBounds(hw.name, g, b, s, m, tuple(cons), lower, upper,
                    tuple(c.name for c in lowers if c.bound == lower),
                    tuple(c.name for c in uppers if c.bound == upper))


def parse_pd(text: str) -> tuple[int, int]:
    """`2:4`, `2P4D` or `2p4d` -> (2, 4)."""
    t = text.strip().lower().replace("p", ":").replace("d", "")
    parts = [x for x in t.split(":") if x != ""]
    try:
        p, d = (int(x) for x in parts)
    except ValueError:
        raise InputError(f"expected P:D (e.g. 2:4 or 2P4D) with whole numbers, got {text!r}", field="--pd") from None
    if p <= 0 or d <= 0:
        raise InputError(f"prefill and decode nodes must be >= 1, got {text!r}", field="--pd")
    return p, d


def storage_compute_balance(hw: HardwareSpec, model_name: str, shape: tuple[int, int] = PAPER_64K_SHAPE) -> dict:
    """With a model: the prompt tokens per second a node's storage can feed at line rate vs what one
    prefill node computes on requests of `shape` (cached, appended tokens), and the P/D at which
    DualPath's storage ((P + D) sB) meets the prefill compute (P g c): below it storage binds. None when
    compute binds at any P/D (one node's storage alone outruns its prefill)."""
    from engines.costmodel import CostModel, SimConstants, model_spec

    model = model_spec(model_name)
    cost = CostModel(model, hw, SimConstants(), prefill_ep=hw.gpus_per_node, decode_ep=hw.gpus_per_node)
    cached, new = shape
    storage_tps = hw.snic_bytes_s / model.kv_bytes_per_token * (cached + new) / cached  # hit bytes are read
    compute_tps = hw.gpus_per_node * cost.gpu_prompt_tokens_per_s(cached, new)
    # (P + D) storage_tps = P compute_tps  ->  P/D = storage / (compute - storage)
    balanced = storage_tps / (compute_tps - storage_tps) if compute_tps > storage_tps else None
    return {"model": model.name, "kv_bytes_per_token": model.kv_bytes_per_token, "shape": {"cached": cached, "new": new},
            "storage_tokens_s_per_node": storage_tps, "prefill_tokens_s_per_node": compute_tps,
            "basic_storage_bound": storage_tps < compute_tps, "dualpath_balanced_pd": balanced}
