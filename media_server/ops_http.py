"""The ops page's routes: every open lesson and each classroom's last hour of quality.

For county supervisors signed in with an admin or scheduler account (the same people
as the supervisor page, tongke/session_auth.py), or a global admin token; the page
itself is web_client/ops/. Behind a front with media workers (tongke/cluster) each
worker samples its own lessons: the front asks the processes its `PEERS` names and
shows their lessons with its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import TYPE_CHECKING, Any

from aiohttp import web

from media_server.ops import HISTORY_S, QualityHistory, classrooms_of, public
from tongke.accounts import AccountRole
from tongke.metrics import PEER_TIMEOUT_S, PEERS
from tongke.tokens import Role, TokenError, issue_token, verify_token

if TYPE_CHECKING:
    from media_server.sfu import Sfu
    from tongke.app import AppContext

log = logging.getLogger(__name__)

HISTORY = web.AppKey("ops_history", QualityHistory)
SUPERVISORS = frozenset({AccountRole.ADMIN, AccountRole.SCHEDULER})


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def lessons_of(sfu: Sfu, history: QualityHistory) -> list[dict[str, Any]]:
    """This process's open lessons with people in them (or live), each classroom's newest
    sample."""
    latest = history.latest()
    lessons: list[dict[str, Any]] = []
    for room in sfu.rooms.rooms.values():
        phase = room.classroom.phase.value
        if not room.participants and phase != "live":
            continue
        present = classrooms_of(room)
        classrooms = []
        for (room_id, classroom), q in sorted(latest.items()):
            if room_id != room.id:
                continue
            members = present.get(classroom, ("", []))[1]
            classrooms.append(
                {
                    "classroom": classroom,
                    "role": history.roles.get((room_id, classroom)),
                    "name": members[0].name if members else classroom,
                    "present": bool(members),
                    "latest": public(q),
                }
            )
        lessons.append(
            {
                "room": room.id,
                "title": room.info.title,
                "phase": phase,
                "participants": len(room.participants),
                "classrooms": classrooms,
            }
        )
    return lessons


async def _ask_peers(
    peers: list[tuple[str, str]], path: str, token: str
) -> list[tuple[int, dict[str, Any]]]:
    """(status, body) of GET `path` from every peer that answered."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {token}"}

    async def one(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
        async with session.get(url.rstrip("/") + path, headers=headers) as resp:
            return resp.status, await resp.json()

    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(
            *(one(session, url) for _, url in peers), return_exceptions=True
        )
    answers = []
    for (name, _), result in zip(peers, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("ops data of %s unavailable: %s", name, result)
        else:
            answers.append(result)
    return answers


def setup(app: web.Application, ctx: AppContext, sfu: Sfu) -> QualityHistory:
    from tongke.app import WEB_ROOT
    from tongke.session_auth import AUTH

    history = QualityHistory(sfu.rooms, interval_s=ctx.config.ops_sample_s)
    app[HISTORY] = history

    async def require(request: web.Request) -> None:
        """A global admin token (a front asking its workers), or a supervisor's session."""
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            try:
                verify_token(ctx.secret, auth[7:].strip(), room="*", roles=frozenset({Role.ADMIN}))
                return
            except TokenError as exc:
                refused = exc.code in ("token_missing", "token_invalid", "token_expired")
                cls = web.HTTPUnauthorized if refused else web.HTTPForbidden
                raise cls(
                    text=json.dumps({"error": {"code": exc.code, "message": exc.message}}),
                    content_type="application/json",
                ) from None
        if AUTH not in request.app:
            raise web.HTTPUnauthorized(
                text='{"error": {"code": "not_signed_in", "message": "please sign in"}}',
                content_type="application/json",
            )
        await request.app[AUTH].require(request, SUPERVISORS)

    def peers(request: web.Request) -> tuple[list[tuple[str, str]], str]:
        found = request.app[PEERS]() if PEERS in request.app else []
        token = issue_token(ctx.secret, room="*", classroom="ops", role=Role.ADMIN, ttl_s=60)
        return found, token

    async def overview(request: web.Request) -> web.Response:
        await require(request)
        lessons = lessons_of(sfu, history)
        others, token = peers(request)
        for status, body in await _ask_peers(others, "/api/ops", token) if others else []:
            if status == 200:
                lessons.extend(body.get("lessons", []))
        lessons.sort(key=lambda x: (x["phase"] != "live", str(x["title"]), x["room"]))
        return web.json_response(
            {"lessons": lessons, "interval_s": history.interval_s, "history_s": HISTORY_S}
        )

    async def lesson(request: web.Request) -> web.Response:
        await require(request)
        room_id = request.match_info["room"]
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            since = math.nan
        if not math.isfinite(since):
            return _error(400, "bad_request", "since must be Unix seconds")
        classrooms = history.lesson(room_id, since)
        if not classrooms and room_id not in sfu.rooms.rooms:
            others, token = peers(request)
            path = f"{request.rel_url.path}?since={since}"
            for status, body in await _ask_peers(others, path, token) if others else []:
                if status == 200:
                    return web.json_response(body)
            return _error(404, "unknown_room", f"lesson {room_id!r} is not open")
        return web.json_response(
            {"room": room_id, "interval_s": history.interval_s, "classrooms": classrooms}
        )

    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_ROOT / "ops" / "index.html")

    async def start(app: web.Application) -> None:
        history.start()

    async def stop(app: web.Application) -> None:
        await history.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/ops", page)
    app.router.add_get("/api/ops", overview)
    app.router.add_get("/api/ops/{room}", lesson)
    return history
