"""docs/security.md's authorization matrix, walked against a running server.

Every HTTP route of the application must have a row (a new route without one fails
here), and every cell is tried with a real token of that kind.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from classroom_agent.client import ws_url
from tests.lesson_server import ROOT, ServerProcess
from tongke.tokens import Role, issue_token

DOC = ROOT / "docs" / "security.md"
FEED_CLASSROOM = "p-matrix-feed"
PLACEHOLDERS = {
    "upload": "0" * 24,
    "path": "manifest.json",
    "job": "j999999",
    "expires": "4102444800",
    "sig": "not-a-signature",
    "agent": "agent",
    "classroom": "c-matrix-revoked",
    "username": "nobody",
}


def matrix(name: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(rf"<!-- matrix:{name} -->\n(.*?)<!-- /matrix:{name} -->", text, re.S)
    assert block, f"docs/security.md has no matrix:{name} block"
    lines = [line for line in block.group(1).splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    kinds = header[1:]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        key = cells[0].strip("`")
        assert key not in rows, f"two rows for {key}"
        assert len(cells) == len(header), f"row {key} has {len(cells)} cells"
        rows[key] = dict(zip(kinds, cells[1:], strict=True))
    return kinds, rows


def tokens(server: ServerProcess, room: str) -> dict[str, str | None]:
    def room_token(role: Role) -> str:
        return server.token(room, f"m-{role.value}", role)

    return {
        "none": None,
        "admin*": server.admin_token,
        "admin@room": server.token(room, "ops-room", Role.ADMIN),
        "admin@other": server.token("another-lesson", "ops-other", Role.ADMIN),
        "scheduler*": issue_token(server.secret, room="*", classroom="county", role="scheduler"),
        **{r.value: room_token(r) for r in (Role.MASTER, Role.POINT, Role.AGENT)},
        **{r.value: room_token(r) for r in (Role.OBSERVER, Role.RECORDER, Role.STUDENT)},
        "feed": issue_token(
            server.secret,
            room=f"feed:{FEED_CLASSROOM}",
            classroom=FEED_CLASSROOM,
            role=Role.AGENT,
        ),
    }


def app_routes(tmp_path: Path) -> set[str]:
    from tongke.app import create_app
    from tongke.config import Config

    app = create_app(Config(data_dir=tmp_path, secret="matrix-secret-0123456789abcdef"))
    return {
        f"{r.method} {r.resource.canonical}"
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }


def test_every_route_of_the_application_has_a_row(tmp_path: Path) -> None:
    _, rows = matrix("http")
    missing = app_routes(tmp_path) - set(rows)
    assert not missing, f"routes without a row in docs/security.md: {sorted(missing)}"
    stale = set(rows) - app_routes(tmp_path)
    assert not stale, f"rows in docs/security.md for routes that do not exist: {sorted(stale)}"


def _concrete(path: str, room: str) -> str:
    if path == "/static":
        return "/static/lesson.html"
    if path.startswith("/api/schedule/feeds/") and "{name}" in path and "token" not in path:
        return path.replace("{name}", f"{FEED_CLASSROOM}.json")
    values = {**PLACEHOLDERS, "room": room, "lesson": room, "name": FEED_CLASSROOM}
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def _call(server: ServerProcess, method: str, path: str, token: str | None) -> int:
    body = {"classroom": FEED_CLASSROOM, "time_limit_s": 0.01, "room": "bad room!"}
    data = json.dumps(body).encode() if method in ("POST", "PUT") else None
    req = urllib.request.Request(server.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=15) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


def test_every_http_cell_of_the_matrix_holds(server: ServerProcess, room: str) -> None:
    kinds, rows = matrix("http")
    held = tokens(server, room)
    assert set(kinds) == set(held), "the matrix columns are the token kinds"
    wrong = []
    for route, cells in rows.items():
        method, path = route.split(" ", 1)
        url = _concrete(path, room)
        statuses = {}
        for kind, expected in cells.items():
            status = _call(server, method, url, held[kind])
            statuses[kind] = status
            if method == "DELETE" and status < 400:
                server.open_room(room)
            refused = status in (401, 403)
            if (expected == "yes" and refused) or (expected == "no" and not refused):
                wrong.append(f"{route} as {kind}: {status}, matrix says {expected}")
        if {"sig", "session"} & set(cells.values()):
            assert len(set(statuses.values())) == 1, f"{route}: a token changed {statuses}"
    assert not wrong, "\n".join(wrong)


async def _ws_outcomes(server: ServerProcess, room: str, token: str | None) -> dict[str, bool]:
    """message -> allowed, for one socket that tries to join with `token`."""
    messages: list[tuple[str, dict[str, Any]]] = [
        ("ping", {"type": "ping"}),
        ("join", {"type": "join", "room": room, "token": token}),
        ("publish", {"type": "publish", "sdp": "v=0\r\nx", "tracks": []}),
        ("unpublish", {"type": "unpublish", "mids": ["9"]}),
        ("subscribe_answer", {"type": "subscribe_answer", "sdp": "v=0\r\nx"}),
        ("set_subscription", {"type": "set_subscription", "track": "p9/x"}),
        ("request_keyframe", {"type": "request_keyframe", "track": "p9/x"}),
        ("leave", {"type": "leave"}),
    ]
    refusals = {"forbidden", "not_joined"}
    outcome: dict[str, bool] = {}
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(ws_url(server.url))
        for i, (name, message) in enumerate(messages):
            if ws.closed:
                outcome[name] = False
                continue
            await ws.send_str(json.dumps({**message, "id": i}))
            reply = await _reply(ws, i)
            if name == "join":
                outcome[name] = reply is not None and reply.get("type") == "joined"
            elif name == "leave":
                outcome[name] = reply is None  # the server closed the socket for us
            else:
                outcome[name] = reply is None or reply.get("code") not in refusals
        await ws.close()
    return outcome


async def _reply(ws: aiohttp.ClientWebSocketResponse, ref: int) -> dict[str, Any] | None:
    """The reply to request `ref`; None when there is none (no reply, or socket closed)."""
    found = None
    try:
        await ws.send_str(json.dumps({"type": "ping", "id": f"after-{ref}"}))
    except ConnectionError:
        pass
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return found
        data = json.loads(msg.data)
        if data.get("id") == ref:
            found = data
        if data.get("id") == f"after-{ref}":
            return found


@pytest.mark.parametrize("kind", ["none", "admin*", "admin@room", "admin@other", "scheduler*",
                                  "master", "point", "agent", "observer", "recorder", "student",
                                  "feed"])  # fmt: skip
async def test_every_websocket_cell_of_the_matrix_holds(
    server: ServerProcess, room: str, kind: str
) -> None:
    kinds, rows = matrix("ws")
    assert kind in kinds
    outcome = await _ws_outcomes(server, room, tokens(server, room)[kind])
    expected = {message: cells[kind] == "yes" for message, cells in rows.items()}
    assert outcome == expected
