"""Token-id prompts that grow exactly as the trace says, so a server's prefix cache sees the reuse the
trace intends.

Agents of our traces (known agents): an agent's context is a token-id list; round r appends
`append_tokens` deterministic stand-in ids, and after the response, `gen_tokens` ids: the ones the
server generated when it returned them (cut or padded with stand-ins to exactly `gen_tokens`), else
stand-ins. Without the real ids the server misses the generated part of every context (the
expected-vs-achieved hit rate shows it).

Imported traces whose agents were inferred (plain Mooncake rows): the prompt is the concatenation of
one deterministic block of `block_size` ids per hash id, cut to the prompt length, so requests that
share leading hash ids share a token prefix, exactly as in the original trace.

The JSON text of each context is kept alongside the ids, so a request body costs an append, not a
re-encoding of 60K integers.
"""
from __future__ import annotations

import numpy as np

TOKEN_LO, TOKEN_HI = 1000, 30000  # ids inside every common vocabulary, clear of special tokens


def _ids(seed: int, tag: int, a: int, b: int, n: int) -> list[int]:
    rng = np.random.default_rng([seed & 0xFFFFFFFF, tag, a & 0xFFFFFFFFFFFF, b & 0xFFFFFFFFFFFF])
    return rng.integers(TOKEN_LO, TOKEN_HI, size=n).tolist()


class AgentContext:
    """One agent's token context (known agents)."""

    __slots__ = ("seed", "agent", "ids", "text")

    def __init__(self, seed: int, agent: int):
        self.seed = seed
        self.agent = agent
        self.ids: list[int] = []
        self.text = ""  # ",".join(map(str, ids))

    def _extend(self, new: list[int]) -> None:
        if not new:
            return
        part = ",".join(map(str, new))
        self.text = part if not self.text else self.text + "," + part
        self.ids.extend(new)

    def prompt(self, rnd: int, append_tokens: int) -> str:
        """Append round `rnd`'s new tokens; return the whole prompt as JSON array text."""
        self._extend(_ids(self.seed, 1, self.agent, rnd, append_tokens))
        return "[" + self.text + "]"

    def generated(self, rnd: int, gen_tokens: int, returned: list[int] | None) -> bool:
        """Append the round's output: the server's ids (cut or padded to gen_tokens) or stand-ins.
        Returns whether the server's ids were used."""
        ids = list(returned or [])[:gen_tokens]
        used = bool(ids)
        if len(ids) < gen_tokens:
            ids += _ids(self.seed, 2, self.agent, rnd, gen_tokens)[len(ids):]
        self._extend(ids)
        return used


def hash_prompt(seed: int, hash_ids: list[int], prompt_tokens: int, block_size: int) -> str:
    """The JSON array text of a prompt made of one deterministic block per hash id."""
    parts = []
    left = prompt_tokens
    for h in hash_ids:
        if left <= 0:
            break
        n = min(block_size, left)
        parts.append(",".join(map(str, _ids(seed, 3, h, 0, block_size)[:n])))
        left -= n
    if left > 0:  # fewer hash ids than the length needs: pad deterministically
        parts.append(",".join(map(str, _ids(seed, 4, prompt_tokens, len(hash_ids), left))))
    return "[" + ",".join(parts) + "]"
