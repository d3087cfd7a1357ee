"""A scripted OpenAI-compatible streaming completions server for the HTTP driver tests.

    with ScriptedServer(script) as srv:          # binds 127.0.0.1 on a free port, in a background thread
        ... drive srv.url ...
    srv.completions                               # what the server saw and did, per request

It runs in this process, in its own thread with its own asyncio loop, so its log uses the same
`time.perf_counter_ns()` clock as the driver under test: the driver's times can be compared with the
times the server itself wrote each chunk, not only with what the script asked for.

Per request, the script (a callable `script(req) -> Reply`, or a dict keyed by the `X-Request-Id`
header "agent/round", then by the round number, then by None for the default) chooses the behaviour:
first-token delay, per-chunk delay, tokens per chunk, whether `usage` (with
`prompt_tokens_details.cached_tokens`) and `token_ids` are sent, an HTTP error status, a non-JSON data
line, a stream that ends without `[DONE]`, a connection dropped mid-stream, a stream that never finishes,
a delay before answering, and killing the whole server (the endpoint dies). Server-wide: a concurrency
limit (requests queue inside the server), a slow accept loop (each new connection waits), keep-alive on
or off, and `stop()` from the test thread.

HTTP/1.1 by hand on asyncio streams (no framework, so nothing buffers or reorders writes): one HTTP
chunk per SSE event, TCP_NODELAY. A chunk's time is taken just before the write call, which sends at
once (the transport's buffer is empty): a reader cannot see the bytes earlier. A time taken after the
call (`chunk_post_ns`) can be late by a GIL hand-off, since the thread the write wakes is usually the
driver's, in this same process.
Unless scripted otherwise a request gets exactly `max_tokens` tokens, `usage` and `[DONE]`; the server
keeps a prefix cache (every finished request's prompt plus the ids it generated) and reports as
`cached_tokens` the longest prefix of the prompt it has seen. `POST /reset` clears it and is counted;
`GET /metrics` is Prometheus text with a growing `node_network_receive_bytes_total{device="mlx5_0"}`
and `vllm:num_requests_running` / `vllm:num_requests_waiting` gauges.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

HOST = "127.0.0.1"
GEN_ID_LO = 50_000  # generated ids live here, clear of the driver's prompt ids (1000 .. 30000)
START_TIMEOUT_S = 10.0


@dataclass
class Reply:
    """How the server answers one completion request."""

    first_token_s: float = 0.0          # from admission (after answer_delay_s) to the first chunk
    token_s: float = 0.0                # between chunks
    tokens_per_chunk: int = 1
    tokens: int | None = None           # tokens generated (default: the request's max_tokens)
    usage: bool = True                  # send a usage event before [DONE]
    completion_tokens: int | None = None  # usage.completion_tokens (default: the tokens generated)
    cached_tokens: int | None = None    # usage...cached_tokens (default: the server's prefix cache)
    token_ids: bool = True              # send choices[0].token_ids when the request asks for them
    text: bool = True                   # send choices[0].text
    status: int = 200                   # anything else: an HTTP error with a JSON body
    echo_auth: bool = False             # the error body quotes the request's Authorization header
    answer_delay_s: float = 0.0         # after admission, before anything is sent
    malformed_at: int | None = None     # chunk k is a data line that is not JSON
    end_after: int | None = None        # the body ends cleanly after k chunks: no usage, no [DONE]
    done: bool = True                   # send `data: [DONE]`
    drop_after: int | None = None       # the connection is aborted (RST) after k chunks
    hang_after: int | None = None       # after k chunks nothing more is sent until the client leaves
    die: bool = False                   # the server stops as this request arrives (endpoint dies)


@dataclass
class Request:
    """What the script sees."""

    request_id: str | None
    agent_id: str | None
    round: int | None
    seq: int                            # 0, 1, 2, ... in arrival order
    prompt: list
    max_tokens: int
    body: dict
    headers: dict


@dataclass
class Logged:
    """What the server saw and did for one completion request (times: perf_counter_ns)."""

    request_id: str | None
    agent_id: str | None
    round: int | None
    seq: int
    headers: dict
    body: dict
    prompt: list
    max_tokens: int
    t_connected_ns: int                 # the connection was accepted
    t_arrival_ns: int                   # the request line was read
    t_received_ns: int                  # the whole body was read
    reply: Reply | None = None
    t_admitted_ns: int | None = None    # past the server's concurrency limit
    chunk_ns: list = field(default_factory=list)     # each token chunk, as it is written (see module doc)
    chunk_post_ns: list = field(default_factory=list)  # ... and once the write call returned
    chunk_tokens: list = field(default_factory=list)
    token_ids: list = field(default_factory=list)    # every id generated (sent or not)
    cached_tokens: int | None = None
    t_done_ns: int | None = None        # `data: [DONE]` written (as chunk_ns)
    t_end_ns: int | None = None
    outcome: str = "open"   # ok | http_error | malformed | ended_early | no_done | dropped | client_gone | killed

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    @property
    def tokens_sent(self) -> int:
        return int(sum(self.chunk_tokens))


Script = Callable[[Request], Reply] | Mapping | Reply | None


class ScriptedServer:
    def __init__(self, script: Script = None, *, max_concurrent: int | None = None, accept_delay_s: float = 0.0,
                 keep_alive: bool = True, die_at_request: int | None = None):
        self.script = script
        self.max_concurrent = max_concurrent
        self.accept_delay_s = accept_delay_s
        self.keep_alive = keep_alive
        self.die_at_request = die_at_request  # the n-th completion request (1-based) kills the server
        self.completions: list[Logged] = []
        self.resets: list[dict] = []           # {"t_ns", "headers"} per POST /reset
        self.scrapes: list[dict] = []          # {"t_ns", "headers"} per GET /metrics
        self.other: list[tuple[str, str]] = []
        self.problems: list[str] = []          # requests the server could not understand
        self.port: int | None = None
        self.t_died_ns: int | None = None
        self._cache: list[np.ndarray] = []
        self._rx_bytes = 0
        self._running = 0
        self._waiting = 0
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    # ----- the test thread's side -----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> "ScriptedServer":
        self._thread = threading.Thread(target=self._thread_main, name="scripted-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self.port is None:
            self.stop()
            raise RuntimeError(f"the scripted server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (listener closed, every connection aborted) and wait for its thread."""
        loop = self._loop
        if loop is not None and not self._stopped.is_set():
            try:
                loop.call_soon_threadsafe(self._stop_now)
            except RuntimeError:  # the loop already closed
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError("the scripted server's thread did not stop")

    def wait_until(self, predicate: Callable[["ScriptedServer"], bool], timeout_s: float) -> bool:
        """Wait (bounded) until predicate(self) holds; re-checked whenever the log changes."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def by_id(self) -> dict[str, Logged]:
        """The completion log by request id (the last one seen for each id)."""
        return {c.request_id: c for c in self.completions}

    # ----- the server thread ----------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 (reported by __enter__)
            self._error = exc
        finally:
            self._stopped.set()
            self._ready.set()
            self._changed()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._gate = asyncio.Semaphore(self.max_concurrent) if self.max_concurrent else None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(512)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        accept = self._accept_task = asyncio.create_task(self._accept_loop())
        self._ready.set()
        await self._stop_event.wait()
        accept.cancel()
        await asyncio.gather(accept, return_exceptions=True)
        self._listener.close()  # from now on a connection is refused
        for w in list(self._writers):
            w.transport.abort()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(accept, *tasks, return_exceptions=True)

    def _stop_now(self) -> None:
        if self.t_died_ns is None:
            self.t_died_ns = time.perf_counter_ns()
        self._accept_task.cancel()
        self._stop_event.set()

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            if self.accept_delay_s:
                await asyncio.sleep(self.accept_delay_s)  # a slow accept: connections wait in the backlog
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = asyncio.create_task(self._connection(conn, time.perf_counter_ns()))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _connection(self, conn: socket.socket, t_connected_ns: int) -> None:
        reader, writer = await asyncio.open_connection(sock=conn)
        self._writers.add(writer)
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    break
                t_arrival, method, path, headers, body, t_received = req
                path = path.split("?", 1)[0]
                client_keeps = headers.get("connection", "").lower() != "close"
                keep = self.keep_alive and client_keeps
                if method == "POST" and path == "/v1/completions":
                    keep = await self._completion(reader, writer, headers, body, t_connected_ns, t_arrival,
                                                  t_received, keep)
                elif method == "POST" and path == "/reset":
                    self.resets.append({"t_ns": t_arrival, "headers": headers})
                    self._cache.clear()
                    self._changed()
                    _respond(writer, 200, b'{"ok":true}', keep)
                elif method == "GET" and path == "/metrics":
                    self.scrapes.append({"t_ns": t_arrival, "headers": headers})
                    self._rx_bytes += 4096  # a busy NIC: the counter grows between any two scrapes
                    _respond(writer, 200, self._metrics().encode(), keep, "text/plain; version=0.0.4")
                else:
                    self.other.append((method, path))
                    _respond(writer, 404, b'{"error":{"message":"not found"}}', keep)
                await writer.drain()
                if not keep:
                    break
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # noqa: BLE001 (a protocol violation by the client: the test reads `problems`)
            self.problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            self._writers.discard(writer)
            writer.close()  # graceful: what was written still goes out (stop() aborts instead)

    def _metrics(self) -> str:
        return ("# TYPE node_network_receive_bytes_total counter\n"
                f'node_network_receive_bytes_total{{device="mlx5_0"}} {self._rx_bytes}\n'
                "# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{model_name="scripted"}} {self._running}\n'
                "# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{model_name="scripted"}} {self._waiting}\n')

    def _reply_for(self, req: Request) -> Reply:
        s = self.script
        if s is None:
            return Reply()
        if isinstance(s, Reply):
            return s
        if callable(s):
            return s(req) or Reply()
        for key in (req.request_id, req.round, None):
            if key in s:
                return s[key]
        return Reply()

    def _cached(self, prompt: list) -> int:
        p = np.asarray(prompt, dtype=np.int64)
        best = 0
        for seq in self._cache:
            m = min(len(seq), len(p))
            if m <= best:
                continue
            differ = np.flatnonzero(seq[:m] != p[:m])
            best = max(best, int(differ[0]) if len(differ) else m)
        return best

    async def _completion(self, reader, writer, headers, raw, t_connected, t_arrival, t_received, keep) -> bool:
        body = json.loads(raw)  # the driver must send valid JSON: a failure here fails the test loudly
        prompt = body["prompt"]
        if not (isinstance(prompt, list) and all(isinstance(x, int) for x in prompt)):
            raise AssertionError(f"prompt is not a list of token ids: {str(prompt)[:80]}")
        rid = headers.get("x-request-id")
        agent, _, rnd = (rid or "").rpartition("/")
        rnd_int = int(rnd) if rnd.isdigit() else None
        seq = len(self.completions)
        rec = Logged(rid, agent or None, rnd_int, seq, headers, body, prompt, int(body.get("max_tokens", 16)),
                     t_connected, t_arrival, t_received)
        self._rx_bytes += len(raw)
        self.completions.append(rec)
        self._changed()
        req = Request(rid, rec.agent_id, rnd_int, seq, prompt, rec.max_tokens, body, headers)
        reply = rec.reply = self._reply_for(req)
        if reply.die or (self.die_at_request is not None and seq + 1 >= self.die_at_request):
            rec.outcome = "killed"
            self._stop_now()
            return False
        self._waiting += 1
        try:
            if self._gate is not None:
                await self._gate.acquire()
        finally:
            self._waiting -= 1
        rec.t_admitted_ns = time.perf_counter_ns()
        self._running += 1
        try:
            return await self._answer(reader, writer, rec, reply, keep)
        except (ConnectionError, OSError):
            if rec.outcome == "open":
                rec.outcome = "client_gone"
            return False
        finally:
            self._running -= 1
            if self._gate is not None:
                self._gate.release()
            rec.t_end_ns = time.perf_counter_ns()
            self._changed()

    async def _answer(self, reader, writer, rec: Logged, reply: Reply, keep: bool) -> bool:
        if reply.answer_delay_s:
            await asyncio.sleep(reply.answer_delay_s)
        if reply.status != 200:
            rec.outcome = "http_error"
            message = f"scripted failure {reply.status}"
            if reply.echo_auth:
                message += f" for Authorization: {rec.headers.get('authorization')}"
            _respond(writer, reply.status, json.dumps({"error": {"message": message,
                                                                  "type": "server_error"}}).encode(), keep)
            await writer.drain()
            return keep
        n = rec.max_tokens if reply.tokens is None else reply.tokens
        rec.token_ids = [GEN_ID_LO + (rec.seq * 7919 + k * 104729) % 40_000 for k in range(n)]
        rec.cached_tokens = self._cached(rec.prompt) if reply.cached_tokens is None else reply.cached_tokens
        want_ids = reply.token_ids and bool(rec.body.get("return_token_ids"))
        writer.write(_head(200, "text/event-stream", keep, chunked=True))
        await writer.drain()
        if reply.first_token_s:
            await asyncio.sleep(reply.first_token_s)
        created = int(time.time())
        per = max(1, reply.tokens_per_chunk)
        for index, lo in enumerate(range(0, n, per)):
            if index:
                if reply.token_s:
                    await asyncio.sleep(reply.token_s)
            if reply.drop_after is not None and index >= reply.drop_after:
                rec.outcome = "dropped"
                writer.transport.abort()
                return False
            if reply.end_after is not None and index >= reply.end_after:
                rec.outcome = "ended_early"
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return keep
            if reply.hang_after is not None and index >= reply.hang_after:
                rec.outcome = "hung"
                await reader.read()  # until the client goes away (or the server stops)
                rec.outcome = "client_gone"
                return False
            ids = rec.token_ids[lo:lo + per]
            rec.chunk_ns.append(time.perf_counter_ns())
            if reply.malformed_at is not None and index == reply.malformed_at:
                rec.outcome = "malformed"
                writer.write(_chunk(b"data: {this is not json\n\n"))
            else:
                choice = {"index": 0, "logprobs": None, "finish_reason": "length" if lo + per >= n else None}
                choice["text"] = " t" * len(ids) if reply.text else ""
                if want_ids:
                    choice["token_ids"] = ids
                event = {"id": f"cmpl-{rec.seq}", "object": "text_completion", "created": created,
                         "model": rec.body.get("model", "scripted"), "choices": [choice]}
                writer.write(_event(event))
            rec.chunk_post_ns.append(time.perf_counter_ns())
            rec.chunk_tokens.append(len(ids))
            await writer.drain()
        if reply.usage:
            usage = {"prompt_tokens": len(rec.prompt),
                     "completion_tokens": n if reply.completion_tokens is None else reply.completion_tokens,
                     "total_tokens": len(rec.prompt) + n,
                     "prompt_tokens_details": {"cached_tokens": rec.cached_tokens}}
            writer.write(_event({"id": f"cmpl-{rec.seq}", "object": "text_completion", "created": created,
                                 "model": rec.body.get("model", "scripted"), "choices": [], "usage": usage}))
        if reply.done:
            rec.t_done_ns = time.perf_counter_ns()
            writer.write(_chunk(b"data: [DONE]\n\n"))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        if rec.outcome == "open":
            rec.outcome = "ok" if reply.done else "no_done"
        if rec.outcome in ("ok", "no_done"):
            self._cache.append(np.asarray(rec.prompt + rec.token_ids, dtype=np.int64))
        return keep


# ----- HTTP/1.1 by hand ---------------------------------------------------------------------------
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


async def _read_request(reader: asyncio.StreamReader):
    line = await reader.readline()
    if not line:
        return None
    t_arrival = time.perf_counter_ns()
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        raise ConnectionError(f"bad request line {line[:80]!r}")
    method, target, _ = parts
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(n) if n else b""
    return t_arrival, method, target, headers, body, time.perf_counter_ns()


def _head(status: int, content_type: str, keep: bool, *, chunked: bool = False, length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Content-Type: {content_type}",
             f"Connection: {'keep-alive' if keep else 'close'}", "Cache-Control: no-cache"]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, keep: bool,
             content_type: str = "application/json") -> None:
    writer.write(_head(status, content_type, keep, length=len(body)) + body)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(obj: dict) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")
