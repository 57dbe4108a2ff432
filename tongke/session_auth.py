"""Sign-in for people: session cookie, CSRF, account admin, and room tokens from the session.

- `POST /api/auth/login` sets an HttpOnly, SameSite=Lax cookie (Secure behind https).
- Every state-changing request made with the cookie must carry the session's CSRF token
  in `X-CSRF-Token` (read it from `GET /api/auth/me`); a foreign `Origin` is refused.
- `POST /api/auth/room-token` mints a room token from the session, so a teacher opens
  the console with no token in sight: the account's classroom bindings decide the role.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from tongke.accounts import AccountError, AccountRole, Accounts, AccountSpec, SignedIn
from tongke.tokens import Role, issue_token

if TYPE_CHECKING:
    from tongke.app import AppContext

ACCOUNTS = web.AppKey("accounts", Accounts)
COOKIE = "tongke_session"
# Five wrong passwords for one username within this window lock it for the window.
LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 300.0
LESSON_DAYS = 7

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise AccountError("bad_json", "the body must be a JSON object")
    return body


def _status(exc: AccountError) -> int:
    return {
        "bad_credentials": 401,
        "unknown_account": 404,
        "exists": 409,
        "locked": 429,
    }.get(exc.code, 400)


class Auth:
    def __init__(self, accounts: Accounts, ctx: AppContext) -> None:
        self.accounts = accounts
        self.ctx = ctx
        self._failures: dict[str, deque[float]] = {}

    # -- the session --------------------------------------------------------------------

    async def current(self, request: web.Request) -> SignedIn | None:
        return await asyncio.to_thread(self.accounts.session, request.cookies.get(COOKIE))

    async def require(
        self, request: web.Request, roles: frozenset[AccountRole] | None = None
    ) -> SignedIn:
        user = await self.current(request)
        if user is None:
            raise web.HTTPUnauthorized(
                text='{"error": {"code": "not_signed_in", "message": "please sign in"}}',
                content_type="application/json",
            )
        if request.method not in ("GET", "HEAD"):
            self._check_csrf(request, user)
        if roles is not None and user.role not in roles:
            raise web.HTTPForbidden(
                text='{"error": {"code": "forbidden", "message": "your account may not do this"}}',
                content_type="application/json",
            )
        return user

    def _check_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(
                text='{"error": {"code": "bad_origin", "message": "cross-site request refused"}}',
                content_type="application/json",
            )

    def _check_csrf(self, request: web.Request, user: SignedIn) -> None:
        self._check_origin(request)
        sent = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent.encode(), user.csrf.encode()):
            raise web.HTTPForbidden(
                text='{"error": {"code": "csrf", "message": "missing or wrong X-CSRF-Token"}}',
                content_type="application/json",
            )

    def _locked(self, username: str) -> bool:
        now = time.monotonic()
        recent = self._failures.setdefault(username, deque())
        while recent and now - recent[0] > LOGIN_WINDOW_S:
            recent.popleft()
        return len(recent) >= LOGIN_FAILURES

    # -- routes -------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.StreamResponse:
        self._check_origin(request)
        body = await _json(request)
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise AccountError("bad_request", "login needs 'username' and 'password'")
        if self._locked(username):
            raise AccountError("locked", "too many wrong passwords; try again in 5 minutes")
        try:
            cookie, user = await asyncio.to_thread(self.accounts.sign_in, username, password)
        except AccountError:
            self._failures[username].append(time.monotonic())
            raise
        self._failures.pop(username, None)
        response = web.json_response({"account": user.account, "csrf": user.csrf})
        response.set_cookie(
            COOKIE,
            cookie,
            httponly=True,
            samesite="Lax",
            secure=self.ctx.config.base_url.startswith("https://"),
            path="/",
            max_age=12 * 3600,
        )
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        await self.require(request)
        await asyncio.to_thread(self.accounts.sign_out, request.cookies.get(COOKIE))
        response = web.json_response({"signed_out": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def me(self, request: web.Request) -> web.StreamResponse:
        user = await self.require(request)
        return web.json_response({"account": user.account, "csrf": user.csrf})

    async def list_accounts(self, request: web.Request) -> web.StreamResponse:
        await self.require(request, frozenset({AccountRole.ADMIN}))
        return web.json_response({"accounts": await asyncio.to_thread(self.accounts.list)})

    async def create_account(self, request: web.Request) -> web.StreamResponse:
        await self.require(request, frozenset({AccountRole.ADMIN}))
        spec = AccountSpec.parse(await _json(request), need_password=True)
        account = await asyncio.to_thread(self.accounts.create, spec)
        return web.json_response(account, status=201)

    async def update_account(self, request: web.Request) -> web.StreamResponse:
        user = await self.require(request, frozenset({AccountRole.ADMIN}))
        username = request.match_info["username"]
        changes = await _json(request)
        if username == user.username and (
            changes.get("disabled") is True or changes.get("role", "admin") != "admin"
        ):
            raise AccountError("bad_request", "you cannot disable or demote your own account")
        account = await asyncio.to_thread(self.accounts.update, username, changes)
        return web.json_response(account)

    async def import_accounts(self, request: web.Request) -> web.StreamResponse:
        await self.require(request, frozenset({AccountRole.ADMIN}))
        text = await request.text()
        accounts = await asyncio.to_thread(self.accounts.import_csv, text)
        return web.json_response({"imported": len(accounts), "accounts": accounts})

    async def room_token(self, request: web.Request) -> web.StreamResponse:
        """A room token for one lesson, minted from the session."""
        from media_server.http import SFU

        user = await self.require(request)
        body = await _json(request)
        room_id = body.get("room")
        if not isinstance(room_id, str) or not room_id:
            raise AccountError("bad_request", "this needs 'room': the lesson id")
        room = request.app[SFU].rooms.get(room_id)
        if room is None:
            return _error(404, "unknown_room", f"lesson {room_id!r} is not open")
        info = room.info
        mine = set(user.classrooms)
        wanted = body.get("as")
        if wanted not in (None, "tutor"):
            raise AccountError("bad_request", "'as' may only be 'tutor'")
        if wanted == "tutor":
            # The point's own teacher, on a phone or a second screen: controls for its
            # classroom and the private line to the master, no camera of its own.
            if not mine & set(info.points):
                return _error(403, "not_your_lesson", "none of your classrooms is a point here")
            role, classroom = Role.TUTOR, sorted(mine & set(info.points))[0]
        elif info.master in mine:
            role, classroom = Role.MASTER, info.master
        elif mine & set(info.points):
            role, classroom = Role.POINT, sorted(mine & set(info.points))[0]
        elif user.role in (AccountRole.ADMIN, AccountRole.SCHEDULER):
            role, classroom = Role.OBSERVER, f"ops-{user.username}"
        else:
            return _error(403, "not_your_lesson", "none of your classrooms takes this lesson")
        ends = info.ends_at or time.time() + 3 * 3600
        ttl = max(600, int(ends + 3600 - time.time()))
        name = self._classroom_name(request, classroom) or user.account["display_name"]
        if role is Role.TUTOR:
            name = f"{name} · {user.account['display_name']}"[:60]
        token = issue_token(
            self.ctx.secret,
            room=room_id,
            classroom=classroom,
            role=role,
            name=name,
            ttl_s=ttl,
            subject=f"{classroom}:{user.username}:{uuid.uuid4().hex[:8]}",
        )
        return web.json_response(
            {"token": token, "room": room_id, "role": role.value, "classroom": classroom}
        )

    def _classroom_name(self, request: web.Request, classroom: str) -> str | None:
        from scheduler.api import DB
        from scheduler.school import Classroom

        try:
            with request.app[DB].session() as db:
                row = db.get(Classroom, classroom)
                return row.name if row else None
        except Exception:
            return None

    async def supervise(self, request: web.Request) -> web.StreamResponse:
        """Every open lesson with people in it (or live), each point's link quality."""
        from media_server.classroom import supervision
        from media_server.http import SFU

        await self.require(request, frozenset({AccountRole.ADMIN, AccountRole.SCHEDULER}))
        rooms = request.app[SFU].rooms.rooms.values()
        lessons = [
            supervision(room)
            for room in rooms
            if room.participants or room.classroom.phase.value == "live"
        ]
        lessons.sort(key=lambda x: (x["phase"] != "live", str(x["title"])))
        return web.json_response({"lessons": lessons})

    async def lessons(self, request: web.Request) -> web.StreamResponse:
        """Today's and the coming week's lessons of the signed-in teacher's classrooms."""
        from scheduler.api import DB
        from scheduler.lessons import lessons_between, role_of

        user = await self.require(request)
        now = dt.datetime.now(dt.UTC)

        def work() -> list[dict[str, Any]]:
            out = []
            try:
                with request.app[DB].session() as db:
                    start = now - dt.timedelta(hours=12)
                    for classroom in user.classrooms:
                        for info in lessons_between(
                            db, start, now + dt.timedelta(days=LESSON_DAYS), classroom_id=classroom
                        ):
                            role = role_of(info, classroom)
                            if info.end < now or role is None:
                                continue
                            item = info.as_dict()
                            item["classroom_id"] = classroom
                            item["role"] = role.value
                            item["url"] = (
                                f"/console/{info.room_id}"
                                if role is Role.MASTER
                                else f"/point/{classroom}?room={info.room_id}"
                            )
                            if role is Role.POINT:
                                item["tutor_url"] = f"{item['url']}&as=tutor"
                            out.append(item)
            except ValueError:
                return []  # no published term yet
            out.sort(key=lambda x: (str(x["start"]), str(x["room_id"])))
            return out

        return web.json_response({"lessons": await asyncio.to_thread(work)})


# Other packages' pages for signed-in people (the ops page) check sessions through it.
AUTH = web.AppKey("auth", Auth)


@web.middleware
async def _account_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AccountError as exc:
        if not request.path.startswith("/api/auth") and not request.path.startswith(
            "/api/accounts"
        ):
            raise
        return _error(_status(exc), exc.code, exc.message)


def setup(app: web.Application, ctx: AppContext) -> Auth:
    from tongke.app import WEB_ROOT

    accounts = Accounts(ctx.config.resolved_database_url())
    app[ACCOUNTS] = accounts
    auth = Auth(accounts, ctx)
    app[AUTH] = auth
    app.middlewares.append(_account_errors)

    def page(name: str) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(WEB_ROOT / "account" / name)

        return serve

    async def close(app: web.Application) -> None:
        accounts.dispose()

    app.on_cleanup.append(close)
    r = app.router
    r.add_post("/api/auth/login", auth.login)
    r.add_post("/api/auth/logout", auth.logout)
    r.add_get("/api/auth/me", auth.me)
    r.add_post("/api/auth/room-token", auth.room_token)
    r.add_get("/api/auth/lessons", auth.lessons)
    r.add_get("/api/supervisor", auth.supervise)
    r.add_get("/api/accounts", auth.list_accounts)
    r.add_post("/api/accounts", auth.create_account)
    r.add_post("/api/accounts/import", auth.import_accounts)
    r.add_patch("/api/accounts/{username}", auth.update_account)
    r.add_get("/login", page("login.html"))
    r.add_get("/me", page("me.html"))
    r.add_get("/admin/accounts", page("admin.html"))

    async def supervisor_page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_ROOT / "supervisor" / "index.html")

    r.add_get("/supervisor", supervisor_page)
    return auth
