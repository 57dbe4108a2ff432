"""The all-in-one web application: every package mounts its routes on one aiohttp app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

from aiohttp import web
from aiohttp.typedefs import Middleware

from tongke.audit import AUDIT, AuditLog, audit_middleware
from tongke.audit import setup_routes as setup_audit_routes
from tongke.config import Config
from tongke.feedkeys import FEED_KEYS, FeedKeys, feed_key_middleware
from tongke.feedkeys import setup_routes as setup_feed_routes
from tongke.ratelimit import RATE_LIMITS, RateLimits, rate_limit_middleware, rates_from_config
from tongke.untrusted import json_body_guard

WEB_ROOT = Path(__file__).resolve().parent.parent / "web_client"


@dataclass
class AppContext:
    config: Config
    secret: str


CTX = web.AppKey("tongke_ctx", AppContext)


def create_app(config: Config) -> web.Application:
    # Imported here so that `tongke --help` stays fast and each package stays optional
    # to the others at import time.
    from media_server.http import setup as setup_media
    from media_server.ops_http import setup as setup_ops
    from recording.api import setup as setup_recording
    from recording.api import setup_server_recorder
    from scheduler.api import DB as SCHEDULER_DB
    from scheduler.api import setup as setup_scheduler
    from tongke.cluster.front import setup_routes as setup_cluster_routes
    from tongke.health import setup as setup_health
    from tongke.lessons import lesson_facts_resolver, scheduled_lesson_resolver
    from tongke.metrics import setup as setup_metrics
    from tongke.session_auth import setup as setup_accounts

    # Everything embedded (SQLite databases, rooms, recordings) lives under data_dir.
    config.data_dir.mkdir(parents=True, exist_ok=True)
    secret = config.ensure_secret()
    app = web.Application(
        client_max_size=config.max_message_bytes * 4,
        # aiohttp types middlewares as a Protocol that plain async functions only match
        # structurally; mypy does not see it.
        middlewares=cast(
            list[Middleware],
            [
                rate_limit_middleware,
                json_body_guard,
                feed_key_middleware(secret),
                audit_middleware(secret),
            ],
        ),
    )
    ctx = AppContext(config=config, secret=secret)
    app[CTX] = ctx
    app[RATE_LIMITS] = RateLimits(rates_from_config(config.rate_limits))
    audit = app[AUDIT] = AuditLog(config.resolved_database_url())
    feed_keys = app[FEED_KEYS] = FeedKeys(
        config.resolved_database_url(), lifetime_s=config.feed_token_ttl_s
    )

    async def close_audit(app: web.Application) -> None:
        await audit.flush()
        audit.close()
        feed_keys.close()

    app.on_cleanup.append(close_audit)
    setup_audit_routes(app, secret)
    setup_feed_routes(app, secret)
    sfu = setup_media(app, ctx)
    setup_scheduler(app, ctx)
    setup_recording(app, ctx, lessons=lesson_facts_resolver(app[SCHEDULER_DB], sfu.rooms))
    if config.server_recording:
        setup_server_recorder(app, sfu.rooms)
    setup_accounts(app, ctx)
    setup_health(app, ctx)
    setup_ops(app, ctx, sfu)
    setup_metrics(app, ctx, sfu)
    sfu.rooms.resolvers.append(scheduled_lesson_resolver(app[SCHEDULER_DB]))
    setup_cluster_routes(app)
    if WEB_ROOT.is_dir():
        app.router.add_static("/static/", WEB_ROOT, show_index=False)
    return app
