"""Tokens stay out of URLs: old links move them into HttpOnly cookies and out of the
address, links handed to people carry one-time codes, and only the timetable feeds (a
calendar app can only fetch a URL) still read `?token=`."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.lesson_server import ROOT, ServerProcess, start_server_process
from tests.test_security_tokens import call
from tongke.tokens import issue_token


def get_no_redirect(server: ServerProcess, path: str, cookie: str = "") -> http.client.HTTPResponse:
    """One GET, its redirect not followed (what the browser is told to do)."""
    parts = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def cookie_pair(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0]


def access_log(server: ServerProcess, must_hold: str) -> str:
    log = server.data_dir / "access.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if must_hold in text:
            return text
        time.sleep(0.05)  # written when each response completes
    raise AssertionError(f"{must_hold!r} never reached the access log")


def test_an_old_lesson_link_moves_its_token_into_a_cookie_and_out_of_the_address(
    server: ServerProcess, room: str
) -> None:
    token = server.token(room, "class-7", "observer")
    resp = get_no_redirect(server, f"/lesson/{room}?lang=en&token={token}")
    assert resp.status == 303
    assert resp.headers["Location"] == f"/lesson/{room}?lang=en"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert "Path=/api/lesson/" in set_cookie
    # The page's first request (a reload's too) gets the token from the cookie.
    status, body, _ = call(
        server,
        "POST",
        "/api/lesson/exchange",
        {"room": room},
        headers={"Cookie": cookie_pair(set_cookie)},
    )
    assert (status, body["token"], body["role"]) == (200, token, "observer")
    # A token that opens nothing here is left to the page, which names the problem
    # (and drops it from the address); no cookie is set for it.
    other = server.token(f"{room}-x", "class-7", "observer")
    resp = get_no_redirect(server, f"/lesson/{room}?token={other}")
    assert resp.status == 200 and "Set-Cookie" not in resp.headers
    text = access_log(server, f"/lesson/{room}?lang=en")
    assert token not in text and other not in text


def test_no_api_reads_a_token_from_the_query_string(server: ServerProcess, room: str) -> None:
    """(The recording API's own routes are the recorder's: recording/api.py.)"""
    admin = server.admin_token
    scheduler = issue_token(server.secret, room="*", classroom="county", role="scheduler")
    for path, token in (
        (f"/api/rooms/{room}", admin),
        ("/api/audit", admin),
        ("/api/stats", admin),
        ("/api/schedule/county", scheduler),
    ):
        status, _, _ = call(server, "GET", f"{path}?token={token}")
        assert status in (401, 403), (path, status)
        assert call(server, "GET", path, token=token)[0] == 200, path


@dataclass
class Scheduled:
    server: ServerProcess
    scheduler: str
    room: str
    point: str


def _schedule(data: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "tongke", "schedule", "--data-dir", str(data), *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scheduled]:
    """A server with a published county timetable (the demo county, tier S)."""
    from scheduler.db import Database
    from scheduler.lessons import lessons_between

    base = tmp_path_factory.mktemp("urls")
    data = base / "data"
    _schedule(data, "demo-data", str(base / "csv"), "--tier", "S", "--seed", "1")
    _schedule(data, "import", str(base / "csv"))
    _schedule(data, "solve")
    _schedule(data, "publish")
    db = Database(f"sqlite:///{data / 'tongke.db'}")
    with db.session() as session:
        now = datetime.now()
        upcoming = [
            x
            for x in lessons_between(session, now, datetime(2100, 1, 1))
            if x.point_classroom_ids and x.end > datetime.now(UTC)
        ]
    db.dispose()
    if not upcoming:
        pytest.skip("the demo term has no lesson left to join")
    lesson = upcoming[0]
    server = start_server_process(data)
    scheduler = issue_token(server.secret, room="*", classroom="county", role="scheduler")
    yield Scheduled(server, scheduler, lesson.room_id, lesson.point_classroom_ids[0])
    server.stop()


def test_a_scheduled_lesson_link_carries_a_one_time_code(scheduled: Scheduled) -> None:
    server, room, point = scheduled.server, scheduled.room, scheduled.point
    path = f"/api/schedule/lessons/{room}/tokens"
    status, minted, _ = call(server, "POST", path, {"classroom": point}, scheduled.scheduler)
    assert status == 200, minted
    link = urllib.parse.urlsplit(minted["url"])
    assert link.path == f"/lesson/{room}" and minted["token"] not in minted["url"]
    code = urllib.parse.parse_qs(link.query)["code"][0]
    status, body, _ = call(server, "POST", "/api/lesson/exchange", {"room": room, "code": code})
    assert (status, body["role"]) == (200, "point")
    status, body, _ = call(server, "POST", "/api/lesson/exchange", {"room": room, "code": code})
    assert (status, body["error"]["code"]) == (401, "code_used")


def test_a_point_consoles_feed_link_moves_its_token_into_a_cookie(scheduled: Scheduled) -> None:
    server, point = scheduled.server, scheduled.point
    status, body, _ = call(
        server, "POST", f"/api/schedule/feeds/{point}/token", {}, scheduled.scheduler
    )
    assert status == 200
    feed_token = body["token"]
    resp = get_no_redirect(server, f"/point/{point}?feed={feed_token}&kiosk=1")
    assert resp.status == 303
    assert resp.headers["Location"] == f"/point/{point}?kiosk=1&feed=1"
    set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "Path=/api/schedule/feeds/" in set_cookie
    feed_path = f"/api/schedule/feeds/{point}.json"
    # What the console fetches: the cookie answers, no token in its URL.
    status, feed, _ = call(server, "GET", feed_path, headers={"Cookie": cookie_pair(set_cookie)})
    assert status == 200 and any(x["classroom_id"] == point for x in feed["lessons"])
    assert call(server, "GET", feed_path)[0] == 401
    # Another classroom's feed is not opened by this classroom's cookie.
    other = f"/api/schedule/feeds/{point}x.json"
    assert call(server, "GET", other, headers={"Cookie": cookie_pair(set_cookie)})[0] in (401, 403)
    # Calendar apps keep their subscription URL; the access log shows it redacted.
    status, ics, _ = call(server, "GET", f"/api/schedule/feeds/{point}.ics?token={feed_token}")
    assert status == 200 and "BEGIN:VCALENDAR" in ics
    text = access_log(server, f"/point/{point}?feed=[redacted]&kiosk=1")
    assert feed_token not in text
