"""The ops page's routes: every open lesson and each classroom's last hour of quality.

For county supervisors signed in with an admin or scheduler account (the same people
as the supervisor page, tongke/session_auth.py); the page itself is web_client/ops/.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from aiohttp import web

from media_server.ops import HISTORY_S, QualityHistory, classrooms_of, public
from tongke.accounts import AccountRole

if TYPE_CHECKING:
    from media_server.sfu import Sfu
    from tongke.app import AppContext

HISTORY = web.AppKey("ops_history", QualityHistory)
SUPERVISORS = frozenset({AccountRole.ADMIN, AccountRole.SCHEDULER})


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def setup(app: web.Application, ctx: AppContext, sfu: Sfu) -> QualityHistory:
    from tongke.app import WEB_ROOT
    from tongke.session_auth import AUTH

    history = QualityHistory(sfu.rooms, interval_s=ctx.config.ops_sample_s)
    app[HISTORY] = history

    async def overview(request: web.Request) -> web.Response:
        await request.app[AUTH].require(request, SUPERVISORS)
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
        lessons.sort(key=lambda x: (x["phase"] != "live", str(x["title"]), x["room"]))
        return web.json_response(
            {"lessons": lessons, "interval_s": history.interval_s, "history_s": HISTORY_S}
        )

    async def lesson(request: web.Request) -> web.Response:
        await request.app[AUTH].require(request, SUPERVISORS)
        room_id = request.match_info["room"]
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            since = math.nan
        if not math.isfinite(since):
            return _error(400, "bad_request", "since must be Unix seconds")
        classrooms = history.lesson(room_id, since)
        if not classrooms and room_id not in sfu.rooms.rooms:
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
