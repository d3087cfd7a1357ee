"""The toy transformer of `live.compute: torch` (issue 17): a small decoder-only model (RMSNorm, grouped-
query attention with rotary positions, SwiGLU MLP), float32, weights drawn from a fixed seed (no downloads).

Its KV cache IS the live cluster's KV: a request's KV buffer is the engines' layer-major uint8 array
`[layers, tokens * bpt]`, and one token's bytes in one layer are its K then its V, each `[kv_heads,
head_dim]` float32, so `bpt = 2 * kv_heads * head_dim * 4` (the model profile's
`kv_bytes_per_token_layer`) and a storage Full Block `[layers, block_tokens, bpt]` holds exactly this
model's K and V of those tokens. The model reads K/V from the buffer and writes the new tokens' K/V into it.

Bit-for-bit results whatever the path: a token's K, V and logits come out with the same bits whether it
is prefilled from scratch, prefilled after a loaded prefix, or decoded one at a time. So the tokens an
agent gets equal those of the reference (`kv_cache: off`) only if every KV byte arrived intact. How:
- queries run in chunks aligned to `block` positions (a chunk never spans two key blocks), so a chunk's
  rows see the same key blocks whether the prefix was computed or loaded;
- attention takes the keys in blocks of `block` positions (softmax statistics per block, then combined
  over the blocks), so a row's sums have one order and length whatever the chunk or the context length;
- every op runs on a multiple of `ROWS` rows (padding repeats the last row): CPU float32 matmuls give a
  row the same bits whatever the row count only from 4 rows up, and elementwise kernels treat the tail of
  a vector apart.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from engines.live.torch_shape import ROWS, Shape, shape_for  # noqa: F401 - shape_for: importers' name

WEIGHTS_SEED = 17
ROPE_BASE = 10_000.0
EPS = 1e-6


def _pad(n: int) -> int:
    return max(ROWS, -(-n // ROWS) * ROWS)


class TinyDecoder:
    def __init__(self, shape: Shape, seed: int = WEIGHTS_SEED, device: str = "cpu"):
        self.s = s = shape
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(seed)

        def w(rows: int, cols: int) -> torch.Tensor:
            return (torch.randn(rows, cols, generator=g) / math.sqrt(cols)).to(self.device)
        self.embed = torch.randn(s.vocab, s.hidden, generator=g).to(self.device)
        self.layers = [{"q": w(s.heads * s.head_dim, s.hidden), "k": w(s.kv_heads * s.head_dim, s.hidden),
                        "v": w(s.kv_heads * s.head_dim, s.hidden), "o": w(s.hidden, s.heads * s.head_dim),
                        "up": w(s.ffn, s.hidden), "gate": w(s.ffn, s.hidden), "down": w(s.hidden, s.ffn)}
                       for _ in range(s.layers)]
        self.head = w(s.vocab, s.hidden)
        self.inv_freq = (1.0 / ROPE_BASE ** (torch.arange(0, s.head_dim, 2, dtype=torch.float64) / s.head_dim)
                         ).to(torch.float32).to(self.device)
        self.scale = 1.0 / math.sqrt(s.head_dim)

    # ----- the KV buffer ---------------------------------------------------------------------------
    def kv_views(self, kv: np.ndarray, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of one layer of a request's uint8 buffer, as float32 [tokens, kv_heads, head_dim] views
        sharing its memory (writes go into the buffer)."""
        s = self.s
        t = torch.from_numpy(kv[layer].view(np.float32)).view(-1, 2, s.kv_heads, s.head_dim)
        return t[:, 0], t[:, 1]

    # ----- pieces ----------------------------------------------------------------------------------
    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        ang = pos.to(torch.float32)[:, None] * self.inv_freq[None, :]       # [M, hd/2]
        cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)

    def _attend(self, q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, pos: torch.Tensor, last: int):
        """Rows q [M, heads, hd] at positions `pos` over the key blocks 0..`last`'s: each block's softmax
        statistics and output apart (fixed length B), then combined over the blocks."""
        s, B = self.s, self.s.block
        M, g, kvh = q.shape[0], s.heads // s.kv_heads, s.kv_heads
        nb = last // B + 1
        K, V = K[:nb * B], V[:nb * B]
        if K.shape[0] < nb * B:  # the buffer ends inside the last block: the rest is masked anyway
            K = F.pad(K, (0, 0, 0, 0, 0, nb * B - K.shape[0]))
            V = F.pad(V, (0, 0, 0, 0, 0, nb * B - V.shape[0]))
        qh = q.view(M, kvh, g, s.head_dim).permute(1, 2, 0, 3).reshape(kvh, g * M, s.head_dim)
        sc = (qh @ K.permute(1, 2, 0)) * self.scale                 # [kvh, g*M, nb*B]
        masked = torch.arange(nb * B, device=q.device)[None, :] > pos[:, None]       # [M, nb*B]
        sc = sc.view(kvh, g, M, nb * B).masked_fill(masked, -math.inf).view(kvh, g * M, nb, B)
        mj = sc.amax(-1)                                              # [kvh, g*M, nb]
        p = torch.exp(sc - mj[..., None])
        lj = p.sum(-1)
        oj = p.transpose(1, 2) @ V.view(nb, B, kvh, s.head_dim).permute(2, 0, 1, 3)  # [kvh, nb, g*M, hd]
        w = torch.exp(mj - mj.amax(-1, keepdim=True))                # [kvh, g*M, nb]
        o = (oj * w.transpose(1, 2)[..., None]).sum(1) / (lj * w).sum(-1)[..., None]  # [kvh, g*M, hd]
        return o.view(kvh, g, M, s.head_dim).permute(2, 0, 1, 3).reshape(M, s.heads, s.head_dim)

    def _layer(self, i: int, x: torch.Tensor, pos: torch.Tensor, n: int, kv: np.ndarray) -> torch.Tensor:
        """Layer i over rows x [M, hidden] at positions pos [M] (the first n real); writes their K/V."""
        s, w = self.s, self.layers[i]
        M = x.shape[0]
        h = self._rms(x)
        q = F.linear(h, w["q"]).view(M, s.heads, s.head_dim)
        k = F.linear(h, w["k"]).view(M, s.kv_heads, s.head_dim)
        v = F.linear(h, w["v"]).view(M, s.kv_heads, s.head_dim)
        q, k = self._rope(q, pos), self._rope(k, pos)
        K, V = self.kv_views(kv, i)
        p0 = int(pos[0])
        K[p0:p0 + n] = k[:n].to(K.device)
        V[p0:p0 + n] = v[:n].to(V.device)
        a = self._attend(q, K.to(x.device), V.to(x.device), pos, int(pos[n - 1]))
        x = x + F.linear(a.reshape(M, s.heads * s.head_dim), w["o"])
        h = self._rms(x)
        return x + F.linear(F.silu(F.linear(h, w["gate"])) * F.linear(h, w["up"]), w["down"])

    def _rows(self, tokens, start: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        n = len(tokens)
        M = _pad(n)
        ids = torch.tensor([t % self.s.vocab for t in tokens] + [tokens[-1] % self.s.vocab] * (M - n),
                           device=self.device)
        pos = torch.arange(start, start + M, device=self.device).clamp(max=start + n - 1)
        return self.embed[ids], pos, n

    def _next(self, x: torch.Tensor, row: int) -> int:
        logits = F.linear(self._rms(x), self.head)
        return int(torch.argmax(logits[row]))

    # ----- prefill ---------------------------------------------------------------------------------
    def prefill(self, tokens, kv: np.ndarray, start: int) -> "Prefill":
        """A prefill of `tokens` whose K/V of positions < `start` (a multiple of the block) are already in
        `kv`; run it layer by layer with `.layer(i)` (each writes layer i's K/V of positions >= start)."""
        if start % self.s.block:
            raise ValueError(f"a prefill starts on a block boundary, got {start}")
        return Prefill(self, list(tokens), kv, start)

    # ----- decode ----------------------------------------------------------------------------------
    def decode(self, token: int, pos: int, kv: np.ndarray) -> int:
        """One decode step: `token` at position `pos` (its K/V are written at pos); the next token."""
        x, p, n = self._rows([token], pos)
        for i in range(self.s.layers):
            x = self._layer(i, x, p, n, kv)
        return self._next(x, 0)


class Prefill:
    """One request's prefill, run layer by layer (layer-wise systems send layer i while i+1 computes)."""

    def __init__(self, model: TinyDecoder, tokens: list[int], kv: np.ndarray, start: int):
        self.model, self.kv = model, kv
        B = model.s.block
        start = min(start, (len(tokens) - 1) // B * B)  # a whole hit still computes its last block (its logits)
        self.start = start  # the first position this run computes (and writes K/V for)
        self.chunks = [model._rows(tokens[a:min(a + B, len(tokens))], a) for a in range(start, len(tokens), B)]
        self.first_token: int | None = None

    def layer(self, i: int) -> None:
        m = self.model
        self.chunks = [(m._layer(i, x, pos, n, self.kv), pos, n) for x, pos, n in self.chunks]
        if i == m.s.layers - 1 and self.chunks:
            x, _, n = self.chunks[-1]
            self.first_token = m._next(x, n - 1)
