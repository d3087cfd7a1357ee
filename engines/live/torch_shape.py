"""The toy transformer's shape (engines/live/torch_model.py) from a model profile, without torch: the
driver checks a `compute: torch` scenario before any engine imports torch (seconds on a small host)."""
from __future__ import annotations

from dataclasses import dataclass

ROWS = 16  # every op of the model runs on a multiple of this many rows (torch_model.py says why)


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    block: int          # key block and query chunk, in positions (the storage's block_tokens)

    @property
    def bytes_per_token_layer(self) -> int:
        return 2 * self.kv_heads * self.head_dim * 4


def shape_for(spec, block_tokens: int) -> Shape:
    """The toy model's shape from a model profile (engines/costmodel ModelSpec). The profile must give
    hidden_size, attn_heads, kv_heads and head_dim; the MLP width is ffn_params_per_dense_layer / (3 x
    hidden) and the vocabulary shared_params / (2 x hidden) (embedding and output head). ValueError
    (naming the key) when they do not fit."""
    h, heads, kvh, hd = spec.hidden_size, spec.attn_heads, spec.kv_heads, spec.head_dim
    for key, v in (("hidden_size", h), ("attn_heads", heads), ("kv_heads", kvh), ("head_dim", hd)):
        if v <= 0:
            raise ValueError(f"{key}: compute: torch needs it > 0 in the model profile")
    if heads % kvh:
        raise ValueError(f"kv_heads: must divide attn_heads ({heads}), got {kvh}")
    if hd % 2:
        raise ValueError(f"head_dim: must be even (rotary positions), got {hd}")
    shape = Shape(layers=spec.layers, hidden=h, heads=heads, kv_heads=kvh, head_dim=hd,
                  ffn=max(ROWS, round(spec.ffn_params_per_dense_layer / (3 * h))),
                  vocab=max(ROWS, round(spec.shared_params / (2 * h))), block=int(block_tokens))
    if spec.kv_bytes_per_token_layer != shape.bytes_per_token_layer:
        raise ValueError(f"kv_bytes_per_token_layer: compute: torch stores float32 K and V, so it must be "
                         f"2 x kv_heads x head_dim x 4 = {shape.bytes_per_token_layer}, "
                         f"got {spec.kv_bytes_per_token_layer}")
    return shape
