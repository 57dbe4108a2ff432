"""Every JSON value a client can send gets a clear error for that client and no traceback.

Regression tests for issue 7 ("Why"): a lone surrogate as a join name made every later
joiner fail with `internal`; as a track label it stopped every viewer's subscriber; deeply
nested JSON gave a traceback per message.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from classroom_agent.client import LessonClient, LessonError, Publication
from tests import test_signalling_errors
from tests.lesson_server import ServerProcess
from tests.media import PatternTrack, first_frames
from tests.test_signalling_errors import LiveLesson, exchange, raw_socket, still_serving

lesson = test_signalling_errors.lesson  # the fixture: a master publishing to one point

KNOWN_CODES = {
    "bad_json",
    "bad_request",
    "bad_sdp",
    "unknown_type",
    "not_joined",
    "already_joined",
    "forbidden",
    "unknown_room",
    "message_too_large",
    "rate_limited",
    "token_missing",
    "token_invalid",
    "token_expired",
    "token_wrong_room",
    "token_role",
}


def internal_errors(server: ServerProcess) -> int:
    return server.stats().get("signalling_errors", {}).get("internal", 0)


def ascii_sender(client: LessonClient) -> None:
    """Make `client` send lone surrogates as JSON escapes, as a browser's JSON.stringify does."""

    async def send(message: dict[str, Any]) -> None:
        assert client._ws is not None
        await client._ws.send_str(json.dumps(message, ensure_ascii=True))

    client.send = send  # type: ignore[method-assign]


async def joined_socket(
    server: ServerProcess, room: str, role: str = "observer"
) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    session, ws = await raw_socket(server)
    token = server.token(room, f"raw-{role}", role)
    reply = await exchange(ws, json.dumps({"type": "join", "room": room, "token": token}))
    assert reply["type"] == "joined", reply
    return session, ws


async def test_a_lone_surrogate_name_is_refused_and_later_joiners_still_join(
    server: ServerProcess, lesson: LiveLesson
) -> None:
    before = internal_errors(server)
    session, ws = await raw_socket(server)
    try:
        token = server.token(lesson.room, "p-evil", "point")
        join = '{"type": "join", "room": "%s", "token": "%s", "name": "\\ud800"}'
        reply = await exchange(ws, join % (lesson.room, token))
        assert reply["type"] == "error" and reply["code"] == "bad_json"
        later = LessonClient(server.url, lesson.room, server.token(lesson.room, "p-2", "point"))
        await later.connect()
        try:
            assert later.joined["type"] == "joined"
            await first_frames(later, {"teacher_camera"})
        finally:
            await later.close()
    finally:
        await session.close()
    assert internal_errors(server) == before
    await still_serving(server, lesson)


async def test_a_lone_surrogate_label_is_refused_and_viewers_keep_receiving(
    server: ServerProcess, lesson: LiveLesson
) -> None:
    before = internal_errors(server)
    evil = LessonClient(server.url, lesson.room, server.token(lesson.room, "p-evil", "point"))
    await evil.connect()
    ascii_sender(evil)
    with pytest.raises(LessonError) as err:
        await evil.publish([Publication(PatternTrack(), "point_camera", label="\ud800")])
    assert err.value.code == "bad_json"
    await evil.close()

    # The master receives every point: its subscriber must still take in a new source.
    other = LessonClient(server.url, lesson.room, server.token(lesson.room, "p-2", "point"))
    await other.connect()
    try:
        await other.publish([Publication(PatternTrack(), "point_camera", codec="vp8")])
        await first_frames(lesson.master, {"point_camera"})
    finally:
        await other.close()
    assert internal_errors(server) == before
    await still_serving(server, lesson)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a\x00b", "control"),
        ("line\nbreak", "control"),
        ("evil\u202etxt", "control"),
        ("x" * 65, "at most 64"),
        ("   ", "empty"),
        (42, "string"),
    ],
)
async def test_bad_join_names_are_refused_with_the_reason(
    server: ServerProcess, room: str, name: object, problem: str
) -> None:
    session, ws = await raw_socket(server)
    try:
        token = server.token(room, "p-1", "point")
        reply = await exchange(
            ws, json.dumps({"type": "join", "room": room, "token": token, "name": name})
        )
        assert reply["code"] == "bad_request" and problem in reply["message"]
        assert server.api("GET", f"/api/rooms/{room}")["participants"] == []
        # The same socket may still join with a good name.
        reply = await exchange(
            ws, json.dumps({"type": "join", "room": room, "token": token, "name": "三年级 2 班"})
        )
        assert reply["type"] == "joined"
        names = [p["name"] for p in server.api("GET", f"/api/rooms/{room}")["participants"]]
        assert names == ["三年级 2 班"]
    finally:
        await session.close()


BAD_MESSAGES: list[tuple[str, str]] = [
    ("[" * 5000 + "]" * 5000, "bad_json"),
    ('{"type": "ping", "x": ' + "[" * 17 + "]" * 17 + "}", "bad_json"),
    ('{"type": "ping", "x": 1e999}', "bad_json"),
    ('{"type": "ping", "x": ' + "9" * 5000 + "}", "bad_json"),
    ('{"type": "ping", "x": NaN}', "bad_json"),
    ('{"type": "ping", "\\udfff": 1}', "bad_json"),
    ('{"type": 7}', "bad_json"),
    ('"just a string"', "bad_json"),
    ("null", "bad_json"),
    ('{"type": "ping", "id": {"nested": true}}', "bad_request"),
    ('{"type": "ping", "id": "' + "x" * 65 + '"}', "bad_request"),
    ('{"type": "__init__"}', "unknown_type"),
    ('{"type": "join", "room": ["a"], "token": "t"}', "bad_request"),
    ('{"type": "join", "room": "r", "token": 12345678901234567890}', "bad_json"),
    ('{"type": "publish", "sdp": "v=0", "tracks": []}', "not_joined"),
]


async def test_bad_messages_before_join_get_a_clear_error_and_no_traceback(
    server: ServerProcess, room: str
) -> None:
    before = internal_errors(server)
    session, ws = await raw_socket(server)
    try:
        for payload, code in BAD_MESSAGES:
            reply = await exchange(ws, payload)
            assert (reply["type"], reply["code"]) == ("error", code), payload[:60]
        await ws.send_bytes(b'{"type": "ping"}')
        reply = json.loads((await ws.receive(timeout=10)).data)
        assert reply["code"] == "bad_json" and "binary" in reply["message"]
        assert (await exchange(ws, '{"type": "ping"}'))["type"] == "pong"
    finally:
        await session.close()
    assert internal_errors(server) == before


JOINED_BAD_MESSAGES: list[tuple[dict[str, Any], str]] = [
    ({"type": "publish", "sdp": "v=0", "tracks": "all"}, "forbidden"),
    ({"type": "unpublish", "mids": "0"}, "bad_request"),
    ({"type": "unpublish", "mids": [1, 2]}, "bad_request"),
    ({"type": "set_subscription", "track": {"a": 1}}, "bad_request"),
    ({"type": "set_subscription", "track": None}, "bad_request"),
    ({"type": "request_keyframe", "track": 3.5}, "bad_request"),
    ({"type": "join", "room": "x", "token": "y"}, "already_joined"),
]


async def test_wrong_types_after_join_get_a_clear_error_and_no_traceback(
    server: ServerProcess, lesson: LiveLesson
) -> None:
    before = internal_errors(server)
    session, ws = await joined_socket(server, lesson.room)
    try:
        for message, code in JOINED_BAD_MESSAGES:
            reply = await _reply_to(ws, message)
            assert (reply["type"], reply["code"]) == ("error", code), message
    finally:
        await session.close()
    assert internal_errors(server) == before
    await still_serving(server, lesson)


async def _reply_to(ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> dict:
    """Send with an id and return the reply to it (skipping room notifications)."""
    await ws.send_str(json.dumps({**message, "id": "q"}))
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        reply = json.loads(msg.data)
        if reply.get("id") == "q":
            return reply


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
TYPES = st.sampled_from(
    [
        "ping",
        "join",
        "publish",
        "unpublish",
        "subscribe_answer",
        "set_subscription",
        "request_keyframe",
        "",
    ]
)
MESSAGES = st.fixed_dictionaries(
    {"type": TYPES | JSON_VALUES},
    optional={
        "room": JSON_VALUES,
        "token": JSON_VALUES,
        "name": JSON_VALUES,
        "sdp": JSON_VALUES,
        "tracks": JSON_VALUES,
        "mids": JSON_VALUES,
        "track": JSON_VALUES,
        "paused": JSON_VALUES,
        "layer": JSON_VALUES,
    },
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(message=MESSAGES)
async def test_any_json_message_is_answered_without_a_traceback(
    server: ServerProcess, room: str, message: dict[str, Any]
) -> None:
    before = internal_errors(server)
    session, ws = await raw_socket(server)
    try:
        await _survives(ws, message)
        token = server.token(room, "p-fuzz", "point")
        reply = await exchange(ws, json.dumps({"type": "join", "room": room, "token": token}))
        assert reply["type"] == "joined", reply
        await _survives(ws, message)
    finally:
        await session.close()
    assert internal_errors(server) == before


async def _survives(ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
    """Send `message`, then a ping: every reply is a known error, and the ping is answered."""
    # allow_nan and ensure_ascii: what a careless or hostile client can put on the wire.
    await ws.send_str(json.dumps({**message, "id": "q"}, ensure_ascii=True))
    await ws.send_str('{"type": "ping", "id": "alive"}')
    replies: list[dict[str, Any]] = []
    while not any(r.get("id") == "alive" for r in replies):
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg, message)
        replies.append(json.loads(msg.data))
    for reply in replies:
        if reply.get("type") == "error":
            assert reply["code"] in KNOWN_CODES, (reply, message)


async def test_one_failing_recipient_never_stops_a_broadcast() -> None:
    from media_server.participant import Participant
    from media_server.room import LessonInfo, Room
    from tongke.tokens import Claims, Role

    room = Room(LessonInfo(room="r"))
    received: dict[str, list[dict[str, Any]]] = {}

    def member(name: str, fails: BaseException | None) -> Participant:
        received[name] = []

        async def send(message: dict[str, Any]) -> None:
            if fails is not None:
                raise fails
            received[name].append(message)

        claims = Claims("r", name, Role.OBSERVER, name, name, 0)
        p = Participant(
            participant_id=name,
            claims=claims,
            name=name,
            send_json=send,
            pc_factory=lambda: None,  # type: ignore[arg-type, return-value]
            on_tracks=lambda *a: None,
        )
        room.participants[p.id] = p
        return p

    member("before", None)
    member("encoding", UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))
    member("closing", ConnectionResetError("closing"))
    member("after", None)
    await room.broadcast({"type": "participant_left", "participant": "x"})
    assert len(received["before"]) == 1 and len(received["after"]) == 1
