"""`/readyz`: may a load balancer send people here? (`/healthz` only says the process lives.)

Ready means the database answers, Redis answers when one is configured, and data_dir is
writable; each check has a short timeout so a stuck dependency makes the node not
ready instead of hanging the probe.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import text

if TYPE_CHECKING:
    from tongke.app import AppContext

CHECK_TIMEOUT_S = 3.0


def setup(app: web.Application, ctx: AppContext) -> None:
    from tongke.session_auth import ACCOUNTS

    config = ctx.config

    def database() -> None:
        with app[ACCOUNTS].engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def redis() -> None:
        import redis.asyncio as aioredis

        client = aioredis.from_url(config.redis_url, socket_connect_timeout=CHECK_TIMEOUT_S)
        try:
            await client.ping()
        finally:
            await client.aclose()

    def data_dir() -> None:
        if not os.access(config.data_dir, os.W_OK):
            raise PermissionError(f"{config.data_dir} is not writable")

    async def readyz(request: web.Request) -> web.Response:
        checks: dict[str, Any] = {}
        probes: dict[str, Any] = {
            "database": asyncio.to_thread(database),
            "data_dir": asyncio.to_thread(data_dir),
        }
        if config.redis_url:
            probes["redis"] = redis()
        ready = True
        for name, probe in probes.items():
            start = time.monotonic()
            try:
                await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
                checks[name] = {"ok": True, "ms": round(1000 * (time.monotonic() - start), 1)}
            except Exception as exc:
                ready = False
                # The kind of failure only: the message may hold a database URL.
                checks[name] = {"ok": False, "error": type(exc).__name__}
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    app.router.add_get("/readyz", readyz)
