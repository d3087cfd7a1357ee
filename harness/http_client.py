"""One streamed completion against an OpenAI-compatible server, timed on one monotonic clock.

POST {url}/v1/completions with the prompt as token ids or text, or {url}/v1/chat/completions with
messages; `stream: true`, usage requested (`stream_options.include_usage`), `max_tokens` exact (chat:
`max_completion_tokens` too), `ignore_eos` (where the server allows it), and for token-id prompts
`return_token_ids` (vLLM; SGLang answers `response_token_ids`) so the agent's next prompt can carry the
real generated tokens; `extra_body` is merged into every body. Times are `time.perf_counter_ns()`
readings; a chunk counts as a token event when it carries text (chat: `delta.content` or reasoning) or
token ids. Tokens come from the server's `usage` when it sends it, never one per chunk by assumption
(`tokens_from` says where the count came from).

Failures never raise: HTTP errors, connection errors, timeouts (the whole request past `timeout_s`, or
no byte for `stall_s`) and malformed SSE come back as a result with `status` (`error` | `timeout`) and
a one-line `error`.
"""
from __future__ import annotations

import asyncio
import functools
import json
import time
from dataclasses import dataclass, field

import aiohttp

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
READ_BUFSIZE = 1 << 22  # 4 MiB: long SSE lines (token ids) and long prompts; aiohttp's 64 KiB stalls (vllm#39963)
ERROR_BODY_LIMIT = 300


@dataclass
class Completion:
    t_sent_ns: int
    t_first_ns: int | None = None
    t_second_ns: int | None = None
    t_done_ns: int | None = None
    chunk_ns: list[int] = field(default_factory=list)   # arrival of each token-bearing chunk
    chunk_tokens: list[int] = field(default_factory=list)  # tokens each carried (ids when given, else 1)
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    tokens_from: str = "usage"   # usage | token_ids | chunks
    text: list[str] | None = None  # the generated text, when asked to keep it
    status: str = "ok"
    error: str | None = None
    http_status: int | None = None


def request_body(model: str | None, prompt_json: str, max_tokens: int, *, ignore_eos: bool, token_ids: bool,
                 extra: dict | None = None, api: str = "completions") -> bytes:
    """The JSON body, with the (possibly huge) prompt, or chat messages, spliced in as pre-encoded text."""
    body = {"max_tokens": int(max_tokens), "stream": True, "stream_options": {"include_usage": True},
            "temperature": 0.0}
    if api == "chat":
        body["max_completion_tokens"] = int(max_tokens)
    if model:
        body["model"] = model
    if ignore_eos:
        body["ignore_eos"] = True
    if token_ids:
        body["return_token_ids"] = True
    if extra:
        body.update(extra)
    head = json.dumps(body, separators=(",", ":"))
    key = "messages" if api == "chat" else "prompt"
    return ('{"' + key + '":' + prompt_json + "," + head[1:]).encode()


async def complete(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict, timeout_s: float,
                   stall_s: float | None = None, keep_text: bool = False) -> Completion:
    """Send one request and read its stream to the end (or to a timeout: `timeout_s` for the whole
    request, `stall_s` without a byte from the server, the wait for the response's head included)."""
    stall = _stall_timeout(stall_s) if stall_s else None
    c = Completion(t_sent_ns=time.perf_counter_ns(), text=[] if keep_text else None)
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, data=body, headers=headers, timeout=stall) as resp:
                c.http_status = resp.status
                if resp.status != 200:
                    text = (await resp.content.read(ERROR_BODY_LIMIT)).decode("utf-8", "replace")
                    return _fail(c, "error", f"HTTP {resp.status}: {' '.join(text.split())[:200]}")
                await _read_stream(resp, c)
    except aiohttp.ServerTimeoutError as exc:  # before TimeoutError: it is one
        what = "could not connect within" if "connect" in str(exc).lower() else "no byte from the server for"
        return _fail(c, "timeout", f"{what} {stall_s:g} s (endpoint.stall_timeout_s)")
    except TimeoutError:
        return _fail(c, "timeout", f"no complete response within {timeout_s:g} s")
    except aiohttp.ClientError as exc:
        return _fail(c, "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    except (ValueError, UnicodeDecodeError) as exc:
        return _fail(c, "error", f"malformed stream: {exc}".splitlines()[0][:300])
    except OSError as exc:
        return _fail(c, "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    if c.status == "ok":
        _finish_counts(c)
    return c


@functools.lru_cache(maxsize=8)
def _stall_timeout(stall_s: float) -> aiohttp.ClientTimeout:
    """No byte for stall_s (connecting, or waiting for the head or the next chunk) is a timeout."""
    return aiohttp.ClientTimeout(total=None, sock_read=stall_s, sock_connect=stall_s)


def _fail(c: Completion, status: str, error: str) -> Completion:
    """Mark a failure; its end is now, when it was seen (the agent's next round is scheduled from it)."""
    c.status, c.error = status, error
    c.t_done_ns = time.perf_counter_ns()
    return c


async def _read_stream(resp: aiohttp.ClientResponse, c: Completion) -> None:
    """Read SSE lines as the bytes arrive (whole reads, split here: aiohttp's line iterator costs twice
    as much); every event in one read is stamped with the time that read returned."""
    done = False
    tail = b""
    async for block in resp.content.iter_any():
        now = time.perf_counter_ns()
        lines = (tail + block if tail else block).split(b"\n")
        tail = lines.pop()
        for raw in lines:
            if _take_line(raw, now, c):
                done = True
                break
        if done or c.status != "ok":
            break
    if not done and c.status == "ok" and tail.strip():  # a last line without its newline
        done = _take_line(tail, time.perf_counter_ns(), c)
    if c.status != "ok":
        return
    if not done:
        if c.t_first_ns is None:
            raise ValueError("the stream ended without a token or [DONE]")
        if c.output_tokens is None:  # no usage either: the response was cut short
            raise ValueError(f"the stream ended without [DONE] after {sum(c.chunk_tokens)} token(s)")
        c.t_done_ns = c.t_done_ns or time.perf_counter_ns()
    if c.t_done_ns is None or (c.chunk_ns and c.t_done_ns < c.chunk_ns[-1]):
        c.t_done_ns = c.chunk_ns[-1] if c.chunk_ns else time.perf_counter_ns()


def _take_line(raw: bytes, now: int, c: Completion) -> bool:
    """Take one SSE line; True at `data: [DONE]`. An `error` object in the stream fails the request."""
    line = raw.strip()
    if not line.startswith(b"data:"):
        return False  # blank, keep-alive comment, or event:/id:/retry: fields, which carry nothing we use
    data = line[5:].strip()
    if data == b"[DONE]":
        c.t_done_ns = now
        return True
    try:
        obj = json.loads(data.decode())  # str: json skips sniffing the encoding of bytes
    except json.JSONDecodeError:
        raise ValueError(f"a data line is not JSON: {data[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ValueError("a data line is not a JSON object")
    if "error" in obj:
        err = obj["error"]
        msg = err.get("message", err) if isinstance(err, dict) else err
        _fail(c, "error", f"server error in stream: {' '.join(str(msg).split())[:200]}")
        return False
    _take_chunk(obj, now, c)
    return False


def _take_chunk(obj: dict, now: int, c: Completion) -> None:
    usage = obj.get("usage")
    if isinstance(usage, dict):
        c.prompt_tokens = _int(usage.get("prompt_tokens"), c.prompt_tokens)
        c.output_tokens = _int(usage.get("completion_tokens"), c.output_tokens)
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            c.cached_tokens = _int(details.get("cached_tokens"), c.cached_tokens)
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        ids = choice.get("token_ids") or choice.get("response_token_ids")
        text = choice.get("text")
        kept = text
        delta = choice.get("delta")
        if text is None and isinstance(delta, dict):  # chat: reasoning counts as output, the content is kept
            kept = delta.get("content")
            text = kept or delta.get("reasoning_content") or delta.get("reasoning")
        if ids is None and not text:
            continue
        if c.text is not None and isinstance(kept, str):
            c.text.append(kept)
        n = len(ids) if isinstance(ids, list) else 1
        if isinstance(ids, list):
            c.token_ids.extend(int(x) for x in ids if isinstance(x, int))
        if n == 0:
            continue
        if c.t_first_ns is None:
            c.t_first_ns = now
            if n >= 2:
                c.t_second_ns = now
        elif c.t_second_ns is None:
            c.t_second_ns = now
        c.chunk_ns.append(now)
        c.chunk_tokens.append(n)
        c.t_done_ns = now


def _finish_counts(c: Completion) -> None:
    if c.output_tokens is None:
        if c.token_ids:
            c.output_tokens, c.tokens_from = len(c.token_ids), "token_ids"
        else:
            c.output_tokens, c.tokens_from = sum(c.chunk_tokens), "chunks"


def _int(value, default):
    return value if isinstance(value, int) and not isinstance(value, bool) else default
