"""Model and hardware profiles (scenarios/models/*.yaml, scenarios/hardware/*.yaml) as dataclasses."""
from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import yaml

from traces.errors import InputError, did_you_mean

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILE_SUBDIRS = {"model": "scenarios/models", "hardware": "scenarios/hardware"}
PROFILE_DIRS = {kind: REPO_ROOT / sub for kind, sub in PROFILE_SUBDIRS.items()}
ATTENTION_KINDS = ("mla", "sparse-mla", "gqa")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    attention: str
    layers: int
    kv_bytes_per_token_layer: int
    attn_heads: int
    proj_params_per_layer: float
    ffn_params_per_dense_layer: float
    dense_layers: int
    shared_params: float
    weight_bytes_per_param: float
    dram_buffer_gb: float
    moe_layers: int = 0
    ffn_active_params_per_moe_layer: float = 0.0
    expert_params: float = 0.0
    attn_qk_dim: int = 0
    attn_v_dim: int = 0
    sparse_topk: int = 0
    indexer_heads: int = 0
    indexer_dim: int = 0
    head_dim: int = 0
    kv_heads: int = 0
    hidden_size: int = 0
    experts_per_token: int = 0      # routed experts each token visits (MoE)

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * self.kv_bytes_per_token_layer

    @property
    def linear_params_per_token(self) -> float:
        """Parameters every token multiplies through (FLOPs = 2x this)."""
        return (self.layers * self.proj_params_per_layer + self.moe_layers * self.ffn_active_params_per_moe_layer
                + self.dense_layers * self.ffn_params_per_dense_layer)


@dataclass(frozen=True)
class GpuSpec:
    peak_flops_bf16: float
    peak_flops_fp8: float
    hbm_bw_bytes_s: float
    hbm_bytes: float


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    gpus_per_node: int
    gpu: GpuSpec
    cnic_gbps: float
    snic_count: int
    snic_gbps: float
    dram_bw_bytes_s: float

    @property
    def cnic_bytes_s(self) -> float:
        """Line rate of one GPU's compute NIC, bytes/s."""
        return self.cnic_gbps * 1e9 / 8

    @property
    def snic_bytes_s(self) -> float:
        """Line rate of all of a node's storage NICs together, bytes/s."""
        return self.snic_count * self.snic_gbps * 1e9 / 8


def looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or value.endswith((".yaml", ".yml"))


def available_profiles(kind: str, repo_root: Path | None = None) -> list[str]:
    folder = Path(repo_root or REPO_ROOT) / PROFILE_SUBDIRS[kind]
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def find_profile(kind: str, name_or_path: str, repo_root: Path | None = None,
                 base_dir: Path | None = None) -> Path:
    """The YAML file a `model:`/`hardware:` value names: a name under scenarios/<kind>s/ or a path
    (relative to `base_dir`, default the working directory). Raises InputError without a location."""
    if kind not in PROFILE_SUBDIRS:
        raise ValueError(f"profile kind must be one of {', '.join(PROFILE_SUBDIRS)}, got {kind!r}")
    if looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        path = path if path.is_absolute() else (Path(base_dir or Path.cwd()) / path).resolve()
        if not path.is_file():
            raise InputError(f"no such {kind} profile file {str(path)!r}", field=kind)
        return path
    path = Path(repo_root or REPO_ROOT) / PROFILE_SUBDIRS[kind] / f"{name_or_path}.yaml"
    if not path.is_file():
        names = available_profiles(kind, repo_root)
        listing = ", ".join(names) if names else f"none yet in {PROFILE_SUBDIRS[kind]}/"
        raise InputError(f"unknown {kind} {name_or_path!r}{did_you_mean(name_or_path, names)} (available: "
                         f"{listing}; or give a path to a .yaml file)", field=kind)
    return path


def load_profile(kind: str, name_or_path: str) -> tuple[dict, str]:
    """The raw YAML mapping of a profile given by name (scenarios/<kind>s/NAME.yaml) or by path."""
    path = find_profile(kind, name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"invalid YAML ({getattr(exc, 'problem', exc)})", path=str(path),
                         line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise InputError("expected a mapping", path=str(path))
    return data, str(path)


def _build(cls, data: dict, path: str, prefix: str = ""):
    allowed = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(allowed)
    if unknown:
        key = sorted(unknown)[0]
        raise InputError(f"unknown key (allowed: {', '.join(allowed)})", path=path, field=prefix + key)
    kwargs = {}
    for name, f in allowed.items():
        if name not in data:
            if f.default is MISSING:
                raise InputError("missing key", path=path, field=prefix + name)
            continue
        value = data[name]
        if name == "gpu":
            value = _build(GpuSpec, value if isinstance(value, dict) else {}, path, "gpu.")
        elif f.type in ("int", "float"):
            value = _number(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InputError(f"expected a number >= 0, got {value!r}", path=path, field=prefix + name)
            value = int(value) if f.type == "int" else float(value)
        elif f.type == "str" and not isinstance(value, str):
            raise InputError(f"expected a string, got {value!r}", path=path, field=prefix + name)
        kwargs[name] = value
    return cls(**kwargs)


def _number(value):
    """YAML 1.1 reads `1.5e9` (no exponent sign) as a string: accept numeric strings."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def model_spec(name_or_path: str) -> ModelSpec:
    data, path = load_profile("model", name_or_path)
    spec = _build(ModelSpec, data, path)
    if spec.attention not in ATTENTION_KINDS:
        raise InputError(f"unknown attention kind {spec.attention!r} (allowed: {', '.join(ATTENTION_KINDS)})",
                         path=path, field="attention")
    return spec


def hardware_spec(name_or_path: str) -> HardwareSpec:
    data, path = load_profile("hardware", name_or_path)
    return _build(HardwareSpec, data, path)
