"""How every part of the live cluster (storage, PE, DE) serves: its HTTP app and its data listener
until cancelled, reporting both ports once they listen, closing both on the way out."""
from __future__ import annotations

import asyncio
from typing import Callable

from aiohttp import web


async def serve_until_cancelled(app: web.Application, host: str, http_port: int, data_task: asyncio.Task,
                                data_port: int, ready: Callable[[int, int], None] | None = None,
                                on_close: Callable[[], None] | None = None) -> None:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, http_port)
    await site.start()
    if ready is not None:
        ready(site._server.sockets[0].getsockname()[1], data_port)
    try:
        await asyncio.Event().wait()
    finally:
        data_task.cancel()
        await asyncio.gather(data_task, return_exceptions=True)
        await runner.cleanup()
        if on_close is not None:
            on_close()
