"""HTTP routes of the media server: the signalling socket, rooms, tokens, stats, viewer."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from media_server.room import LessonInfo
from media_server.sfu import Sfu
from media_server.signalling import ERRORS_SENT, websocket_handler
from media_server.uptrack import SFU_LATENCY
from tongke.tokens import Claims, Role, TokenError, issue_token, verify_token
from tongke.turn import TurnSettings
from tongke.untrusted import BadInput, display_text_problem, loads

if TYPE_CHECKING:
    from tongke.app import AppContext

SFU = web.AppKey("sfu", Sfu)
ROOM_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
ADMIN = frozenset({Role.ADMIN})


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip()
    return request.query.get("token")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = loads(await request.read())
    except BadInput as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": {"code": exc.code, "message": exc.message}}),
            content_type="application/json",
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text='{"error": {"code": "bad_json", "message": "the body must be a JSON object"}}',
            content_type="application/json",
        )
    return body


def setup(app: web.Application, ctx: AppContext) -> Sfu:
    config = ctx.config
    sfu = Sfu(
        secret=ctx.secret,
        state_dir=config.data_dir,
        max_message_bytes=config.max_message_bytes,
        adaptive=config.adaptive_media,
    )
    app[SFU] = sfu
    # TURN (issue 8 item 8): credentials minted per join by tongke/turn.py.
    sfu.turn = TurnSettings.from_config(config.turn_urls, config.turn_secret, config.turn_ttl)

    def require(
        request: web.Request, room: str | None = None, roles: frozenset[Role] | None = ADMIN
    ) -> Claims:
        try:
            return verify_token(sfu.secret, _bearer(request), room=room, roles=roles)
        except TokenError as exc:
            status = 401 if exc.code in ("token_missing", "token_invalid", "token_expired") else 403
            raise _http_error(status, exc.code, exc.message) from None

    async def ws(request: web.Request) -> web.StreamResponse:
        return await websocket_handler(request, sfu)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "rooms": len(sfu.rooms.rooms)})

    async def list_rooms(request: web.Request) -> web.Response:
        require(request)
        return web.json_response(
            [
                {"room": r.id, "title": r.info.title, "participants": len(r.participants)}
                for r in sfu.rooms.rooms.values()
            ]
        )

    async def open_room(request: web.Request) -> web.Response:
        require(request)
        body = await _body(request)
        room_id = body.get("room")
        if not isinstance(room_id, str) or not ROOM_RE.match(room_id):
            return json_error(400, "bad_request", "room must match [A-Za-z0-9_.:-]{1,128}")
        points = body.get("points", [])
        if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
            return json_error(400, "bad_request", "points must be a list of classroom ids")
        times = [body.get("starts_at"), body.get("ends_at")]
        if not all(t is None or (isinstance(t, int | float) and t > 0) for t in times):
            return json_error(400, "bad_request", "starts_at/ends_at must be Unix seconds")
        if None not in times and times[1] <= times[0]:
            return json_error(400, "bad_request", "ends_at must be after starts_at")
        problem = _optional_text_problem(body, ("title", "master"), max_chars=128)
        if problem is not None:
            return json_error(400, "bad_request", problem)
        info = LessonInfo(
            room=room_id,
            title=str(body.get("title") or ""),
            master=str(body.get("master") or ""),
            points=points,
            starts_at=times[0],
            ends_at=times[1],
        )
        room = sfu.rooms.open(info)
        return web.json_response(room.describe(), status=201)

    async def get_room(request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        require(request, room=room_id, roles=None)
        room = sfu.rooms.get(room_id)
        if room is None:
            return json_error(404, "unknown_room", f"lesson {room_id!r} is not open")
        return web.json_response(room.describe())

    async def attendance(request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        require(request, room=room_id, roles=frozenset({Role.ADMIN, Role.MASTER, Role.OBSERVER}))
        room = sfu.rooms.get(room_id)
        if room is None:
            return json_error(404, "unknown_room", f"lesson {room_id!r} is not open")
        return web.json_response(room.classroom.report())

    async def close_room(request: web.Request) -> web.Response:
        require(request)
        if not await sfu.rooms.close(request.match_info["room"]):
            return json_error(404, "unknown_room", "no such room")
        return web.json_response({"closed": request.match_info["room"]})

    async def make_token(request: web.Request) -> web.Response:
        require(request)
        room_id = request.match_info["room"]
        if sfu.rooms.get(room_id) is None:
            return json_error(404, "unknown_room", f"lesson {room_id!r} is not open")
        body = await _body(request)
        try:
            role = Role(body.get("role", "observer"))
            ttl = int(body.get("ttl_s", 4 * 3600))
        except (ValueError, TypeError):
            return json_error(400, "bad_request", "role must be a known role; ttl_s a number")
        problem = _optional_text_problem(body, ("classroom", "name"))
        if problem is not None:
            return json_error(400, "bad_request", problem)
        classroom = str(body.get("classroom") or f"viewer-{role.value}")
        token = issue_token(
            sfu.secret,
            room=room_id,
            classroom=classroom,
            role=role,
            name=str(body.get("name") or ""),
            ttl_s=ttl,
        )
        return web.json_response(
            {"token": token, "url": lesson_url(ctx.config.base_url, room_id, token)}
        )

    async def stats(request: web.Request) -> web.Response:
        require(request)
        return web.json_response({**sfu.stats(), "signalling_errors": dict(ERRORS_SENT)})

    async def reset_latency(request: web.Request) -> web.Response:
        require(request)
        SFU_LATENCY.reset()
        return web.json_response({"reset": True})

    async def lesson_page(request: web.Request) -> web.StreamResponse:
        from tongke.app import WEB_ROOT

        return web.FileResponse(WEB_ROOT / "lesson.html")

    async def console_page(request: web.Request) -> web.StreamResponse:
        from tongke.app import WEB_ROOT

        return web.FileResponse(WEB_ROOT / "console" / "index.html")

    async def point_page(request: web.Request) -> web.StreamResponse:
        from tongke.app import WEB_ROOT

        return web.FileResponse(WEB_ROOT / "point" / "index.html")

    async def home(request: web.Request) -> web.StreamResponse:
        from tongke.app import WEB_ROOT

        return web.FileResponse(WEB_ROOT / "index.html")

    async def on_shutdown(app: web.Application) -> None:
        await sfu.close()

    app.router.add_get("/ws", ws)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/rooms", list_rooms)
    app.router.add_post("/api/rooms", open_room)
    app.router.add_get("/api/rooms/{room}", get_room)
    app.router.add_delete("/api/rooms/{room}", close_room)
    app.router.add_get("/api/rooms/{room}/attendance", attendance)
    app.router.add_post("/api/rooms/{room}/tokens", make_token)
    app.router.add_get("/api/stats", stats)
    app.router.add_post("/api/stats/reset-latency", reset_latency)
    app.router.add_get("/lesson/{room}", lesson_page)
    app.router.add_get("/console/{room}", console_page)
    app.router.add_get("/point/{classroom}", point_page)
    app.router.add_get("/", home)
    app.on_shutdown.append(on_shutdown)
    return sfu


def _optional_text_problem(
    body: dict[str, Any], keys: tuple[str, ...], *, max_chars: int = 64
) -> str | None:
    """What is wrong with the optional display texts `keys` of `body`, if anything."""
    for key in keys:
        value = body.get(key)
        if value is None or value == "":
            continue
        problem = display_text_problem(value, max_chars=max_chars)
        if problem is not None:
            return f"{key} {problem}"
    return None


def _http_error(status: int, code: str, message: str) -> web.HTTPException:
    cls = web.HTTPUnauthorized if status == 401 else web.HTTPForbidden
    return cls(
        text=json.dumps({"error": {"code": code, "message": message}}),
        content_type="application/json",
    )


def lesson_url(base_url: str, room: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/lesson/{room}?token={token}"
