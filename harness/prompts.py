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

Text prompts (`endpoint.prompt: text`, for servers that take only text, and every chat server) follow
the same rules with words for ids: stand-in text is deterministic words from harness/prompt_words.py,
each one token, so an agent's text only ever grows by appends and the text of a hash-id block is the
same wherever that block recurs (prefix sharing stays exact); the server's generated text goes back
into the context (padded with stand-in words when it came back short). With `endpoint.tokenizer` (a
tokenizer.json, read with the `tokenizers` library) every append is built to its exact token count in
that tokenizer; without one a word counts as one token. For `api: chat` the context is messages: the
first round's prompt a user message, then each round's output an assistant message and the next append
a user message.
"""
from __future__ import annotations

import json

import numpy as np

from harness.prompt_words import WORDS
from traces.errors import InputError

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


def hash_blocks(hash_ids: list[int], prompt_tokens: int, block_size: int):
    """The blocks of a prompt made of one block per hash id, cut to its length: (key, count, take),
    where key seeds a block's content and `take` of its first tokens are used; past the last hash id,
    one padding block keyed by the length (fewer hash ids than the length needs)."""
    left = prompt_tokens
    for h in hash_ids:
        if left <= 0:
            return
        n = min(block_size, left)
        yield (3, h, 0, block_size), n
        left -= n
    if left > 0:
        yield (4, prompt_tokens, len(hash_ids), left), left


def hash_prompt(seed: int, hash_ids: list[int], prompt_tokens: int, block_size: int) -> str:
    """The JSON array text of a prompt made of one deterministic block per hash id."""
    parts = [",".join(map(str, _ids(seed, *key)[:n])) for key, n in hash_blocks(hash_ids, prompt_tokens, block_size)]
    return "[" + ",".join(parts) + "]"


# ----- text prompts ----------------------------------------------------------------------------------
MIN_WORDS = 64            # a tokenizer must keep at least this many of the word list as one-token words
FIX_STEPS = 64            # bound on the words added or removed to hit an exact count with a tokenizer


def load_tokenizer(path: str):
    """A `tokenizers.Tokenizer` from a tokenizer.json; the library is an optional extra."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InputError("needs the tokenizers library: pip install 'dualpath-bench[text]' (or pip install "
                         "tokenizers)", field="endpoint.tokenizer") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the library raises its own exception types
        raise InputError(f"not a tokenizer.json the tokenizers library reads ({str(exc).splitlines()[0][:120]})",
                         path=str(path), field="endpoint.tokenizer") from None


class Words:
    """Deterministic stand-in text, one token a word; with a tokenizer, built to exact token counts."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        words = WORDS
        if tokenizer is not None:
            encoded = tokenizer.encode_batch([" " + w for w in WORDS], add_special_tokens=False)
            words = tuple(w for w, e in zip(WORDS, encoded) if len(e.ids) == 1)
            if len(words) < MIN_WORDS:  # an unusual vocabulary: fall back to whatever it has
                words = WORDS
        self.words = np.array(words)

    def count(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return len(text.split())

    def list(self, seed: int, tag: int, a: int, b: int, n: int) -> list[str]:
        """n words (one token each in the word-list model), the same for the same arguments."""
        if n <= 0:
            return []
        rng = np.random.default_rng([seed & 0xFFFFFFFF, tag, a & 0xFFFFFFFFFFFF, b & 0xFFFFFFFFFFFF])
        words = self.words[rng.integers(0, len(self.words), size=n)].tolist()
        if self.tokenizer is None:
            return words
        have = self.count(" " + " ".join(words))
        extra = iter(self.words[rng.integers(0, len(self.words), size=FIX_STEPS)].tolist())
        for _ in range(FIX_STEPS):  # merges across words (rare with one-token words): fix the count
            if have == n or not words:
                break
            if have > n:
                words.pop()
            else:
                words.append(next(extra))
            have = self.count(" " + " ".join(words))
        return words

    def text(self, seed: int, tag: int, a: int, b: int, n: int) -> str:
        words = self.list(seed, tag, a, b, n)
        return " " + " ".join(words) if words else ""


def _json_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class TextContext:
    """One agent's text context (known agents): a growing prompt string, or chat messages."""

    __slots__ = ("seed", "agent", "words", "chat", "body", "last_role")

    def __init__(self, seed: int, agent: int, words: Words, chat: bool):
        self.seed, self.agent, self.words, self.chat = seed, agent, words, chat
        self.body = ""  # completions: the escaped prompt text; chat: the message objects, comma-separated
        self.last_role = None

    def _add(self, role: str, text: str) -> None:
        if not text:
            return
        if not self.chat:
            self.body += _json_str(text)[1:-1]
        else:
            msg = '{"role":"%s","content":%s}' % (role, _json_str(text))
            self.body = msg if not self.body else self.body + "," + msg
        self.last_role = role

    def json(self) -> str:
        return "[" + self.body + "]" if self.chat else '"' + self.body + '"'

    def prompt(self, rnd: int, append_tokens: int) -> str:
        """Append round `rnd`'s new text; return the whole prompt (a JSON string, or chat messages)."""
        self._add("user", self.words.text(self.seed, 1, self.agent, rnd, append_tokens))
        return self.json()

    def generated(self, rnd: int, gen_tokens: int, text: str | None, tokens: int | None) -> bool:
        """Append the round's output: the server's text, padded with stand-in words to `gen_tokens`
        when it generated fewer; stand-ins only when it returned nothing. Returns whether its text was used."""
        used = bool(text)
        missing = gen_tokens - (tokens or 0) if used else gen_tokens
        pad = self.words.list(self.seed, 2, self.agent, rnd, gen_tokens)[-missing:] if missing > 0 else []
        self._add("assistant", (text or "") + (" " + " ".join(pad) if pad else ""))
        return used


def hash_text(seed: int, hash_ids: list[int], prompt_tokens: int, block_size: int, words: Words,
              chat: bool) -> str:
    """A prompt of one deterministic block of words per hash id (cut to the length), as a JSON string
    or as one user message."""
    parts = []
    for key, n in hash_blocks(hash_ids, prompt_tokens, block_size):
        parts.extend(words.list(seed, *key)[:n])
    text = " " + " ".join(parts) if parts else ""
    return '[{"role":"user","content":%s}]' % _json_str(text) if chat else _json_str(text)
