"""Revocable feed tokens: a per-classroom key version and a lifetime set by the operator.

A feed token (room `feed:<classroom>` or `feed-agent:<agent>`) reads a classroom's
schedule and yields its lesson tokens, for months. When a tablet is lost or a link was
forwarded, an admin revokes that classroom's feed: its key version becomes the moment of
revocation, and every feed token for it issued before is refused (`token_revoked`);
the classroom simply gets a new feed token. Tokens older than the configured lifetime
(`feed_token_ttl_s`) are refused whatever they say about their own expiry.

This is enforced in front of the scheduler's routes by `feed_key_middleware`, so the
scheduler's own code stays as it is.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import sqlalchemy as sa
from aiohttp import web

from tongke.database import create_schema
from tongke.tokens import ALGORITHM, Role, TokenError, request_token, verify_token

FEED_PREFIXES = ("feed:", "feed-agent:")

_metadata = sa.MetaData()
key_versions = sa.Table(
    "feed_key_versions",
    _metadata,
    sa.Column("feed", sa.String(200), primary_key=True),
    # Tokens issued before this time (seconds since the epoch) are revoked.
    sa.Column("not_before", sa.Float, nullable=False),
)


class FeedKeys:
    def __init__(self, database_url: str, *, lifetime_s: int) -> None:
        connect_args = {"timeout": 30} if database_url.startswith("sqlite") else {}
        self.engine = sa.create_engine(database_url, connect_args=connect_args)
        create_schema(_metadata, self.engine)
        self.lifetime_s = lifetime_s
        self._cache: dict[str, float] = {}
        self._load()

    def _load(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(key_versions)).all()
        self._cache = {row.feed: row.not_before for row in rows}

    def version(self, feed: str) -> int:
        """The feed's key version: tokens with an earlier `iat` are refused."""
        return math.ceil(self._cache.get(feed, 0.0))

    def revoke(self, feed: str, *, now: float | None = None) -> int:
        not_before = now if now is not None else time.time()
        with self.engine.begin() as conn:
            updated = conn.execute(
                key_versions.update()
                .where(key_versions.c.feed == feed)
                .values(not_before=not_before)
            ).rowcount
            if not updated:
                conn.execute(key_versions.insert().values(feed=feed, not_before=not_before))
        self._cache[feed] = not_before
        return self.version(feed)

    def check(self, token: str, *, secret: str, now: float | None = None) -> None:
        """Raise TokenError when `token` is a feed token that was revoked or is too old."""
        try:
            data = jwt.decode(token, secret, algorithms=[ALGORITHM])
        except jwt.PyJWTError:
            return  # not ours to judge: the route's own check refuses it
        room = str(data.get("room", ""))
        if not room.startswith(FEED_PREFIXES):
            return
        issued = float(data.get("iat", 0))
        clock = now if now is not None else time.time()
        if clock - issued > self.lifetime_s:
            raise TokenError(
                "token_expired", "this feed token is older than the county allows; get a new one"
            )
        if issued < self.version(room):
            raise TokenError(
                "token_revoked", "this feed token was revoked; ask the county for a new one"
            )

    def close(self) -> None:
        self.engine.dispose()


FEED_KEYS = web.AppKey("feed_keys", FeedKeys)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def feed_key_middleware(secret: str) -> Callable[[web.Request, Handler], Awaitable[Any]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/schedule/"):
            token = request_token(request)
            if token:
                try:
                    request.app[FEED_KEYS].check(token, secret=secret)
                except TokenError as exc:
                    return web.json_response(
                        {"error": {"code": exc.code, "message": exc.message}}, status=401
                    )
        return await handler(request)

    return middleware


def setup_routes(app: web.Application, secret: str) -> None:
    """POST /api/feeds/{classroom}/revoke and /api/feeds/agent/{agent}/revoke."""
    writers = frozenset({Role.ADMIN, Role.SCHEDULER})

    async def revoke(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        try:
            claims = verify_token(secret, token, room="*", roles=writers)
        except TokenError as exc:
            status = 401 if exc.code in ("token_missing", "token_invalid", "token_expired") else 403
            return web.json_response(
                {"error": {"code": exc.code, "message": exc.message}}, status=status
            )
        agent = "agent" in request.match_info
        ident = request.match_info["agent" if agent else "classroom"]
        feed = f"feed-agent:{ident}" if agent else f"feed:{ident}"
        version = app[FEED_KEYS].revoke(feed)
        # Tokens carry whole seconds: wait out this second so that a token minted right
        # after this answer is newer than the revocation.
        await asyncio.sleep(max(0.0, version - time.time()))
        from tongke.audit import AUDIT

        if AUDIT in app:
            app[AUDIT].record(
                "token_revoked", claims=claims, room=feed, ip=request.remote, version=version
            )
        return web.json_response({"feed": feed, "key_version": version})

    app.router.add_post("/api/feeds/agent/{agent}/revoke", revoke)
    app.router.add_post("/api/feeds/{classroom}/revoke", revoke)
