"""Credentials reach only what they should, stay out of URLs and logs, and can be revoked.

Regression tests for issue 7 ("Why"): scoped admin tokens acted as global admins; a
point's feed token obtained an agent token that saw every point's camera; lesson links
kept the token in the address bar; the secret file was written world-readable first.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from classroom_agent.client import LessonClient, Publication
from tests.lesson_server import ROOT, ServerProcess, start_server_process
from tests.media import PatternTrack, first_frames, wait_for
from tongke.config import Config
from tongke.tokens import Role, issue_token


def call(
    server: ServerProcess,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            raw = resp.read()
            return resp.status, _decode(raw), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, _decode(err.read()), err.headers


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def test_an_admin_token_for_one_lesson_is_an_admin_of_that_lesson_only(
    server: ServerProcess, room: str
) -> None:
    other = f"{room}-other"
    server.open_room(other)
    scoped = server.token(room, "ops-room", Role.ADMIN)
    assert call(server, "GET", "/api/rooms", token=scoped)[0] == 403
    assert call(server, "DELETE", f"/api/rooms/{other}", token=scoped)[0] == 403
    status, _, _ = call(
        server, "POST", f"/api/rooms/{other}/tokens", {"role": "observer"}, token=scoped
    )
    assert status == 403
    status, body, _ = call(
        server, "POST", f"/api/rooms/{room}/tokens", {"role": "admin"}, token=scoped
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")
    # Its own lesson it runs.
    status, body, _ = call(
        server, "POST", f"/api/rooms/{room}/tokens", {"role": "observer"}, token=scoped
    )
    assert status == 200 and "token" in body
    assert other in [r["room"] for r in server.api("GET", "/api/rooms")]


async def test_a_points_agent_token_receives_the_master_only(server: ServerProcess) -> None:
    room = f"agent-scope-{time.monotonic_ns()}"
    server.api("POST", "/api/rooms", {"room": room, "master": "c-m", "points": ["p-a", "p-b"]})
    master = LessonClient(server.url, room, server.token(room, "c-m", "master"))
    point_b = LessonClient(server.url, room, server.token(room, "p-b", "point"))
    agent_a = LessonClient(server.url, room, server.token(room, "p-a", Role.AGENT))
    clients = [master, point_b, agent_a]
    try:
        await master.connect()
        await master.publish([Publication(PatternTrack(), "teacher_camera", codec="vp8")])
        await point_b.connect()
        await point_b.publish([Publication(PatternTrack(), "point_camera", codec="vp8")])
        await first_frames(master, {"point_camera"})
        joined = await agent_a.connect()
        assert joined["role"] == "point"
        await first_frames(agent_a, {"teacher_camera"})
        assert {r.source for r in agent_a.active_tracks()} == {"teacher_camera"}
    finally:
        for c in clients:
            await c.close()


def test_a_lesson_link_carries_a_one_time_code_not_a_token(
    server: ServerProcess, room: str
) -> None:
    _, minted, _ = call(
        server,
        "POST",
        f"/api/rooms/{room}/tokens",
        {"role": "observer", "classroom": "class-3"},
        token=server.admin_token,
    )
    link = urllib.parse.urlsplit(minted["url"])
    query = urllib.parse.parse_qs(link.query)
    assert set(query) == {"code"} and minted["token"] not in minted["url"]
    code = query["code"][0]

    status, body, headers = call(
        server, "POST", "/api/lesson/exchange", {"room": room, "code": code}
    )
    assert status == 200 and body["role"] == "observer"
    token = body["token"]
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/api/lesson/" in cookie
    assert server.api("GET", f"/api/rooms/{room}", token=token)["room"] == room

    status, body, _ = call(server, "POST", "/api/lesson/exchange", {"room": room, "code": code})
    assert (status, body["error"]["code"]) == (401, "code_used")

    # A reload: no code, the browser's cookie answers.
    cookie_pair = cookie.split(";", 1)[0]
    status, body, _ = call(
        server, "POST", "/api/lesson/exchange", {"room": room}, headers={"Cookie": cookie_pair}
    )
    assert status == 200 and body["token"] == token
    status, body, _ = call(server, "POST", "/api/lesson/exchange", {"room": room})
    assert status == 401

    from tongke.lessoncode import issue_code

    old = issue_code(server.secret, room=room, classroom="c", role="observer", now=1_000_000)
    status, body, _ = call(server, "POST", "/api/lesson/exchange", {"room": room, "code": old})
    assert (status, body["error"]["code"]) == (401, "code_expired")
    fresh = issue_code(server.secret, room=room, classroom="c", role="observer")
    status, body, _ = call(
        server, "POST", "/api/lesson/exchange", {"room": f"{room}-x", "code": fresh}
    )
    assert (status, body["error"]["code"]) == (403, "token_wrong_room")


def test_the_media_api_takes_tokens_from_the_header_only(server: ServerProcess) -> None:
    req = urllib.request.Request(f"{server.url}/api/rooms?token={server.admin_token}")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401


def test_the_access_log_never_holds_a_token_or_code(server: ServerProcess, room: str) -> None:
    secret_looking = server.token(room, "leaky", "observer")
    for path in (
        f"/api/rooms?token={secret_looking}",
        f"/lesson/{room}?code=abc.def.ghi-SECRETCODE",
        f"/api/schedule/feeds/x.ics?token={secret_looking}",
        f"/replay-files/4102444800/SIGNATURE123/{room}/replay.json",
    ):
        call(server, "GET", path)
    log = server.data_dir / "access.log"
    wait_lines = 4

    def written() -> bool:
        return log.exists() and log.read_text().count("\n") >= wait_lines

    deadline = time.monotonic() + 10
    while not written() and time.monotonic() < deadline:
        time.sleep(0.05)  # the access log is written when each response completes
    text = log.read_text()
    assert "[redacted]" in text
    for leaked in (secret_looking, "SECRETCODE", "SIGNATURE123"):
        assert leaked not in text


def test_the_secret_file_is_never_readable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever happens after creation (a chmod that never comes), the file starts 0600.
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    old_umask = os.umask(0)
    try:
        secret = Config(data_dir=tmp_path).ensure_secret()
    finally:
        os.umask(old_umask)
    path = tmp_path / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Config(data_dir=tmp_path).ensure_secret() == secret


def _schedule(data: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "tongke", "schedule", "--data-dir", str(data), *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )


async def test_feed_tokens_yield_only_their_classrooms_role_and_can_be_revoked(
    tmp_path: Path,
) -> None:
    from scheduler.db import Database
    from scheduler.lessons import lessons_between

    data = tmp_path / "data"
    _schedule(data, "demo-data", str(tmp_path / "csv"), "--tier", "S", "--seed", "1")
    _schedule(data, "import", str(tmp_path / "csv"))
    _schedule(data, "solve")
    _schedule(data, "publish")
    db = Database(f"sqlite:///{data / 'tongke.db'}")
    with db.session() as session:
        lessons = lessons_between(session, datetime(2000, 1, 1), datetime(2100, 1, 1))
    db.dispose()
    lesson = next(x for x in lessons if x.point_classroom_ids)
    point = lesson.point_classroom_ids[0]

    server = start_server_process(data)
    try:
        scheduler = issue_token(server.secret, room="*", classroom="county", role="scheduler")
        status, body, _ = call(
            server, "POST", f"/api/schedule/feeds/{point}/token", {}, token=scheduler
        )
        assert status == 200
        feed = body["token"]
        path = f"/api/schedule/lessons/{lesson.room_id}/tokens"
        for role in ("agent", "master", "observer"):
            status, body, _ = call(server, "POST", path, {"classroom": point, "role": role}, feed)
            assert status == 400 and "may not ask for" in body["error"]["message"], (role, body)
        # Its own role passes the role check (the demo term's lesson may be over by now).
        status, body, _ = call(server, "POST", path, {"classroom": point}, feed)
        assert status == 200 or "is over" in body["error"]["message"], body

        feed_path = f"/api/schedule/feeds/{point}.json"
        assert call(server, "GET", feed_path, token=feed)[0] == 200
        status, body, _ = call(server, "POST", f"/api/feeds/{point}/revoke", {}, scheduler)
        assert status == 200 and body["feed"] == f"feed:{point}"
        status, body, _ = call(server, "GET", feed_path, token=feed)
        assert (status, body["error"]["code"]) == (401, "token_revoked")
        status, body, _ = call(server, "POST", path, {"classroom": point}, feed)
        assert (status, body["error"]["code"]) == (401, "token_revoked")
        _, body, _ = call(server, "POST", f"/api/schedule/feeds/{point}/token", {}, scheduler)
        assert call(server, "GET", feed_path, token=body["token"])[0] == 200

        # Older than the configured lifetime (180 days): refused, whatever its own expiry.
        ancient = issue_token(
            server.secret,
            room=f"feed:{point}",
            classroom=point,
            role="agent",
            ttl_s=10 * 365 * 86400,
            now=time.time() - 200 * 86400,
        )
        status, body, _ = call(server, "GET", feed_path, token=ancient)
        assert (status, body["error"]["code"]) == (401, "token_expired")
    finally:
        server.stop()


async def test_the_audit_log_records_who_did_what_for_admins_only(
    server: ServerProcess,
) -> None:
    room = f"audit-{time.monotonic_ns()}"
    server.open_room(room)
    call(server, "POST", f"/api/rooms/{room}/tokens", {"role": "observer"}, server.admin_token)
    master = LessonClient(server.url, room, server.token(room, "c-audit", "master"))
    await master.connect()
    publication = Publication(PatternTrack(), "teacher_camera", codec="vp8")
    await master.publish([publication])
    await master.close()
    call(server, "DELETE", f"/api/rooms/{room}", token=server.admin_token)

    def actions() -> list[str]:
        events = server.api("GET", f"/api/audit?room={room}")["events"]
        return sorted(e["action"] for e in events)

    await wait_for(lambda: "room_closed" in actions(), what="the audit events")
    assert actions() == ["published", "room_closed", "room_opened", "token_minted"]
    published = server.api("GET", f"/api/audit?room={room}&action=published")["events"][0]
    assert published["role"] == "master" and published["detail"]["sources"] == ["teacher_camera"]
    assert published["ip"] == "127.0.0.1"

    status, body, headers = call(
        server, "GET", f"/api/audit.csv?room={room}", token=server.admin_token
    )
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert body.startswith("\ufeffat,action,actor,role,room,ip,detail")
    assert body.count("\n") == 5
    assert server.admin_token not in body

    for token in (server.token(room, "ops", Role.ADMIN), server.token(room, "c", "master"), None):
        assert call(server, "GET", "/api/audit", token=token)[0] in (401, 403)


def test_audit_csv_cells_never_run_as_formulas() -> None:
    from tongke.audit import to_csv

    row = {
        "at": 0.0,
        "action": "token_minted",
        "actor": "=cmd|' /C calc'!A0",
        "role": "admin",
        "room": "+room",
        "ip": "@1",
        "detail": {},
    }
    line = to_csv([row]).splitlines()[1]
    assert "'=cmd" in line and "'+room" in line and "'@1" in line


async def test_sign_ins_and_failed_sign_ins_are_audited(server: ServerProcess) -> None:
    from tongke.accounts import Accounts, AccountSpec

    username = f"audit-{time.monotonic_ns()}"
    accounts = Accounts(f"sqlite:///{server.data_dir / 'tongke.db'}")
    accounts.create(
        AccountSpec.parse(
            {"username": username, "role": "teacher", "password": "correct horse"},
            need_password=True,
        )
    )
    for password in ("wrong", "correct horse"):
        call(server, "POST", "/api/auth/login", {"username": username, "password": password})

    def mine() -> list[dict[str, Any]]:
        events = server.api("GET", "/api/audit?limit=200")["events"]
        return [e for e in events if e["actor"] == username]

    await wait_for(lambda: len(mine()) == 2, what="two sign-in events")
    assert sorted(e["action"] for e in mine()) == ["sign_in", "sign_in_failed"]
    assert all("correct horse" not in json.dumps(e) for e in mine())
