"""REST API under /api/schedule/ and the scheduler page at /scheduler.

Writes need a scheduler or admin token (`Authorization: Bearer ...`). A classroom's feed
is read with that classroom's feed token (header or `?token=`, since calendar apps can
only fetch a URL), which opens nothing else.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from scheduler.db import Database
from scheduler.publicurl import write_public_url
from tongke.app import CTX, AppContext
from tongke.lessoncode import CODE_TTL_S, issue_code, lesson_url
from tongke.tokens import Claims, Role, TokenError, request_token, verify_token

WEB_ROOT = Path(__file__).resolve().parent.parent / "web_client"
WRITERS = frozenset({Role.SCHEDULER, Role.ADMIN})
DB = web.AppKey("scheduler_db", Database)
JOBS = web.AppKey("scheduler_jobs", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


def base_url(request: web.Request) -> str:
    """The configured public URL, else the address this request reached us at."""
    cfg = request.app[CTX].config
    if cfg.public_url:
        return cfg.public_url.rstrip("/")
    return f"{request.scheme}://{request.host}"


def _status_of(err: TokenError) -> int:
    return 401 if err.code in ("token_missing", "token_invalid", "token_expired") else 403


def writer(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CTX]
        try:
            verify_token(ctx.secret, request_token(request), room="*", roles=WRITERS)
        except TokenError as err:
            return _error(_status_of(err), err.code, err.message)
        try:
            return await handler(request)
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))

    return wrapped


async def _run(request: web.Request, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Run blocking database and solver work off the event loop, in one transaction."""
    db = request.app[DB]

    def work() -> Any:
        with db.session() as session:
            return fn(session, *args, **kw)

    return await asyncio.to_thread(work)


async def _json(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:  # the body may already be read (and checked) upstream
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


async def page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB_ROOT / "scheduler.html")


@writer
async def county(request: web.Request) -> web.StreamResponse:
    from scheduler.service import county_summary

    return web.json_response(await _run(request, county_summary))


# A city's county files (tier L is ~1.1 MB); read in chunks, never past this size.
IMPORT_LIMIT_BYTES = 32 * 1024 * 1024


async def _read_limited(stream: Any, limit: int, used: int = 0) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = (
            await stream.read_chunk(256 * 1024)
            if hasattr(stream, "read_chunk")
            else (await stream.readany())
        )
        if not chunk:
            return b"".join(chunks)
        used += len(chunk)
        if used > limit:
            raise _TooLarge
        chunks.append(chunk)


class _TooLarge(Exception):
    pass


async def _import_body(request: web.Request) -> tuple[dict[str, str], dict[str, str], bool]:
    """Files (kind -> text), how each was decoded, and `replace`, from either body form:
    multipart/form-data with one file per kind (the page sends the files' bytes as they
    are, so GBK files arrive undecoded), or JSON {"files": {kind: text}, "replace": bool}."""
    from scheduler.csvio import decode_csv

    files: dict[str, str] = {}
    encodings: dict[str, str] = {}
    if request.content_type == "multipart/form-data":
        replace = False
        used = 0
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValueError("nested multipart bodies are not accepted")
            data = await _read_limited(part, IMPORT_LIMIT_BYTES, used)
            used += len(data)
            if part.name == "replace":
                replace = data.strip().lower() in (b"1", b"true", b"on", b"yes")
                continue
            kind = (part.filename or part.name or "").rsplit("/", 1)[-1]
            kind = kind[:-4] if kind.lower().endswith(".csv") else kind
            try:
                files[kind], encodings[kind] = decode_csv(data)
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"{kind}.csv is neither UTF-8 nor GBK/GB18030 text ({exc})"
                ) from None
        return files, encodings, replace
    # The server's JSON guard (tongke.untrusted) has read and checked a JSON body already
    # (up to the server's message limit); read() gives that cached copy. Otherwise stream.
    if request.content.at_eof():
        raw = await request.read()
        if len(raw) > IMPORT_LIMIT_BYTES:
            raise _TooLarge
    else:
        raw = await _read_limited(request.content, IMPORT_LIMIT_BYTES)
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    got = body.get("files")
    if not isinstance(got, dict) or not got or not all(isinstance(v, str) for v in got.values()):
        raise ValueError('send {"files": {"schools": "<csv text>", ...}}')
    return got, {k: "UTF-8" for k in got}, bool(body.get("replace"))


@writer
async def import_files(request: web.Request) -> web.StreamResponse:
    from scheduler.csvio import import_csv

    try:
        files, encodings, replace = await _import_body(request)
    except _TooLarge:
        return _error(
            413, "too_large", f"the import is larger than {IMPORT_LIMIT_BYTES // (1024 * 1024)} MiB"
        )
    if not files:
        raise ValueError("no files in the import")
    report = await _run(request, import_csv, files, replace=replace)
    if not report.ok:
        return _error(
            422,
            "bad_rows",
            f"nothing imported: {len(report.errors)} bad row(s)",
            rows=[e.as_dict() for e in report.errors],
            encodings=encodings,
        )
    return web.json_response({"counts": report.counts, "encodings": encodings})


@writer
async def start_solve(request: web.Request) -> web.StreamResponse:
    # The time limit is the call's wall time: it counts from here, the job's start.
    started = time.monotonic()
    from scheduler.problem import BellRule, Mode, Options
    from scheduler.service import solve_and_store

    body = await _json(request)
    jobs: dict[str, dict[str, Any]] = request.app[JOBS]
    if any(j["state"] == "running" for j in jobs.values()):
        return _error(409, "busy", "a solve is already running")
    try:
        opts = Options(
            max_points=int(body.get("max_points", 4)),
            mode=Mode(body.get("mode", "fixed")),
            cross_county=bool(body.get("cross_county", False)),
            time_limit_s=float(body.get("time_limit_s", 30)),
            seed=int(body.get("seed", 0)),
            bells=BellRule(body.get("bells", "hard")),
            bell_tolerance_min=int(body.get("bell_tolerance_min", 5)),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad solve options: {exc}") from None
    if not 1 <= opts.max_points <= 60 or not 0.5 <= opts.time_limit_s <= 3600:
        raise ValueError("max_points must be 1-60 and time_limit_s 0.5-3600")
    if not 0 <= opts.bell_tolerance_min <= 60:
        raise ValueError("bell_tolerance_min must be 0-60")
    job_id = f"j{next(_job_ids)}"
    job: dict[str, Any] = {
        "id": job_id,
        "state": "running",
        "started": time.time(),
        "started_mono": started,
        "time_limit_s": opts.time_limit_s,
        "progress": {},
    }
    jobs[job_id] = job

    def progress(event: dict[str, Any]) -> None:
        job["progress"] = event

    async def run() -> None:
        try:
            plan, sol = await _run(
                request,
                solve_and_store,
                opts,
                progress,
                keep_published=not body.get("fresh", False),
                started=started,
            )
            job.update(state="done", plan_id=plan.id, served=sol.served, demand=sol.demand)
        except Exception as exc:  # reported to the page, which shows it to the user
            job.update(state="failed", error=str(exc))
        # The committed plan is what the caller waited for: the job's wall time ends here.
        job["wall_s"] = round(time.monotonic() - started, 3)

    job["task"] = asyncio.get_running_loop().create_task(run())
    return web.json_response(_job_view(job), status=202)


_job_ids = itertools.count(1)


def _job_view(job: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in job.items() if k not in ("task", "started_mono")}
    view["elapsed_s"] = job.get("wall_s", round(time.monotonic() - job["started_mono"], 2))
    return view


@writer
async def get_job(request: web.Request) -> web.StreamResponse:
    job = request.app[JOBS].get(request.match_info["job"])
    if job is None:
        return _error(404, "unknown_job", "no such solve job")
    return web.json_response(_job_view(job))


def _plan_id(request: web.Request) -> int | None:
    raw = request.query.get("plan")
    if raw in (None, ""):
        return None
    if not raw.isdigit():
        raise ValueError("plan must be a number")
    return int(raw)


@writer
async def get_plan(request: web.Request) -> web.StreamResponse:
    from scheduler.service import latest_plan, plan_view

    pid = _plan_id(request)
    return web.json_response(await _run(request, lambda s: plan_view(s, latest_plan(s, pid))))


@writer
async def export_csv(request: web.Request) -> web.StreamResponse:
    from scheduler.csvio import export_plan_csv
    from scheduler.service import export_rows, latest_plan

    pid = _plan_id(request)
    text = await _run(request, lambda s: export_plan_csv(export_rows(s, latest_plan(s, pid))))
    return web.Response(
        text=text,
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="plan.csv"'},
    )


@writer
async def do_publish(request: web.Request) -> web.StreamResponse:
    from scheduler.lessons import publish
    from scheduler.service import latest_plan

    body = await _json(request)
    pid = body.get("plan")
    if pid is not None and not isinstance(pid, int):
        raise ValueError("plan must be a number")
    report = await _run(request, lambda s: publish(s, latest_plan(s, pid).id))
    return web.json_response(report.__dict__)


@writer
async def do_replan(request: web.Request) -> web.StreamResponse:
    from scheduler.replan import replan

    body = await _json(request)
    raw = body.get("dates") or ([body["date"]] if body.get("date") else [])
    try:
        dates = [dt.date.fromisoformat(d) for d in raw]
    except (TypeError, ValueError):
        raise ValueError("dates must be YYYY-MM-DD") from None
    if not dates:
        raise ValueError("give the date(s) to re-plan")
    downlink = body.get("downlink_mbps")
    report = await _run(
        request,
        replan,
        dates,
        absent_teacher=body.get("absent_teacher") or None,
        classroom_id=body.get("classroom_id") or None,
        downlink_mbps=float(downlink) if downlink not in (None, "") else None,
    )
    return web.json_response(report.as_dict())


def _range(request: web.Request) -> tuple[dt.datetime, dt.datetime]:
    try:
        start = dt.date.fromisoformat(request.query["from"])
        end = dt.date.fromisoformat(request.query.get("to", request.query["from"]))
    except (KeyError, ValueError):
        raise ValueError("give from=YYYY-MM-DD and to=YYYY-MM-DD") from None
    return (
        dt.datetime.combine(start, dt.time(0)),
        dt.datetime.combine(end + dt.timedelta(days=1), dt.time(0)),
    )


@writer
async def list_lessons(request: web.Request) -> web.StreamResponse:
    from scheduler.lessons import lessons_between

    start, end = _range(request)
    room = request.query.get("classroom") or None
    infos = await _run(request, lessons_between, start, end, classroom_id=room)
    return web.json_response({"lessons": [i.as_dict() for i in infos]})


async def lesson_token(request: web.Request) -> web.StreamResponse:
    """A room token for one lesson: schedulers get any role, a classroom its own."""
    from scheduler.feedauth import feed_room
    from scheduler.lessons import get_lesson, role_of, room_token

    ctx: AppContext = request.app[CTX]
    room_id = request.match_info["room"]
    try:
        body = await _json(request)
    except ValueError as exc:
        return _error(400, "bad_request", str(exc))
    classroom = str(body.get("classroom", ""))
    try:
        claims: Claims = verify_token(ctx.secret, request_token(request))
    except TokenError as err:
        return _error(_status_of(err), err.code, err.message)
    if claims.role in WRITERS and claims.room == "*":
        pass
    elif claims.room == feed_room(claims.classroom, agent=False) and classroom == claims.classroom:
        pass
    else:
        return _error(403, "forbidden", "this token may not issue tokens for that classroom")

    base = base_url(request)

    def work(session: Any) -> dict[str, Any]:
        info = get_lesson(session, room_id)
        if info is None:
            raise LookupError(f"unknown lesson {room_id!r}")
        role = body.get("role") or (role_of(info, classroom) or Role.OBSERVER).value
        # A feed token yields only the role its classroom has in this lesson (issue 7).
        if claims.role not in WRITERS and Role(role) is not role_of(info, classroom):
            raise ValueError(f"a classroom may not ask for a {role} token in this lesson")
        token = room_token(ctx.secret, session, info, classroom, role)
        minted = verify_token(ctx.secret, token)
        # The link a person opens carries a one-time code, never the token (issue 7).
        code = issue_code(
            ctx.secret,
            room=room_id,
            classroom=classroom,
            role=role,
            name=minted.name,
            token_ttl_s=minted.expires_at - int(time.time()),
        )
        return {
            "token": token,
            "room": room_id,
            "role": role,
            "classroom": classroom,
            "url": lesson_url(base, room_id, code),
            "url_expires_in_s": CODE_TTL_S,
        }

    try:
        return web.json_response(await _run(request, work))
    except LookupError as exc:
        return _error(404, "unknown_lesson", str(exc))
    except ValueError as exc:
        return _error(400, "bad_request", str(exc))


@writer
async def new_feed_token(request: web.Request) -> web.StreamResponse:
    from scheduler.feedauth import feed_token

    ctx: AppContext = request.app[CTX]
    ident = request.match_info["name"]
    agent = request.match_info.get("agent") == "agent"
    token, path = await _run(request, feed_token, ctx.secret, ident, agent=agent)
    base = base_url(request)
    return web.json_response(
        {
            "token": token,
            "ics": f"{base}{path}.ics?token={token}",
            "json": f"{base}{path}.json?token={token}",
        }
    )


async def feed(request: web.Request) -> web.StreamResponse:
    from scheduler.feedauth import feed_room
    from scheduler.ical import classroom_exists, classrooms_of_agent, etag, ical_feed, json_bytes
    from scheduler.ical import json_feed as make_json

    ctx: AppContext = request.app[CTX]
    base = base_url(request)
    name = request.match_info["name"]
    agent = request.path.startswith("/api/schedule/feeds/agent/")
    ident, _, fmt = name.rpartition(".")
    if fmt not in ("ics", "json") or not ident:
        return _error(404, "not_found", "feeds end in .ics or .json")
    try:
        claims = verify_token(ctx.secret, request_token(request))
        if not (claims.role in WRITERS and claims.room == "*"):
            verify_token(ctx.secret, request_token(request), room=feed_room(ident, agent=agent))
    except TokenError as err:
        return _error(_status_of(err), err.code, err.message)

    def work(session: Any) -> bytes | None:
        rooms = (
            classrooms_of_agent(session, ident)
            if agent
            else ([ident] if classroom_exists(session, ident) else [])
        )
        if not rooms:
            return None
        if fmt == "ics":
            return ical_feed(session, rooms, base, ident)
        return json_bytes(make_json(session, rooms, ctx.secret, base_url=base))

    try:
        body = await _run(request, work)
    except ValueError as exc:
        return _error(404, "not_published", str(exc))
    if body is None:
        return _error(
            404, "unknown_classroom", f"unknown {'agent' if agent else 'classroom'} {ident!r}"
        )
    tag = etag(body)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if tag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return web.Response(status=304, headers=headers)
    ctype = "text/calendar" if fmt == "ics" else "application/json"
    return web.Response(body=body, content_type=ctype, charset="utf-8", headers=headers)


def setup(app: web.Application, ctx: AppContext) -> None:
    app[DB] = Database(ctx.config.resolved_database_url())
    app[JOBS] = {}

    async def close(app: web.Application) -> None:
        for job in app[JOBS].values():
            task = job.get("task")
            if task is not None and not task.done():
                await asyncio.wait([task])
        app[DB].dispose()

    async def record_url(app: web.Application) -> None:
        cfg = ctx.config
        if cfg.public_url or (cfg.port and cfg.host not in ("0.0.0.0", "::", "")):
            write_public_url(cfg.data_dir, cfg.base_url)

    app.on_startup.append(record_url)
    app.on_cleanup.append(close)
    r = app.router
    r.add_get("/scheduler", page)
    r.add_get("/api/schedule/county", county)
    r.add_post("/api/schedule/import", import_files)
    r.add_post("/api/schedule/solve", start_solve)
    r.add_get("/api/schedule/jobs/{job}", get_job)
    r.add_get("/api/schedule/plan", get_plan)
    r.add_get("/api/schedule/export.csv", export_csv)
    r.add_post("/api/schedule/publish", do_publish)
    r.add_post("/api/schedule/replan", do_replan)
    r.add_get("/api/schedule/lessons", list_lessons)
    r.add_post("/api/schedule/lessons/{room}/tokens", lesson_token)
    r.add_post("/api/schedule/feeds/{agent:agent}/{name}/token", new_feed_token)
    r.add_post("/api/schedule/feeds/{name}/token", new_feed_token)
    r.add_get("/api/schedule/feeds/agent/{name}", feed)
    r.add_get("/api/schedule/feeds/{name}", feed)
