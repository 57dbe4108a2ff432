"""HTTP routes of the media server: the signalling socket, rooms, tokens, stats, viewer."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import MultiDict

from media_server.room import LessonInfo, Rooms
from media_server.sfu import Sfu
from media_server.signalling import ERRORS_SENT, websocket_handler
from media_server.uptrack import SFU_LATENCY
from tongke.audit import AUDIT
from tongke.lessoncode import CodeBook, cookie_name, issue_code
from tongke.lessoncode import lesson_url as code_url
from tongke.ratelimit import RATE_LIMITS
from tongke.tokens import (
    FEEDS_PREFIX,
    GLOBAL_ROLES,
    Claims,
    Role,
    TokenError,
    feed_cookie_name,
    issue_token,
    request_token,
    verify_token,
)
from tongke.turn import TurnSettings
from tongke.untrusted import BadInput, display_text_problem, loads

if TYPE_CHECKING:
    from tongke.app import AppContext

SFU = web.AppKey("sfu", Sfu)
ROOM_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
ADMIN = frozenset({Role.ADMIN})
MAX_TTL_S = 30 * 24 * 3600


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


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


def setup(app: web.Application, ctx: AppContext, *, rooms: Rooms | None = None) -> Sfu:
    config = ctx.config
    sfu = Sfu(
        secret=ctx.secret,
        state_dir=config.data_dir,
        max_message_bytes=config.max_message_bytes,
        adaptive=config.adaptive_media,
        rooms=rooms,
        audio_red=config.audio_red,
    )
    app[SFU] = sfu
    # TURN (issue 8 item 8): credentials minted per join by tongke/turn.py.
    sfu.turn = TurnSettings.from_config(config.turn_urls, config.turn_secret, config.turn_ttl)
    # Spent codes in the server's database: a restart never makes a used link work again.
    codes = CodeBook(ctx.secret, config.resolved_database_url())
    audit = app[AUDIT]

    def require(
        request: web.Request, room: str = "*", roles: frozenset[Role] | None = ADMIN
    ) -> Claims:
        """The caller's claims if its token opens `room` ("*": every room) in `roles`.

        An admin token scoped to one lesson is an admin of that lesson only: routes about
        all rooms ask for room "*", which only global (admin/scheduler) tokens hold.
        """
        try:
            return verify_token(sfu.secret, request_token(request), room=room, roles=roles)
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
        claims = require(request)
        body = await _body(request)
        room_id = body.get("room")
        if not isinstance(room_id, str) or not ROOM_RE.match(room_id):
            return json_error(400, "bad_request", "room must match [A-Za-z0-9_.:-]{1,128}")
        points = body.get("points", [])
        if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
            return json_error(400, "bad_request", "points must be a list of classroom ids")
        starts_at, ends_at = body.get("starts_at"), body.get("ends_at")
        if not all(
            t is None or (isinstance(t, int | float) and t > 0) for t in (starts_at, ends_at)
        ):
            return json_error(400, "bad_request", "starts_at/ends_at must be Unix seconds")
        if starts_at is not None and ends_at is not None and ends_at <= starts_at:
            return json_error(400, "bad_request", "ends_at must be after starts_at")
        problem = _optional_text_problem(body, ("title", "master"), max_chars=128)
        if problem is not None:
            return json_error(400, "bad_request", problem)
        info = LessonInfo(
            room=room_id,
            title=str(body.get("title") or ""),
            master=str(body.get("master") or ""),
            points=points,
            starts_at=starts_at,
            ends_at=ends_at,
        )
        room = sfu.rooms.open(info)
        audit.record("room_opened", claims=claims, room=room_id, ip=request.remote)
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
        room_id = request.match_info["room"]
        claims = require(request, room=room_id)
        if not await sfu.rooms.close(room_id):
            return json_error(404, "unknown_room", "no such room")
        audit.record("room_closed", claims=claims, room=room_id, ip=request.remote)
        return web.json_response({"closed": room_id})

    async def make_token(request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        claims = require(request, room=room_id)
        if sfu.rooms.get(room_id) is None:
            return json_error(404, "unknown_room", f"lesson {room_id!r} is not open")
        body = await _body(request)
        try:
            role = Role(body.get("role", "observer"))
            ttl = body.get("ttl_s", 4 * 3600)
            if (
                isinstance(ttl, bool)
                or not isinstance(ttl, int | float)
                or not 0 < ttl <= MAX_TTL_S
            ):
                raise ValueError(ttl)
            ttl = int(ttl)
        except (ValueError, TypeError):
            return json_error(
                400, "bad_request", f"role must be a known role; ttl_s 1..{MAX_TTL_S} seconds"
            )
        if role in GLOBAL_ROLES and claims.room != "*":
            return json_error(403, "forbidden", "only a global admin may mint admin tokens")
        problem = _optional_text_problem(body, ("classroom", "name"))
        if problem is not None:
            return json_error(400, "bad_request", problem)
        classroom = str(body.get("classroom") or f"viewer-{role.value}")
        name = str(body.get("name") or "")
        token = issue_token(
            sfu.secret, room=room_id, classroom=classroom, role=role, name=name, ttl_s=ttl
        )
        code = issue_code(
            sfu.secret,
            room=room_id,
            classroom=classroom,
            role=role,
            name=name,
            token_ttl_s=ttl,
            code_ttl_s=config.lesson_code_ttl_s,
        )
        audit.record(
            "token_minted",
            claims=claims,
            room=room_id,
            ip=request.remote,
            classroom=classroom,
            minted_role=role.value,
            ttl_s=ttl,
        )
        return web.json_response(
            {
                "token": token,
                "url": code_url(config.base_url, room_id, code),
                "code_expires_in_s": config.lesson_code_ttl_s,
            }
        )

    async def exchange(request: web.Request) -> web.Response:
        """A lesson link's one-time code (or this browser's lesson cookie) -> room token."""
        body = await _body(request)
        room_id = body.get("room")
        if not isinstance(room_id, str) or not ROOM_RE.match(room_id):
            return json_error(400, "bad_request", "room must be a lesson id")
        code = body.get("code")
        if code is None:
            saved = request.cookies.get(cookie_name(room_id))
            try:
                claims = verify_token(sfu.secret, saved, room=room_id)
            except TokenError as exc:
                return json_error(401, exc.code, exc.message)
            return web.json_response({"token": saved, "room": room_id, "role": claims.role})
        try:
            token, data = await asyncio.to_thread(codes.redeem, code)
            claims = verify_token(sfu.secret, token, room=room_id)
        except TokenError as exc:
            status = 401 if exc.code != "token_wrong_room" else 403
            return json_error(status, exc.code, exc.message)
        audit.record(
            "code_exchanged", claims=claims, room=room_id, ip=request.remote, code=data["jti"][:8]
        )
        response = web.json_response({"token": token, "room": room_id, "role": claims.role})
        _credential_cookie(response, cookie_name(room_id), token, claims, "/api/lesson/")
        return response

    async def stats(request: web.Request) -> web.Response:
        require(request)
        limits = request.app[RATE_LIMITS]
        return web.json_response(
            {
                **sfu.stats(),
                "signalling_errors": dict(ERRORS_SENT),
                "rate_limited": dict(limits.refused),
            }
        )

    async def reset_latency(request: web.Request) -> web.Response:
        require(request)
        SFU_LATENCY.reset()
        from media_server.relay import RELAY

        for link in request.app[RELAY].links.values():
            link.stats.reset_delays()
        return web.json_response({"reset": True})

    async def lesson_page(request: web.Request) -> web.StreamResponse:
        from tongke.app import WEB_ROOT

        moved = _move_lesson_token(request, request.match_info["room"])
        if moved is not None:
            return moved
        response = web.FileResponse(WEB_ROOT / "lesson.html")
        # The page's address may still hold a code (or an old link's token): never send
        # it to other sites as a Referer.
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    async def console_page(request: web.Request) -> web.StreamResponse:
        from tongke.app import WEB_ROOT

        return web.FileResponse(WEB_ROOT / "console" / "index.html")

    async def point_page(request: web.Request) -> web.StreamResponse:
        from tongke.app import WEB_ROOT

        if request.query.get("feed", "1") != "1":
            return _strip_feed_token(request, request.match_info["classroom"])

        return web.FileResponse(WEB_ROOT / "point" / "index.html")

    async def home(request: web.Request) -> web.StreamResponse:
        from tongke.app import WEB_ROOT

        return web.FileResponse(WEB_ROOT / "index.html")

    def _stripped(request: web.Request, name: str, marker: str | None = None) -> str:
        """This request's address without the credential `name` (`marker` in its place)."""
        query = MultiDict(request.query)
        query.popall(name, None)
        if marker is not None:
            query[name] = marker
        return str(request.rel_url.with_query(query))

    def _credential_cookie(
        response: web.StreamResponse, name: str, token: str, claims: Claims, path: str
    ) -> None:
        response.set_cookie(
            name,
            token,
            max_age=max(0, claims.expires_at - int(time.time())),
            path=path,
            httponly=True,
            samesite="Strict",
            secure=config.base_url.startswith("https://"),
        )

    def _move_lesson_token(request: web.Request, room_id: str) -> web.StreamResponse | None:
        """An old lesson link (`?token=`) with a token for this lesson: the token moves
        into this browser's HttpOnly lesson cookie and out of the address bar before the
        page is shown; the page then gets it from `POST /api/lesson/exchange` like a
        reload does. A token that opens nothing here (expired, forged, another lesson's)
        is left to the page, which drops it from the address at once and says what is
        wrong with the link."""
        token = request.query.get("token", "")
        try:
            claims = verify_token(sfu.secret, token, room=room_id)
        except TokenError:
            return None
        response = web.HTTPSeeOther(_stripped(request, "token"))
        response.headers["Referrer-Policy"] = "no-referrer"
        _credential_cookie(response, cookie_name(room_id), token, claims, "/api/lesson/")
        audit.record("link_token_moved", claims=claims, room=room_id, ip=request.remote)
        return response

    def _strip_feed_token(request: web.Request, classroom: str) -> web.StreamResponse:
        """A point console's feed link (`?feed=TOKEN`): the token moves into an HttpOnly
        cookie the console's feed requests carry, and the address keeps only `feed=1`."""
        response = web.HTTPSeeOther(_stripped(request, "feed", "1"))
        response.headers["Referrer-Policy"] = "no-referrer"
        token = request.query["feed"]
        try:
            claims = verify_token(sfu.secret, token)
        except TokenError:
            return response  # the console shows the feed's refusal
        if claims.classroom == classroom:
            _credential_cookie(response, feed_cookie_name(classroom), token, claims, FEEDS_PREFIX)
        return response

    async def on_shutdown(app: web.Application) -> None:
        await sfu.close()
        codes.close()

    app.router.add_get("/ws", ws)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/rooms", list_rooms)
    app.router.add_post("/api/rooms", open_room)
    app.router.add_get("/api/rooms/{room}", get_room)
    app.router.add_delete("/api/rooms/{room}", close_room)
    app.router.add_get("/api/rooms/{room}/attendance", attendance)
    app.router.add_post("/api/rooms/{room}/tokens", make_token)
    app.router.add_post("/api/lesson/exchange", exchange)
    app.router.add_get("/api/stats", stats)
    app.router.add_post("/api/stats/reset-latency", reset_latency)
    app.router.add_get("/lesson/{room}", lesson_page)
    app.router.add_get("/console/{room}", console_page)
    app.router.add_get("/point/{classroom}", point_page)
    app.router.add_get("/", home)
    app.on_shutdown.append(on_shutdown)
    # Cascaded lessons: this node as an edge of another, and the links between them.
    from media_server.relay import setup as setup_relay

    setup_relay(app, ctx, sfu, require, json_error, _body)
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
    """A link holding a token itself: for scripts and tests on one machine only.

    Links handed to people carry a one-time code (tongke/lessoncode.py); the lesson page
    still accepts `?token=` and removes it from the address bar at once.
    """
    return f"{base_url.rstrip('/')}/lesson/{room}?token={token}"
