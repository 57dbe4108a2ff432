"""Bad input gets a clear error for its sender and changes nothing for anyone else."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest

from classroom_agent.client import LessonClient, LessonError, Publication, ws_url
from media_server.publisher import SignallingError, TrackSpec
from tests.lesson_server import ServerProcess
from tests.media import PatternTrack, first_frames, wait_for
from tests.test_rtp_rewrite import make_up


@dataclass
class LiveLesson:
    room: str
    master: LessonClient
    point: LessonClient

    def forwarded(self, server: ServerProcess) -> int:
        return server.stats()["rooms"][self.room]["packets_forwarded"]


@pytest.fixture
async def lesson(server: ServerProcess, room: str) -> AsyncIterator[LiveLesson]:
    master = LessonClient(server.url, room, server.token(room, "c-master", "master"))
    await master.connect()
    await master.publish([Publication(PatternTrack(), "teacher_camera", codec="vp8")])
    point = LessonClient(server.url, room, server.token(room, "p-1", "point"))
    await point.connect()
    await first_frames(point, {"teacher_camera"})
    yield LiveLesson(room, master, point)
    await point.close()
    await master.close()


async def still_serving(server: ServerProcess, lesson: LiveLesson) -> None:
    """The lesson goes on: packets keep reaching the point, nobody was dropped."""
    before = lesson.forwarded(server)
    await wait_for(lambda: lesson.forwarded(server) > before + 10, what="forwarding to go on")
    assert server.stats()["rooms"][lesson.room]["participants"] == 2


async def raw_socket(
    server: ServerProcess,
) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(ws_url(server.url))
    return session, ws


async def exchange(ws: aiohttp.ClientWebSocketResponse, payload: str) -> dict:
    await ws.send_str(payload)
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_malformed_json_is_answered_and_the_socket_stays_usable(
    server: ServerProcess, lesson: LiveLesson
) -> None:
    session, ws = await raw_socket(server)
    try:
        reply = await exchange(ws, "{not json")
        assert reply["type"] == "error" and reply["code"] == "bad_json"
        reply = await exchange(ws, '["a", "list"]')
        assert reply["code"] == "bad_json"
        assert (await exchange(ws, '{"type": "ping"}'))["type"] == "pong"
    finally:
        await session.close()
    await still_serving(server, lesson)


async def test_malformed_sdp_is_refused_and_nothing_is_published(
    server: ServerProcess, lesson: LiveLesson
) -> None:
    other = LessonClient(server.url, lesson.room, server.token(lesson.room, "p-2", "point"))
    await other.connect()
    try:
        tracks = [{"mid": "0", "source": "point_camera", "kind": "video"}]
        with pytest.raises(LessonError) as err:
            await other.request(
                {"type": "publish", "sdp": "v=0\r\nthis is not sdp", "tracks": tracks}
            )
        assert err.value.code == "bad_sdp"
        with pytest.raises(LessonError) as err:
            await other.request({"type": "publish", "sdp": 42, "tracks": tracks})
        assert err.value.code == "bad_sdp"
        room = server.api("GET", f"/api/rooms/{lesson.room}")
        assert [t["source"] for t in room["tracks"]] == ["teacher_camera"]
        assert (await other.request({"type": "ping"}))["type"] == "pong"
    finally:
        await other.close()
    await still_serving(server, lesson)


TokenCase = Callable[[ServerProcess, str], str]

BAD_TOKENS: dict[str, tuple[TokenCase, str, int]] = {
    "wrong_signature": (
        lambda s, room: _foreign_token(room),
        "token_invalid",
        4401,
    ),
    "expired": (
        lambda s, room: s.token(room, "p-9", "point", ttl_s=60, now=1_000_000),
        "token_expired",
        4401,
    ),
    "other_lesson": (
        lambda s, room: s.token("some-other-lesson", "p-9", "point"),
        "token_wrong_room",
        4403,
    ),
    "garbage": (lambda s, room: "not.a.jwt", "token_invalid", 4401),
}


def _foreign_token(room: str) -> str:
    from tongke.tokens import issue_token

    return issue_token("a-different-server-secret-xxxxxxxx", room=room, classroom="p", role="point")


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_refused_with_a_reason(
    server: ServerProcess, lesson: LiveLesson, case: str
) -> None:
    make, code, close_code = BAD_TOKENS[case]
    intruder = LessonClient(server.url, lesson.room, make(server, lesson.room))
    with pytest.raises(LessonError) as err:
        await intruder.connect()
    assert err.value.code == code
    await intruder.closed.wait()
    assert intruder.close_code == close_code
    await intruder.close()
    await still_serving(server, lesson)


async def test_an_unknown_lesson_is_refused(server: ServerProcess, lesson: LiveLesson) -> None:
    ghost = LessonClient(server.url, "no-such-lesson", server.token("no-such-lesson", "p", "point"))
    with pytest.raises(LessonError) as err:
        await ghost.connect()
    assert err.value.code == "unknown_room"
    assert "no-such-lesson" in err.value.message
    await ghost.close()
    await still_serving(server, lesson)


async def test_an_oversized_message_is_refused_and_that_socket_closed(
    server: ServerProcess, lesson: LiveLesson
) -> None:
    session, ws = await raw_socket(server)
    try:
        reply = await exchange(ws, json.dumps({"type": "ping", "pad": "x" * 300_000}))
        assert reply["code"] == "message_too_large"
        closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009
    finally:
        await session.close()
    await still_serving(server, lesson)


async def test_an_observer_cannot_publish_and_messages_before_join_are_refused(
    server: ServerProcess, lesson: LiveLesson
) -> None:
    session, ws = await raw_socket(server)
    try:
        reply = await exchange(ws, json.dumps({"type": "publish", "sdp": "v=0", "tracks": []}))
        assert reply["code"] == "not_joined"
    finally:
        await session.close()
    observer = LessonClient(server.url, lesson.room, server.token(lesson.room, "ops", "observer"))
    await observer.connect()
    try:
        with pytest.raises(LessonError) as err:
            await observer.publish([Publication(PatternTrack(), "teacher_camera", codec="vp8")])
        assert err.value.code == "forbidden"
    finally:
        await observer.close()
    await still_serving(server, lesson)


async def test_a_classroom_rejoining_replaces_its_stale_session_but_viewers_share_a_link(
    server: ServerProcess, lesson: LiveLesson
) -> None:
    token = server.token(lesson.room, "p-rejoin", "point")
    first = LessonClient(server.url, lesson.room, token)
    await first.connect()
    second = LessonClient(server.url, lesson.room, token)
    await second.connect()
    await first.closed.wait()
    assert first.close_code == 4409
    assert any(e["code"] == "replaced" for e in first.errors)
    await first.close()

    link = server.token(lesson.room, "ops", "observer")
    viewers = [LessonClient(server.url, lesson.room, link) for _ in range(2)]
    for viewer in viewers:
        await viewer.connect()
    try:
        room = server.api("GET", f"/api/rooms/{lesson.room}")
        classrooms = sorted(p["classroom"] for p in room["participants"])
        assert classrooms == ["c-master", "ops", "ops", "p-1", "p-rejoin"]
        for viewer in viewers:
            await first_frames(viewer, {"teacher_camera"})
    finally:
        for c in [*viewers, second]:
            await c.close()


@pytest.mark.parametrize(
    ("bitrate", "accepted"),
    [(None, True), (70_000, True), (0, False), (-5, False), (True, False), ("70k", False)],
)
def test_a_tracks_declared_bitrate_is_checked(bitrate: object, accepted: bool) -> None:
    raw = {"mid": "0", "source": "courseware", "kind": "video", "layer": "l"}
    if bitrate is not None:
        raw["bitrate_bps"] = bitrate
    if accepted:
        assert TrackSpec.parse(raw).bitrate_bps == bitrate
    else:
        with pytest.raises(SignallingError, match="bitrate_bps"):
            TrackSpec.parse(raw)


def test_a_layer_nobody_has_received_costs_what_its_publisher_declared() -> None:
    """256kbit-10pct, agent: the courseware's low layer (70 kbit/s) had never been
    received, so the allocator took it at a generic 150 kbit/s that never fitted, and
    the courseware stayed paused all lesson."""
    declared = make_up("l", 5, [])
    declared.configured_bps = 70_000
    assert declared.cost_bps(1.0) == 70_000
    assert make_up("l", 6, []).cost_bps(1.0) == 0  # the allocator's generic guess then
