"""`dualpath mock-server`: an OpenAI-compatible streaming server that generates stand-in tokens at a set
pace, so the HTTP driver can be tried without a GPU, and tests can fake a server's failures.

    dualpath mock-server --api chat --prompt text --ttft-ms 20 --itl-ms 5 --port 8000

Serves POST /v1/completions (`--api completions`) or /v1/chat/completions (`--api chat`), streamed
(SSE) or not, with `usage` (prompt, completion and cached tokens) when `stream_options.include_usage`
asks for it. `--prompt token_ids` takes completions prompts as token-id lists (and returns the generated
ids when `return_token_ids` is set, as vLLM does); `--prompt text` takes text only and answers HTTP 400
to a token-id prompt, as GuideLLM's mock server does. Text is counted in tokens with `--tokenizer` (a
tokenizer.json), else one token a word. Every request gets min(max_tokens, `--max-tokens-cap`) tokens:
the first `--ttft-ms` after its head was read, then one every `--itl-ms` (paced against absolute
deadlines, so the pace does not drift; behind them, tokens catch up at most twice as fast, not in a
burst). A prefix cache in blocks of 16 tokens reports `cached_tokens`;
POST /reset_prefix_cache or /flush_cache clears it.

Failures on purpose: `--fail-status N` answers every completion with HTTP N; `--hang` reads every
request and never answers; `--die-after N` ends the process abruptly when request N+1 arrives.
`--log FILE` writes one JSON line per request with what the server measured on its own clock:
`request_id` (the X-Request-Id header), `prompt_tokens`, `output_tokens`, `ttft_s` (head read to the
first token written), `tpot_s` (first to last token written / (tokens - 1)), `itl_s` and `status`.
Binds 127.0.0.1 unless told otherwise; `--port 0` takes a free port. The first line on stderr is
`mock-server: listening on http://HOST:PORT ...`.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

LISTENING = "mock-server: listening on"
BLOCK = 16                  # prefix-cache block, in tokens
CACHE_LIMIT = 4_000_000     # cached blocks kept before the cache is cleared (bounded memory)
GEN_ID_LO, GEN_ID_SPAN = 50_000, 10_000  # generated token ids (clear of harness.prompts' 1000 .. 30000)
DEFAULT_MAX_TOKENS = 16     # OpenAI's default when a request gives none
CATCH_UP = 0.5              # a late token's successor comes at least this share of --itl-ms after it
SHUTDOWN_S = 1.0            # on SIGINT/SIGTERM, requests still streaming get this long


def register(sub) -> None:
    m = sub.add_parser("mock-server", help="an OpenAI-compatible streaming server with set timings (no GPU)",
                       description="Serve stand-in tokens at a set pace on the OpenAI API, for trying "
                       "`backend: http` scenarios and for faking a server's failures.")
    m.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback only)")
    m.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free port)")
    m.add_argument("--api", choices=("completions", "chat"), default="completions",
                   help="serve /v1/completions or /v1/chat/completions (default: %(default)s)")
    m.add_argument("--prompt", choices=("token_ids", "text"), default=None,
                   help="prompt form taken (default: token_ids for completions, text for chat, which takes only text)")
    m.add_argument("--ttft-ms", type=_nonneg, default=20.0, help="time to the first token (default: %(default)s)")
    m.add_argument("--itl-ms", type=_nonneg, default=5.0, help="time between tokens (default: %(default)s)")
    m.add_argument("--max-tokens-cap", type=_positive_int, default=None,
                   help="generate at most this many tokens whatever max_tokens asks (a server cap)")
    m.add_argument("--tokenizer", help="a tokenizer.json to count text prompts with (default: one token a word)")
    m.add_argument("--model", default="mock", help="the model name /v1/models reports (default: %(default)s)")
    m.add_argument("--log", help="write one JSON line per request (the server's own timings) to this file")
    m.add_argument("--fail-status", type=int, default=None, help="answer every completion with this HTTP status")
    m.add_argument("--hang", action="store_true", help="read every request and never answer")
    m.add_argument("--die-after", type=_positive_int, default=None,
                   help="end the process abruptly when request N+1 arrives (an endpoint that dies)")
    m.set_defaults(func=cmd_mock_server)


def _nonneg(text: str) -> float:
    import argparse
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    import argparse
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def cmd_mock_server(args) -> int:
    from harness.cli import UsageError

    if args.api == "chat" and args.prompt == "token_ids":
        raise UsageError("dualpath mock-server: --api chat takes text (messages); use --prompt text")
    args.prompt = args.prompt or ("text" if args.api == "chat" else "token_ids")
    if args.fail_status is not None and not 400 <= args.fail_status <= 599:
        raise UsageError("dualpath mock-server: --fail-status must be an HTTP error status (400..599), "
                         f"got {args.fail_status}")
    tokenizer = None
    if args.tokenizer:
        from harness.prompts import load_tokenizer
        from traces.errors import InputError
        try:
            tokenizer = load_tokenizer(args.tokenizer)
        except InputError as exc:
            raise InputError(exc.problem, path=args.tokenizer, field="--tokenizer") from None
    server = MockServer(args, tokenizer)
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, the address is not this host's
        raise UsageError(f"dualpath mock-server: cannot listen on {args.host}:{args.port}: "
                         f"{exc.strerror or exc}") from None
    return 0


class MockServer:
    def __init__(self, args, tokenizer=None):
        self.args = args
        self.tokenizer = tokenizer
        from harness.prompts import Words
        self.words = Words(tokenizer).words.tolist()  # generated text: one token a word in the tokenizer too
        self.cache: set = set()
        self.seq = 0
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None

    # ----- serving ----------------------------------------------------------------------------------
    async def serve(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=1 << 30)
        path = "/v1/chat/completions" if self.args.api == "chat" else "/v1/completions"
        app.router.add_post(path, self.completion)
        for reset in ("/reset_prefix_cache", "/flush_cache"):
            app.router.add_post(reset, self.reset)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        # handlers end when their client hangs up (a hung or cut stream), and a stop waits at most 1 s for them
        runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                               shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        site = web.TCPSite(runner, self.args.host, self.args.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # the bound port (--port 0)
        a = self.args
        print(f"{LISTENING} http://{a.host}:{port} (api {a.api}, prompt {a.prompt}, "
              f"ttft {a.ttft_ms:g} ms, itl {a.itl_ms:g} ms"
              + (f", max tokens {a.max_tokens_cap}" if a.max_tokens_cap else "") + ")", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            if self.log:
                self.log.close()

    async def health(self, request):
        from aiohttp import web
        return web.Response(text="ok")

    async def models(self, request):
        from aiohttp import web
        return web.json_response({"object": "list", "data": [{"id": self.args.model, "object": "model"}]})

    async def reset(self, request):
        from aiohttp import web
        self.cache.clear()
        return web.json_response({"status": "ok"})

    async def completion(self, request):
        from aiohttp import web

        t_head = time.perf_counter_ns()
        self.seq += 1
        seq = self.seq
        a = self.args
        rid = request.headers.get("X-Request-Id")
        if a.die_after is not None and seq > a.die_after:
            self._write_log({"request_id": rid, "seq": seq, "status": "died"})
            os._exit(1)  # abruptly: open connections are reset, new ones refused
        if a.hang:
            await asyncio.Event().wait()  # until the client hangs up (aiohttp cancels this handler)
        if a.fail_status is not None:
            return self._error(web, a.fail_status, f"mock-server answers HTTP {a.fail_status} to everything", rid, seq)
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
            tokens = self._prompt_tokens(body)
        except ValueError as exc:
            return self._error(web, 400, str(exc), rid, seq)
        asked = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        if not isinstance(asked, int) or asked < 1:
            return self._error(web, 400, f"max_tokens must be a positive integer, got {asked!r}", rid, seq)
        n = min(asked, a.max_tokens_cap or asked)
        cached = self._cached(tokens)
        words = self.words
        out_words = [words[(seq * 7919 + k * 104729) % len(words)] for k in range(n)]
        out_ids = [GEN_ID_LO + (seq * 7919 + k) % GEN_ID_SPAN for k in range(n)]
        gen_tokens = out_ids if isinstance(tokens, list) and tokens and isinstance(tokens[0], int) else out_words
        self._remember(list(tokens) + gen_tokens)
        usage = {"prompt_tokens": len(tokens), "completion_tokens": n, "total_tokens": len(tokens) + n,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        chat = a.api == "chat"
        want_ids = bool(body.get("return_token_ids")) and not chat
        rec = {"request_id": rid, "seq": seq, "prompt_tokens": len(tokens), "max_tokens": asked, "output_tokens": n,
               "cached_tokens": cached, "status": "ok"}
        if not body.get("stream"):
            await self._pace(t_head, n - 1)
            text = "".join(" " + w for w in out_words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": text, "finish_reason": "length",
                                    **({"token_ids": out_ids} if want_ids else {})})
            self._write_log(rec)
            return web.json_response({"id": f"mock-{seq}", "object": "chat.completion" if chat else "text_completion",
                                      "model": self.args.model, "choices": [choice], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        times = []
        obj_kind = "chat.completion.chunk" if chat else "text_completion"
        try:
            for k in range(n):
                await self._pace(t_head, k, times[-1] if times else None)
                last = k == n - 1
                if chat:
                    delta = {"role": "assistant"} if k == 0 else {}
                    choice = {"index": 0, "delta": delta | {"content": " " + out_words[k]},
                              "finish_reason": "length" if last else None}
                else:
                    choice = {"index": 0, "text": " " + out_words[k], "finish_reason": "length" if last else None,
                              **({"token_ids": [out_ids[k]]} if want_ids else {})}
                data = _event({"id": f"mock-{seq}", "object": obj_kind, "model": self.args.model, "choices": [choice]})
                times.append(time.perf_counter_ns())
                await resp.write(data)
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(_event({"id": f"mock-{seq}", "object": obj_kind, "model": self.args.model,
                                         "choices": [], "usage": usage}))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            rec["status"] = "client_gone"
            self._write_log(self._timed(rec, t_head, times))
            raise
        self._write_log(self._timed(rec, t_head, times))
        return resp

    async def _pace(self, t_head_ns: int, k: int, t_prev_ns: int | None = None) -> None:
        """Wait until token k's time: ttft after the head, then itl per token; a token that came late is
        caught up at most twice as fast (never a burst of tokens, as a real server under load)."""
        due = t_head_ns + int((self.args.ttft_ms + k * self.args.itl_ms) * 1e6)
        if t_prev_ns is not None:
            due = max(due, t_prev_ns + int(CATCH_UP * self.args.itl_ms * 1e6))
        wait = (due - time.perf_counter_ns()) * 1e-9
        if wait > 0:
            await asyncio.sleep(wait)

    # ----- prompts and the prefix cache -------------------------------------------------------------------
    def _prompt_tokens(self, body: dict) -> list:
        """The prompt as a token list (ids, or words / tokenizer ids for text); ValueError for a form this
        server does not take."""
        if self.args.api == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
            tokens: list = []
            for i, m in enumerate(messages):
                content = m.get("content") if isinstance(m, dict) else None
                if isinstance(content, list):  # content parts
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                if not isinstance(content, str):
                    raise ValueError(f"messages[{i}].content must be a string")
                tokens += self._text_tokens(content)
            return tokens
        prompt = body.get("prompt")
        if self.args.prompt == "text":
            if not isinstance(prompt, str):
                raise ValueError("prompt must be a string (this server takes prompts as text)")
            return self._text_tokens(prompt)
        if not (isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
            raise ValueError("prompt must be a list of token ids (this server takes token ids)")
        return prompt

    def _text_tokens(self, text: str) -> list:
        if self.tokenizer is not None:
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        return text.split()

    def _chain(self, tokens: list):
        h = 0
        for i in range(0, len(tokens) - BLOCK + 1, BLOCK):
            h = hash((h, tuple(tokens[i:i + BLOCK])))
            yield h

    def _cached(self, tokens: list) -> int:
        n = 0
        for h in self._chain(tokens):
            if h not in self.cache:
                break
            n += BLOCK
        return n

    def _remember(self, tokens: list) -> None:
        if len(self.cache) > CACHE_LIMIT:
            self.cache.clear()
        self.cache.update(self._chain(tokens))

    # ----- answers and the log ------------------------------------------------------------------------
    def _error(self, web, status: int, message: str, rid, seq):
        self._write_log({"request_id": rid, "seq": seq, "status": f"http_{status}", "error": message})
        return web.json_response({"error": {"message": message, "type": "invalid_request_error", "code": status}},
                                 status=status)

    @staticmethod
    def _timed(rec: dict, t_head_ns: int, times: list[int]) -> dict:
        if times:
            rec["ttft_s"] = (times[0] - t_head_ns) * 1e-9
            rec["tpot_s"] = (times[-1] - times[0]) * 1e-9 / (len(times) - 1) if len(times) > 1 else None
            rec["itl_s"] = [(b - a) * 1e-9 for a, b in zip(times, times[1:])]
        rec["tokens_sent"] = len(times)
        return rec

    def _write_log(self, rec: dict) -> None:
        if self.log:
            self.log.write(json.dumps(rec) + "\n")
            self.log.flush()


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
