"""HTTP side of recordings and replays, mounted on the all-in-one app by `setup`.

Upload (room token, role `agent` or `recorder`, for that lesson):
    POST /api/recordings/{lesson}/uploads                 {"files": [{path, size, sha256}]}
    GET  /api/recordings/{lesson}/uploads/{upload}         status: bytes received per file
    PUT  /api/recordings/{lesson}/uploads/{upload}/files/{path}?offset=N
         body: the chunk; header X-Chunk-SHA256: hex digest of the chunk
    POST /api/recordings/{lesson}/uploads/{upload}/complete
Catalog and files:
    GET  /api/replays?school=&subject=&grade=&teacher=&date=&from=&to=&q=   (any token)
    GET  /api/replays/{lesson}                              one entry, with a signed base URL
    GET  /replay-files/{expires}/{sig}/{lesson}/{path}      replay files, signed link
    GET  /replays                                            the catalog page
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

from aiohttp import web

from media_server.recorder import ServerRecorder
from media_server.room import Rooms
from recording.archiver import Archiver
from recording.catalog import (
    FILES_PREFIX,
    VISIBILITIES,
    Catalog,
    check_signature,
    matches,
    may_see,
    set_visibility,
    signed_base,
    summary,
)
from recording.errors import RecordingError
from recording.jobs import make_queue
from recording.lesson import LessonFacts, LessonRecord, LessonResolver
from recording.manifest import check_id, write_json_atomic
from recording.source import drop_unusable_tracks, open_recording
from tongke.app import CTX, AppContext
from tongke.tokens import Claims, Role, TokenError, verify_token

log = logging.getLogger(__name__)

# A classroom's own agent joins with its master or point token and uploads with it.
UPLOAD_ROLES = frozenset({Role.AGENT, Role.RECORDER, Role.MASTER, Role.POINT})
MAX_CHUNK = 8 * 1024 * 1024
MAX_FILE = 16 * 1024**3
_ALLOWED_PATH = re.compile(r"^(manifest\.json|timeline\.jsonl|tracks/[A-Za-z0-9][A-Za-z0-9._-]*)$")

QUEUE = web.AppKey("recording_queue", object)
ARCHIVER = web.AppKey("recording_archiver", Archiver)
LESSONS = web.AppKey("recording_lessons", object)


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


def _bearer(request: web.Request) -> str | None:
    """The token, from the Authorization header only: a token in a URL ends up in
    histories, proxies' logs and Referer headers (`_wrap` refuses `?token=`)."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


class Storage:
    def __init__(self, data_dir: Path) -> None:
        self.recordings = data_dir / "recordings"
        self.uploads = data_dir / "uploads"
        self.replays = data_dir / "replays"
        self.jobs_db = data_dir / "replay-jobs.sqlite3"
        for d in (self.recordings, self.uploads, self.replays):
            d.mkdir(parents=True, exist_ok=True)
        self.locks: dict[str, asyncio.Lock] = {}

    def lock(self, upload_id: str) -> asyncio.Lock:
        return self.locks.setdefault(upload_id, asyncio.Lock())


STORAGE = web.AppKey("recording_storage", Storage)


def _check_files(files: Any) -> list[dict[str, Any]]:
    if not isinstance(files, list) or not files:
        raise ValueError("'files' must be a non-empty list")
    out, seen = [], set()
    for f in files:
        path, size, digest = f.get("path"), f.get("size"), f.get("sha256")
        if not isinstance(path, str) or not _ALLOWED_PATH.match(path) or ".." in path:
            raise ValueError(f"file path {path!r} is not part of a recording layout")
        if not isinstance(size, int) or not 0 <= size <= MAX_FILE:
            raise ValueError(f"{path}: bad size {size!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{path}: sha256 must be 64 lowercase hex digits")
        if path in seen:
            raise ValueError(f"{path} is listed twice")
        seen.add(path)
        out.append({"path": path, "size": size, "sha256": digest})
    if "manifest.json" not in seen:
        raise ValueError("a recording upload must include manifest.json")
    return sorted(out, key=lambda f: f["path"])


def _upload_auth(request: web.Request) -> tuple[AppContext, Storage, str, Claims]:
    ctx = request.app[CTX]
    lesson = check_id(request.match_info["lesson"], "lesson")
    claims = verify_token(ctx.secret, _bearer(request), room=lesson, roles=UPLOAD_ROLES)
    return ctx, request.app[STORAGE], lesson, claims


def _state(storage: Storage, upload_id: str) -> dict[str, Any]:
    if not re.fullmatch(r"[0-9a-f]{24}", upload_id):
        raise web.HTTPNotFound()
    path = storage.uploads / upload_id / "state.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise web.HTTPNotFound() from None


def _received(storage: Storage, state: dict[str, Any]) -> dict[str, int]:
    if state.get("complete"):
        return {f["path"]: f["size"] for f in state["files"]}
    data = storage.uploads / state["upload_id"] / "data"
    out = {}
    for f in state["files"]:
        p = data / f["path"]
        out[f["path"]] = p.stat().st_size if p.exists() else 0
    return out


def _status_body(storage: Storage, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "upload_id": state["upload_id"],
        "lesson": state["lesson"],
        "complete": bool(state.get("complete")),
        "recording": state.get("recording"),
        "job": state.get("job"),
        # Classrooms of the lesson whose copies the server still waits for.
        "waiting_for": state.get("waiting_for"),
        "received": _received(storage, state),
        "max_chunk": MAX_CHUNK,
    }


def _wrap(handler):  # type: ignore[no-untyped-def]
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if "token" in request.query:
            return _error(
                400,
                "token_in_url",
                "send the token in the Authorization header (Bearer), not in the URL",
            )
        try:
            return await handler(request)
        except TokenError as exc:
            status = 401 if exc.code in ("token_missing", "token_expired", "token_invalid") else 403
            return _error(status, exc.code, exc.message)
        except RecordingError as exc:
            return _error(422, exc.code, exc.message)
        except web.HTTPNotFound:
            return _error(404, "not_found", "no such upload or replay")

    return wrapped


@_wrap
async def create_upload(request: web.Request) -> web.Response:
    _, storage, lesson, claims = _upload_auth(request)
    await asyncio.to_thread(_lesson_facts, request, lesson, claims)
    try:
        body = await request.json()
        files = _check_files(body.get("files"))
    except (ValueError, AttributeError) as exc:
        return _error(400, "bad_request", str(exc))
    # The same lesson and file list give the same upload id: a client that lost
    # everything but the recording itself still resumes.
    key = json.dumps([lesson, files], sort_keys=True).encode()
    upload_id = hashlib.sha256(key).hexdigest()[:24]
    directory = storage.uploads / upload_id
    async with storage.lock(upload_id):
        if not (directory / "state.json").exists():
            (directory / "data" / "tracks").mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                directory / "state.json",
                {
                    "upload_id": upload_id,
                    "lesson": lesson,
                    "files": files,
                    "created_at": time.time(),
                    "by": claims.classroom,
                    "complete": False,
                },
            )
        state = _state(storage, upload_id)
    return web.json_response(_status_body(storage, state))


@_wrap
async def upload_status(request: web.Request) -> web.Response:
    _, storage, lesson, _ = _upload_auth(request)
    state = _state(storage, request.match_info["upload"])
    if state["lesson"] != lesson:
        raise web.HTTPNotFound()
    return web.json_response(_status_body(storage, state))


@_wrap
async def put_chunk(request: web.Request) -> web.Response:
    _, storage, lesson, _ = _upload_auth(request)
    upload_id = request.match_info["upload"]
    state = _state(storage, upload_id)
    if state["lesson"] != lesson:
        raise web.HTTPNotFound()
    path = request.match_info["path"]
    spec = next((f for f in state["files"] if f["path"] == path), None)
    if spec is None:
        return _error(404, "not_in_upload", f"{path} is not part of this upload")
    if state.get("complete"):
        return web.json_response({"path": path, "received": spec["size"], "complete": True})
    try:
        offset = int(request.query["offset"])
    except (KeyError, ValueError):
        return _error(400, "bad_request", "?offset=N (bytes) is required")
    want = request.headers.get("X-Chunk-SHA256", "").lower()
    if not want:
        return _error(400, "checksum_missing", "header X-Chunk-SHA256 is required")
    chunk = bytearray()
    async for block in request.content.iter_chunked(256 * 1024):
        chunk += block
        if len(chunk) > MAX_CHUNK:
            return _error(413, "chunk_too_large", f"chunks are at most {MAX_CHUNK} bytes")
    target = storage.uploads / upload_id / "data" / path
    async with storage.lock(upload_id):
        have = target.stat().st_size if target.exists() else 0
        if offset != have:
            return _error(
                409,
                "offset_mismatch",
                f"{path}: the server has {have} bytes; send from there",
                received=have,
            )
        if offset + len(chunk) > spec["size"]:
            return _error(400, "too_long", f"{path} was announced as {spec['size']} bytes")
        got = hashlib.sha256(chunk).hexdigest()
        if got != want:
            return _error(
                400,
                "checksum_mismatch",
                f"{path}: chunk at offset {offset} arrived damaged (sha256 {got[:12]}"
                f"… instead of {want[:12]}…); nothing was stored, send it again",
                received=have,
            )
        await asyncio.to_thread(_append, target, bytes(chunk))
    return web.json_response({"path": path, "received": offset + len(chunk)})


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


def _lesson_facts(request: web.Request, lesson: str, claims: Claims) -> LessonFacts:
    """The server's facts about `lesson`; refuses uploads for unknown lessons and from
    classrooms that are not part of it."""
    stored_json = LessonRecord(request.app[STORAGE].recordings, lesson).load().get("facts")
    stored = LessonFacts.from_json(stored_json) if stored_json else None
    facts = request.app[LESSONS](lesson) or stored
    if facts is not None:
        # A room knows its classrooms' names only while they are connected; keep the
        # names learnt earlier, and the uploader's own (from its signed token).
        known = {c: n for c, n in (stored.points if stored else {}).items() if n and n != c}
        if claims.classroom in facts.points and claims.name:
            known.setdefault(claims.classroom, claims.name)
        for cid, name in known.items():
            if facts.points.get(cid) in ("", cid):
                facts.points[cid] = name
        if not facts.school_name:
            facts.school_name = (stored.school_name if stored else "") or (
                claims.name if claims.classroom == facts.master else ""
            )
    if facts is None:
        raise RecordingError(
            "unknown_lesson", f"this server has no lesson {lesson!r}; nothing was stored"
        )
    classrooms = facts.classrooms()
    if claims.role != Role.RECORDER and classrooms and claims.classroom not in classrooms:
        raise TokenError(
            "forbidden",
            f"classroom {claims.classroom!r} is not the master or a teaching point of "
            f"lesson {lesson!r}",
        )
    return facts


@_wrap
async def complete_upload(request: web.Request) -> web.Response:
    _ctx, storage, lesson, claims = _upload_auth(request)
    upload_id = request.match_info["upload"]
    facts = await asyncio.to_thread(_lesson_facts, request, lesson, claims)
    async with storage.lock(upload_id):
        state = _state(storage, upload_id)
        if state["lesson"] != lesson:
            raise web.HTTPNotFound()
        if state.get("complete"):
            return web.json_response(_status_body(storage, state))
        directory = storage.uploads / upload_id
        data = directory / "data"
        received = _received(storage, state)
        missing = [f["path"] for f in state["files"] if received[f["path"]] != f["size"]]
        if missing:
            return _error(
                409,
                "incomplete",
                f"not all bytes arrived yet: {', '.join(missing)}",
                received=received,
            )
        for f in state["files"]:
            if f["size"] == 0:
                (data / f["path"]).touch()  # an empty file gets no chunk
            digest = await asyncio.to_thread(_sha256_file, data / f["path"])
            if digest != f["sha256"]:
                # Start that file again rather than publish damaged media.
                (data / f["path"]).unlink()
                return _error(
                    422,
                    "checksum_mismatch",
                    f"{f['path']}: the whole file does not match its sha256; "
                    "it was discarded, upload it again",
                    path=f["path"],
                )
        try:
            rec = await asyncio.to_thread(open_recording, data)
        except RecordingError as exc:
            return _error(422, exc.code, f"the uploaded recording is not usable: {exc.message}")
        if rec.manifest.meta.lesson != lesson:
            return _error(
                422,
                "wrong_lesson",
                f"the manifest is for lesson {rec.manifest.meta.lesson!r}, "
                f"this upload for {lesson!r}",
            )
        archiver = request.app[ARCHIVER]
        record = archiver.record(lesson)
        part = await asyncio.to_thread(record.add_part, data, claims.classroom, upload_id, facts)
        lesson_state = await archiver.part_added(lesson)
        state.update(
            complete=True,
            recording=f"{lesson}/parts/{part}",
            completed_at=time.time(),
            waiting_for=lesson_state.get("waiting_for", []),
        )
        write_json_atomic(directory / "state.json", state)
        name = part
    log.info("recording %s uploaded as %s", lesson, name)
    return web.json_response(_status_body(storage, state))


def server_recording_handler(
    app: web.Application,
) -> Callable[[str, list[tuple[str, Path]]], Awaitable[None]]:
    """What the media server's recorder calls when a lesson's own recording is finished:
    each classroom's recording joins the lesson recording as a part, and the archiver
    waits (bounded) for the classrooms' safety copies, then packages."""

    async def finished(lesson: str, recordings: list[tuple[str, Path]]) -> None:
        archiver = app[ARCHIVER]
        record = archiver.record(lesson)
        stored = (await asyncio.to_thread(record.load)).get("facts")
        facts = await asyncio.to_thread(app[LESSONS], lesson)
        if facts is None:
            # The room went before its recording was handed over (a server that was
            # down when the lesson ended): what lesson.json knew, else the bare lesson.
            facts = LessonFacts.from_json(stored) if stored else LessonFacts(lesson=lesson)
        added = 0
        for classroom, directory in recordings:
            dropped = await asyncio.to_thread(drop_unusable_tracks, directory)
            if dropped:
                log.warning(
                    "lesson %s: server recording %s: left out %s", lesson, directory, dropped
                )
            try:
                await asyncio.to_thread(open_recording, directory)
            except RecordingError as exc:
                log.error("lesson %s: server recording %s unusable: %s", lesson, directory, exc)
                continue
            part_id = "srv" + uuid.uuid4().hex
            await asyncio.to_thread(
                record.add_part, directory, classroom, part_id, facts, origin="server"
            )
            added += 1
        if added:
            data = await archiver.part_added(lesson)
            log.info(
                "lesson %s: server recording added (%d classrooms), waiting for %s",
                lesson,
                added,
                data.get("waiting_for"),
            )

    return finished


def _claims_any(request: web.Request) -> Claims | None:
    """Any valid token's claims; None without one (public replays only)."""
    token = _bearer(request)
    if token is None:
        return None
    return verify_token(request.app[CTX].secret, token)


@_wrap
async def list_replays(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    claims = _claims_any(request)
    catalog = Catalog(request.app[STORAGE].replays)
    filters = dict(request.query)
    visible = [e for e in catalog.entries() if may_see(e, claims)]
    facets = {
        k: sorted({str(e.get(k, "")) for e in visible if e.get(k)})
        for k in ("school", "subject", "grade", "teacher")
    }
    found = [
        {**summary(e, ctx.secret), "may_set_visibility": _may_set_visibility(e, claims)}
        for e in visible
        if matches(e, filters)
    ]
    return web.json_response({"replays": found, "facets": facets, "count": len(found)})


@_wrap
async def get_replay(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    claims = _claims_any(request)
    lesson = check_id(request.match_info["lesson"], "lesson")
    entry = Catalog(request.app[STORAGE].replays).entry(lesson)
    if entry is None or not may_see(entry, claims):
        return _error(404, "not_found", f"no replay {lesson!r} that you may watch")
    return web.json_response(summary(entry, ctx.secret))


# Who may change who watches a replay: the lesson's teacher (its master classroom's
# token) and admins (global, or scoped to the lesson).
VISIBILITY_ROLES = frozenset({Role.ADMIN, Role.MASTER})


def _may_set_visibility(entry: dict[str, Any], claims: Claims | None) -> bool:
    if claims is None or claims.role not in VISIBILITY_ROLES:
        return False
    if not claims.allows_room(entry["lesson"]):
        return False
    return claims.role == Role.ADMIN or claims.classroom == entry.get("master")


@_wrap
async def put_visibility(request: web.Request) -> web.Response:
    lesson = check_id(request.match_info["lesson"], "lesson")
    claims = verify_token(
        request.app[CTX].secret, _bearer(request), room=lesson, roles=VISIBILITY_ROLES
    )
    try:
        body = await request.json()
        value = body.get("visibility") if isinstance(body, dict) else None
    except ValueError:
        value = None
    if value not in VISIBILITIES:
        return _error(400, "bad_request", f"'visibility' must be one of {', '.join(VISIBILITIES)}")
    storage = request.app[STORAGE]
    entry = await asyncio.to_thread(Catalog(storage.replays).entry, lesson)
    if entry is None:
        return _error(404, "not_found", f"no replay {lesson!r}")
    if not _may_set_visibility(entry, claims):
        raise TokenError(
            "forbidden", f"only the teacher of lesson {lesson!r} (or an admin) may change this"
        )
    record = LessonRecord(storage.recordings, lesson)

    def remember(data: dict[str, Any]) -> None:
        if data.get("facts"):
            data["facts"]["visibility"] = value

    # lesson.json first: a packaging that is under way re-applies it when it finishes.
    if await asyncio.to_thread(record.exists):
        await asyncio.to_thread(record.update, remember)
    await asyncio.to_thread(set_visibility, storage.replays, lesson, value)
    log.info("replay %s: visibility %s (by %s %s)", lesson, value, claims.role, claims.classroom)
    return web.json_response({"lesson": lesson, "visibility": value})


async def replay_file(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    lesson, rel = request.match_info["lesson"], request.match_info["path"]
    try:
        check_id(lesson, "lesson")
        expires = int(request.match_info["expires"])
    except (RecordingError, ValueError):
        return _error(400, "bad_path", "this replay link is malformed")
    parts = PurePosixPath(rel).parts
    if (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or any(p in ("..", ".") for p in parts)
        or any(p.startswith(".") for p in parts)
    ):
        return _error(400, "bad_path", "replay file paths may not leave the replay")
    problem = check_signature(ctx.secret, lesson, expires, request.match_info["sig"])
    if problem == "link_expired":
        return _error(
            403,
            problem,
            "this replay link has expired; open the lesson again from the catalog for a fresh one",
        )
    if problem:
        return _error(403, problem, "this replay link is not valid")
    root = (request.app[STORAGE].replays / lesson).resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        return _error(400, "bad_path", "replay file paths may not leave the replay")
    if not target.is_file():
        return _error(404, "not_found", f"{rel} is not part of this replay")
    resp = web.FileResponse(target)
    # Segments never change once published; playlists and replay.json may be rebuilt.
    immutable = target.suffix in (".m4s", ".mp4", ".jpg")
    resp.headers["Cache-Control"] = (
        "private, max-age=86400, immutable" if immutable else "private, no-cache"
    )
    return resp


async def catalog_page(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(
        "/static/replay.html" + (f"?{request.query_string}" if request.query_string else "")
    )


def setup(
    app: web.Application,
    ctx: AppContext,
    *,
    run_worker: bool = True,
    lessons: LessonResolver | None = None,
) -> None:
    """Mount the recording routes, start the archiver and, unless told not to, run one
    packaging worker. `lessons` tells which lessons exist and their facts (title,
    school, classrooms...); an upload for a lesson it does not know is refused."""
    storage = Storage(Path(ctx.config.data_dir))
    app[STORAGE] = storage
    app[LESSONS] = lessons or (lambda lesson: None)
    queue = make_queue(ctx.config.redis_url, sqlite_path=storage.jobs_db)
    app[QUEUE] = queue
    archiver = Archiver(
        storage.recordings,
        storage.replays,
        queue,
        upload_wait_s=ctx.config.replay_upload_wait_s,
        # Where the media server keeps each room's timeline (media_server/room.py).
        timelines=Path(ctx.config.data_dir) / "timelines",
    )
    app[ARCHIVER] = archiver

    async def start_archiver(app: web.Application) -> None:
        await archiver.start()

    async def stop_archiver(app: web.Application) -> None:
        await archiver.close()

    app.on_startup.append(start_archiver)
    app.on_cleanup.append(stop_archiver)
    r = app.router
    base = "/api/recordings/{lesson}/uploads"
    r.add_post(base, create_upload)
    r.add_get(base + "/{upload}", upload_status)
    r.add_put(base + "/{upload}/files/{path:.+}", put_chunk)
    r.add_post(base + "/{upload}/complete", complete_upload)
    r.add_get("/api/replays", list_replays)
    r.add_get("/api/replays/{lesson}", get_replay)
    r.add_put("/api/replays/{lesson}/visibility", put_visibility)
    r.add_get(FILES_PREFIX + "/{expires}/{sig}/{lesson}/{path:.*}", replay_file)
    r.add_get("/replays", catalog_page)

    if run_worker:
        stop = asyncio.Event()

        async def start(app: web.Application) -> None:
            app[WORKER] = asyncio.create_task(queue.run_worker(stop=stop))

        async def cleanup(app: web.Application) -> None:
            stop.set()
            task = app[WORKER]
            try:
                await asyncio.wait_for(task, timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
            await queue.close()

        app.on_startup.append(start)
        app.on_cleanup.append(cleanup)


WORKER = web.AppKey("recording_worker", asyncio.Task)
SERVER_RECORDER = web.AppKey("server_recorder", object)


def setup_server_recorder(app: web.Application, rooms: Rooms) -> ServerRecorder:
    """Record every lesson room on this server; a finished recording joins the lesson
    recording like an upload (call after `setup`)."""
    recorder = ServerRecorder(
        app[STORAGE].recordings,
        on_finished=server_recording_handler(app),
        idle_s=app[CTX].config.server_recording_idle_s,
    )
    app[SERVER_RECORDER] = recorder

    async def start(app: web.Application) -> None:
        recorder.start(rooms)

    async def stop(app: web.Application) -> None:
        await recorder.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return recorder


__all__ = ["setup", "signed_base"]
