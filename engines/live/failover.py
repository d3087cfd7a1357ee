"""Which engines of the live cluster are alive, as the router sees them (issue 14, "Faults").

The router keeps serving on the engines left when one dies. An engine is taken for dead when its
`/health` refuses the connection (its process is gone: on one host that is certain at once) or misses
`MISSES` probes in a row (each with a `PROBE_TIMEOUT_S` timeout: a live engine answers between compute
steps, so only a hung one misses). Probes run every `PROBE_EVERY_S` in the background (`watch`) and at once
for the engines of a request that failed (`check`), so the request's error can say which engine died.
A dead engine is reported once to `on_gone(name, role, index, why)`; the router then removes it from the
dispatcher (engines/policy/dispatch.py `Dispatcher.remove_engine`). A dead engine is never revived: one
that comes back would have lost the requests and KV it held, so it joins a new cluster instead.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Callable

import aiohttp

PROBE_EVERY_S = 0.5
PROBE_TIMEOUT_S = 2.0
MISSES = 3


def url(part: dict, path: str) -> str:
    return f"http://{part['host']}:{part['http_port']}{path}"


class Liveness:
    def __init__(self, cfg: dict, session: Callable[[], aiohttp.ClientSession],
                 on_gone: Callable[[str, str, int, str], None]):
        self.session = session
        self.on_gone = on_gone
        self.engines = {f"{role}{i}": (role, i, part) for role in ("pe", "de")
                        for i, part in enumerate(cfg[f"{role}s"])}
        self.dead: dict[str, str] = {}       # name -> why
        self.misses: dict[str, int] = {n: 0 for n in self.engines}

    def alive(self, role: str) -> list[str]:
        return [n for n, (r, _, _) in self.engines.items() if r == role and n not in self.dead]

    def is_dead(self, role: str, index: int) -> bool:
        return f"{role}{index}" in self.dead

    async def probe(self, part: dict) -> str | None:
        """None if the part answers /health; else why not ("refused", "timeout", ...)."""
        try:
            async with self.session().get(url(part, "/health"),
                                          timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as r:
                return None if r.status == 200 else f"/health answered {r.status}"
        except aiohttp.ClientConnectorError as exc:
            return f"refused ({exc.os_error.strerror if exc.os_error else exc})"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"timeout ({type(exc).__name__})"

    async def check(self, names) -> list[str]:
        """Probe the named engines now; the names among them that are dead (newly or before)."""
        names = [n for n in names if n in self.engines]
        todo = [n for n in names if n not in self.dead]
        answers = await asyncio.gather(*(self.probe(self.engines[n][2]) for n in todo))
        for name, why in zip(todo, answers):
            if why is None:
                self.misses[name] = 0
                continue
            self.misses[name] += 1
            if why.startswith("refused") or self.misses[name] >= MISSES:
                self.gone(name, why)
        return [n for n in names if n in self.dead]

    def gone(self, name: str, why: str) -> None:
        if name in self.dead:
            return
        self.dead[name] = why
        role, index, _ = self.engines[name]
        print(f"router: {name} is gone ({why}); serving on {', '.join(self.alive(role)) or f'no {role} left'}",
              file=sys.stderr, flush=True)
        self.on_gone(name, role, index, why)

    async def watch(self) -> None:
        """Probe every live engine every PROBE_EVERY_S until cancelled."""
        while True:
            await asyncio.sleep(PROBE_EVERY_S)
            await self.check([n for n in self.engines if n not in self.dead])
