"""The SSE reader of the HTTP client (harness/http_client.py) on byte streams cut at arbitrary places.

The reader takes whatever each socket read returns and splits lines itself, so an event may arrive in
pieces, several events in one read, with `\\n` or `\\r\\n` line ends, comments and blank keep-alives in
between: whatever the cuts, it must see the same tokens, ids, usage and end as from one whole read.
"""
from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.http_client import Completion, _read_stream


class _Content:
    def __init__(self, blocks: list[bytes]):
        self.blocks = blocks

    async def iter_any(self):
        for b in self.blocks:
            yield b


class _Response:
    def __init__(self, blocks: list[bytes]):
        self.content = _Content(blocks)


def _read(blocks: list[bytes]) -> Completion:
    c = Completion(t_sent_ns=0)

    async def go():
        await _read_stream(_Response(blocks), c)
    asyncio.run(go())
    return c


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(0, x), len(data)) for x in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:]) if b > a]


def _stream(tokens: list[list[int]], crlf: bool, comments: bool, usage: bool, done: bool) -> bytes:
    nl = b"\r\n" if crlf else b"\n"
    out = []
    if comments:
        out.append(b": keep-alive" + nl + nl)
    for ids in tokens:
        chunk = {"choices": [{"index": 0, "text": "x" * len(ids), "token_ids": ids}]}
        out.append(b"data: " + json.dumps(chunk).encode() + nl + nl)
        if comments:
            out.append(b"event: message" + nl + nl)
    if usage:
        u = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": sum(map(len, tokens)),
                                      "prompt_tokens_details": {"cached_tokens": 3}}}
        out.append(b"data: " + json.dumps(u).encode() + nl + nl)
    if done:
        out.append(b"data: [DONE]" + nl + nl)
    return b"".join(out)


token_lists = st.lists(st.lists(st.integers(0, 200_000), min_size=1, max_size=3), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(tokens=token_lists, crlf=st.booleans(), comments=st.booleans(),
       cuts=st.lists(st.integers(0, 4000), max_size=30))
def test_the_same_stream_cut_anywhere_reads_the_same(tokens, crlf, comments, cuts):
    data = _stream(tokens, crlf, comments, usage=True, done=True)
    whole, pieces = _read([data]), _read(_cut(data, cuts))
    for c in (whole, pieces):
        assert c.status == "ok", c.error
        assert c.token_ids == [t for ids in tokens for t in ids]
        assert c.chunk_tokens == [len(ids) for ids in tokens]
        assert (c.prompt_tokens, c.output_tokens, c.cached_tokens) == (7, sum(map(len, tokens)), 3)
        assert c.t_first_ns is not None and c.t_done_ns is not None


@settings(max_examples=60, deadline=None)
@given(tokens=token_lists, cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_a_stream_without_done_or_usage_is_cut_short(tokens, cuts):
    data = _stream(tokens, crlf=False, comments=False, usage=False, done=False)
    with pytest.raises(ValueError, match="without \\[DONE\\]"):
        _read(_cut(data, cuts))


def test_a_last_line_without_its_newline_still_counts():
    data = _stream([[5]], crlf=False, comments=False, usage=True, done=False) + b"data: [DONE]"
    c = _read([data])
    assert c.status == "ok" and c.token_ids == [5] and c.output_tokens == 1


def test_an_error_event_fails_the_request_and_a_bad_line_is_malformed():
    err = b'data: {"choices":[{"text":"a","token_ids":[1]}]}\n\ndata: {"error": {"message": "KV   cache\\nfull"}}\n\n'
    c = _read([err[:20], err[20:]])
    assert c.status == "error" and c.error == "server error in stream: KV cache full"
    with pytest.raises(ValueError, match="not JSON"):
        _read([b'data: {"choices": [\n\n'])
    with pytest.raises(ValueError, match="not a JSON object"):
        _read([b"data: [1, 2]\n\n"])
