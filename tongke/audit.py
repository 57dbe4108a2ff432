"""The audit log: who did what, when, from where — stored in the server's database.

Recorded: rooms opened and closed, tokens minted (and lesson codes exchanged), publish
and unpublish, plans published, replays opened and downloaded, replay visibility
changes, sign-ins. Tokens themselves are never recorded, only who held them.

Writing never blocks the event loop: events are queued and written in a thread in
batches. Routes of other packages are audited by `audit_middleware` from their paths, so
those packages need no audit code of their own; code that knows more calls `record`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from tongke.database import create_schema
from tongke.tokens import Claims, TokenError, request_token, verify_token

log = logging.getLogger(__name__)

ACTIONS = (
    "room_opened",
    "room_closed",
    "token_minted",
    "token_revoked",
    "code_exchanged",
    "published",
    "unpublished",
    "plan_published",
    "replay_opened",
    "replay_downloaded",
    "replay_visibility_changed",
    "sign_in",
    "sign_in_failed",
    "link_token_moved",
    "relay_edge_added",
    "relay_edge_removed",
)
CSV_COLUMNS = ("at", "action", "actor", "role", "room", "ip", "detail")

_metadata = sa.MetaData()
events = sa.Table(
    "audit_events",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("action", sa.String(40), nullable=False, index=True),
    sa.Column("actor", sa.String(200), nullable=False, default=""),
    sa.Column("role", sa.String(20), nullable=False, default=""),
    sa.Column("room", sa.String(200), nullable=False, default="", index=True),
    sa.Column("ip", sa.String(64), nullable=False, default=""),
    sa.Column("detail", sa.Text, nullable=False, default="{}"),
)


@dataclass(frozen=True)
class Event:
    action: str
    actor: str = ""
    role: str = ""
    room: str = ""
    ip: str = ""
    detail: str = "{}"
    at: float = 0.0


class AuditLog:
    def __init__(self, database_url: str) -> None:
        connect_args = {"timeout": 30} if database_url.startswith("sqlite") else {}
        self.engine = sa.create_engine(database_url, connect_args=connect_args)
        create_schema(_metadata, self.engine)
        self._pending: list[Event] = []
        self._writer: asyncio.Task[None] | None = None

    def record(
        self,
        action: str,
        *,
        claims: Claims | None = None,
        actor: str = "",
        role: str = "",
        room: str = "",
        ip: str | None = "",
        **detail: Any,
    ) -> None:
        """Queue one event; written within a moment, or now when no event loop runs."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        if claims is not None:
            actor = actor or claims.subject or claims.classroom
            role = role or claims.role.value
        event = Event(
            action=action,
            actor=actor[:200],
            role=role[:20],
            room=room[:200],
            ip=(ip or "")[:64],
            detail=json.dumps(detail, ensure_ascii=False, default=str),
            at=time.time(),
        )
        self._pending.append(event)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.flush_now()
            return
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_soon())

    async def _write_soon(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._write, batch)
            except Exception:
                log.exception("audit: %d events could not be written", len(batch))

    async def flush(self) -> None:
        if self._writer is not None:
            await self._writer
        if self._pending:
            await self._write_soon()

    def flush_now(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._write(batch)

    def _write(self, batch: list[Event]) -> None:
        with self.engine.begin() as conn:
            conn.execute(events.insert(), [e.__dict__ for e in batch])

    def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        action: str | None = None,
        room: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        stmt = sa.select(events).order_by(events.c.id.desc()).limit(limit)
        if since is not None:
            stmt = stmt.where(events.c.at >= since)
        if until is not None:
            stmt = stmt.where(events.c.at < until)
        if action:
            stmt = stmt.where(events.c.action == action)
        if room:
            stmt = stmt.where(events.c.room == room)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return [
            {
                "at": row["at"],
                "action": row["action"],
                "actor": row["actor"],
                "role": row["role"],
                "room": row["room"],
                "ip": row["ip"],
                "detail": json.loads(row["detail"] or "{}"),
            }
            for row in rows
        ]

    def close(self) -> None:
        self.flush_now()
        self.engine.dispose()


def to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV for a spreadsheet; cells that a spreadsheet would run as formulas are quoted."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["at"])) + "Z"
        cells = [at, row["action"], row["actor"], row["role"], row["room"], row["ip"]]
        cells.append(json.dumps(row["detail"], ensure_ascii=False))
        writer.writerow([_neutral(c) for c in cells])
    return out.getvalue()


def _neutral(cell: str) -> str:
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


AUDIT = web.AppKey("audit_log", AuditLog)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Routes of other packages, audited from outside: (method, path pattern) -> action.
_ROUTE_ACTIONS: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/api/schedule/publish$"), "plan_published"),
    ("POST", re.compile(r"^/api/schedule/lessons/(?P<room>[^/]+)/tokens$"), "token_minted"),
    ("POST", re.compile(r"^/api/schedule/feeds/(?:agent/)?(?P<feed>[^/]+)/token$"), "token_minted"),
    ("GET", re.compile(r"^/api/replays/(?P<room>[^/]+)$"), "replay_opened"),
    (
        "GET",
        re.compile(r"^/replay-files/\d+/[^/]+/(?P<room>[^/]+)/(?P<file>.*\.mp4)$"),
        "replay_downloaded",
    ),
    (
        "*",
        re.compile(r"^/api/replays/(?P<room>[^/]+)/visibility$"),
        "replay_visibility_changed",
    ),
]


def _claims(request: web.Request, secret: str) -> Claims | None:
    try:
        return verify_token(secret, request_token(request))
    except TokenError:
        return None


async def _sign_in(request: web.Request, response: web.StreamResponse) -> None:
    """Sign-ins and failed sign-ins, with the username tried (never the password)."""
    try:
        body = await request.json()  # aiohttp keeps the body the handler already read
        username = str(body.get("username", ""))[:100] if isinstance(body, dict) else ""
    except (ValueError, UnicodeDecodeError):
        username = ""
    action = "sign_in" if response.status < 400 else "sign_in_failed"
    request.app[AUDIT].record(action, actor=username, ip=request.remote, status=response.status)


def audit_middleware(
    secret: str,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.method == "POST" and request.path == "/api/auth/login":
            await _sign_in(request, response)
            return response
        if response.status >= 400 or request.method in ("HEAD", "OPTIONS"):
            return response
        for method, pattern, action in _ROUTE_ACTIONS:
            if method not in ("*", request.method):
                continue
            match = pattern.match(request.path)
            if match is None:
                continue
            groups = match.groupdict()
            detail = {k: v for k, v in groups.items() if k != "room"}
            request.app[AUDIT].record(
                action,
                claims=_claims(request, secret),
                room=groups.get("room", ""),
                ip=request.remote,
                **detail,
            )
            break
        return response

    return middleware


def _since(value: str | None) -> float | None:
    """An ISO date/time (UTC) or seconds since the epoch from a query string."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    import datetime as dt

    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (2026-09-01 or 2026-09-01T08:00)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def setup_routes(app: web.Application, secret: str) -> None:
    """GET /api/audit (JSON) and /api/audit.csv: for global admins only."""
    from tongke.tokens import Role

    admins = frozenset({Role.ADMIN})

    def rows(request: web.Request) -> list[dict[str, Any]] | web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        try:
            verify_token(secret, token, room="*", roles=admins)
        except TokenError as exc:
            status = 401 if exc.code in ("token_missing", "token_invalid", "token_expired") else 403
            return web.json_response(
                {"error": {"code": exc.code, "message": exc.message}}, status=status
            )
        q = request.query
        try:
            limit = min(int(q.get("limit", "1000")), 100_000)
            return app[AUDIT].query(
                since=_since(q.get("since")),
                until=_since(q.get("until")),
                action=q.get("action") or None,
                room=q.get("room") or None,
                limit=limit,
            )
        except ValueError as exc:
            return web.json_response(
                {"error": {"code": "bad_request", "message": str(exc)}}, status=400
            )

    async def as_json(request: web.Request) -> web.Response:
        await app[AUDIT].flush()
        found = rows(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response({"events": found, "count": len(found)})

    async def as_csv(request: web.Request) -> web.Response:
        await app[AUDIT].flush()
        found = rows(request)
        if isinstance(found, web.Response):
            return found
        # A BOM so that Excel on a Chinese Windows reads the UTF-8 correctly.
        return web.Response(
            body=("\ufeff" + to_csv(found)).encode("utf-8"),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": 'attachment; filename="tongke-audit.csv"'},
        )

    app.router.add_get("/api/audit", as_json)
    app.router.add_get("/api/audit.csv", as_csv)
