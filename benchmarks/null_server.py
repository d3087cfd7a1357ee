"""A null OpenAI-compatible streaming completions server: answers at once, generates nothing.

    .venv/bin/python benchmarks/null_server.py [--port 0] [--ready-file PATH]

For each `POST /v1/completions` it reads the JSON body (`prompt` = token ids, or text), and streams
`max_tokens` (or `max_completion_tokens`, default 16) SSE events straight away, each
`data: {"object":"text_completion","choices":[{"index":0,"text":"x","token_ids":[k]}]}`, then a usage
event and `data: [DONE]` (`object` is there because AIPerf drops chunks without it; vLLM sends it too).
`GET /v1/models` lists one model (readiness probes). No delays anywhere: it exists so a load generator
can be measured with the server nearly free.

Built on a raw asyncio protocol (no HTTP framework): HTTP/1.1 keep-alive, one HTTP chunk per SSE event
(as uvicorn/vLLM send them), the event bytes precomputed, and long streams written in batches that
honour the transport's flow control (pause_writing / resume_writing), so thousands of concurrent
streams do not pile up in user-space buffers. Binds to 127.0.0.1 only; with `--port 0` the kernel
picks a free port, printed as `READY <port>` on stdout (and written to `--ready-file`). SIGTERM or
SIGINT stops it; it then prints the requests and tokens it served on stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys

HOST = "127.0.0.1"
MODEL = "null"
TOKEN_LO, VOCAB = 1000, 29000   # ids k = TOKEN_LO + (i mod VOCAB): inside every common vocabulary
BATCH = 512                     # events per transport.write for long streams
ONE_WRITE_MAX = 2048            # streams up to this many tokens go out in a single write

_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n")


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


EVENTS = [_chunk(b'data: {"object":"text_completion","choices":[{"index":0,"text":"x","token_ids":[%d]}]}\n\n'
                 % (TOKEN_LO + i))
          for i in range(VOCAB)]
_DONE = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _tail(prompt_tokens: int, n: int) -> bytes:
    usage = (b'data: {"id":"cmpl-null","object":"text_completion","model":"%s","choices":[],"usage":'
             b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'
             % (MODEL.encode(), prompt_tokens, n, prompt_tokens + n))
    return _chunk(usage) + _DONE


def _events(i: int, j: int) -> list[bytes]:
    out: list[bytes] = []
    while i < j:
        s = i % VOCAB
        e = min(VOCAB, s + (j - i))
        out.extend(EVENTS[s:e])
        i += e - s
    return out


def _stream(n: int, prompt_tokens: int):
    """The response in pieces of BATCH events (long streams)."""
    yield _HEAD + b"".join(_events(0, min(n, BATCH)))
    i = min(n, BATCH)
    while i < n:
        j = min(n, i + BATCH)
        yield b"".join(_events(i, j))
        i = j
    yield _tail(prompt_tokens, n)


def _simple(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (status.encode(), ctype, len(body), body))


_MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "null"}]}).encode()


class Stats:
    requests = 0
    tokens = 0


class Conn(asyncio.Protocol):
    __slots__ = ("t", "buf", "pending", "paused", "close_after", "closed")

    def connection_made(self, transport):
        self.t = transport
        self.buf = bytearray()
        self.pending = None       # generator of the response still being written
        self.paused = False
        self.close_after = False
        self.closed = False
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):
        self.closed = True
        self.pending = None

    def data_received(self, data):
        self.buf += data
        if self.pending is None:
            self._process()

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self._pump()
        if self.pending is None and not self.closed:
            self._process()

    # ----- requests -------------------------------------------------------------------------------
    def _process(self):
        """Answer every complete request in the buffer (one at a time: a long stream waits its turn)."""
        buf = self.buf
        while self.pending is None and not self.closed:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            try:
                method, path, version = lines[0].split(b" ", 2)
            except ValueError:
                self.t.write(_simple("400 Bad Request", b'{"error":"bad request line"}'))
                self.t.close()
                return
            clen, close = 0, version == b"HTTP/1.0"
            for ln in lines[1:]:
                k, _, v = ln.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    clen = int(v)
                elif k == b"connection":
                    close = v.strip().lower() == b"close"
            total = end + 4 + clen
            if len(buf) < total:
                return
            body = bytes(buf[end + 4:total])
            del buf[:total]
            self.close_after = close
            self._handle(method, path.split(b"?", 1)[0], body)
            if self.pending is None and self.close_after:
                self.t.close()
                self.closed = True

    def _handle(self, method: bytes, path: bytes, body: bytes):
        if method == b"POST" and path in (b"/v1/completions", b"/completions"):
            try:
                req = json.loads(body)
                n = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
                prompt = req.get("prompt")
            except (ValueError, TypeError, AttributeError) as exc:
                self.t.write(_simple("400 Bad Request", json.dumps({"error": {"message": str(exc)}}).encode()))
                return
            if isinstance(prompt, list):
                p = len(prompt[0]) if prompt and isinstance(prompt[0], list) else len(prompt)
            else:
                p = len(str(prompt or "").split())
            Stats.requests += 1
            Stats.tokens += n
            if n <= ONE_WRITE_MAX:
                self.t.write(_HEAD + b"".join(_events(0, n)) + _tail(p, n))
            else:
                self.pending = _stream(n, p)
                self._pump()
        elif method == b"GET" and path in (b"/v1/models", b"/health"):
            self.t.write(_simple("200 OK", _MODELS))
        else:
            self.t.write(_simple("404 Not Found", b'{"error":{"message":"not found"}}'))

    def _pump(self):
        gen = self.pending
        if gen is None:
            return
        write = self.t.write
        while not self.paused and not self.closed:
            piece = next(gen, None)
            if piece is None:
                self.pending = None
                if self.close_after:
                    self.t.close()
                    self.closed = True
                return
            write(piece)


async def serve(port: int, ready_file: str | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, HOST, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    if ready_file:
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(bound))
        os.replace(tmp, ready_file)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(f"null_server: served {Stats.requests} requests, {Stats.tokens} tokens", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    ap.add_argument("--ready-file", help="write the bound port here once listening")
    args = ap.parse_args()
    asyncio.run(serve(args.port, args.ready_file))


if __name__ == "__main__":
    main()
