"""An edge's members at the origin, in one process: what the origin takes, what it refuses.

The link's control channel is driven by hand (tests/test_cascade_classroom_netns.py has
the same across two real nodes).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from media_server.classroom import Phase
from media_server.publisher import SignallingError
from media_server.relay_classroom import EdgeClassroom, OriginMembers
from media_server.relay_link import RelayLink
from media_server.room import LessonInfo, Room
from tests.media import wait_for


class Transport:
    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        pass


class Channel:
    """One end of a link's control channel: what we feed it, what it sends."""

    def __init__(self, room: Room, role: str) -> None:
        self.link = RelayLink(
            room=room,
            link_id=9,
            key=b"k" * 32,
            peer_node="edge-b" if role == "origin" else "origin-a",
            own_node="origin-a" if role == "origin" else "edge-b",
            peer_addr=("10.9.9.9", 4000),
            transport=Transport(),
            role=role,
        )
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> str | None:
        return await self.inbox.get()

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def feed(self, message: Any) -> None:
        self.inbox.put_nowait(message if isinstance(message, str) else json.dumps(message))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == kind]


@asynccontextmanager
async def origin_side() -> AsyncIterator[tuple[Room, Channel, OriginMembers]]:
    room = Room(LessonInfo(room="r1", master="c-master", points=["p-xiaohe"]))
    room.classroom.phase = Phase.LIVE
    channel = Channel(room, "origin")
    members = OriginMembers(channel.link, room)
    serving = asyncio.ensure_future(
        channel.link.serve(channel.receive, channel.send, members.handle)
    )
    try:
        yield room, channel, members
    finally:
        channel.inbox.put_nowait(None)
        await asyncio.wait_for(serving, 5)
        await members.close()
        room.director.close()


def joined(member: str, classroom: str, role: str = "point", name: str = "小河教学点") -> Any:
    return {
        "type": "member_joined",
        "member": member,
        "claims": {"classroom": classroom, "role": role, "subject": classroom},
        "name": name,
    }


def action(req: int, member: str, **message: Any) -> dict[str, Any]:
    return {"type": "member_action", "req": req, "member": member, "message": message}


async def test_an_edge_member_is_present_raises_a_hand_and_leaves_with_its_link() -> None:
    async with origin_side() as (room, channel, _members):
        channel.feed(joined("p1", "p-xiaohe"))
        channel.feed(action(1, "p1", type="hand_raise"))
        await wait_for(lambda: bool(channel.of_type("member_reply")), 5, "the reply")
        assert channel.of_type("member_reply")[0] == {
            "type": "member_reply",
            "req": 1,
            "reply": {"type": "done", "action": "hand_raise"},
        }
        assert [h.classroom for h in room.classroom.hands] == ["p-xiaohe"]
        assert room.classroom.attendance["p-xiaohe"].connections == 1
        # What the classroom announced went to the member before the answer.
        sends = channel.of_type("member_send")
        assert sends and channel.sent.index(sends[-1]) < channel.sent.index(
            channel.of_type("member_reply")[0]
        )
        assert sends[-1]["members"] == ["p1"]
        assert sends[-1]["message"]["state"]["hands"][0]["classroom"] == "p-xiaohe"
    # The link closed: its members left the lesson, their hands with them.
    assert room.classroom.attendance["p-xiaohe"].connections == 0
    assert room.classroom.hands == []
    assert room.classroom.remote == {}


async def test_spoofed_and_malformed_member_messages_are_refused_counted_and_harmless() -> None:
    async with origin_side() as (room, channel, _members):
        channel.feed(joined("p1", "p-xiaohe"))
        bad: list[Any] = [
            action(2, "p9", type="hand_raise"),  # never joined over this link
            action(3, "p1", type="receive_mode", mode="program"),  # the edge's own business
            action(4, "p1", type="drop_tables"),
            action(-1, "p1", type="hand_raise"),
            joined("p2", "p-shanbei", role="superuser"),
            joined("../p3", "p-shanbei"),
            joined("p4", "p-shanbei", name="\x00\x07"),
            {"type": "member_joined", "member": "p5", "claims": "admin"},
            {"type": "member_left", "member": 7},
            {"type": "member_teleport", "member": "p1"},
            "[1, 2, 3]",
            "{not json",
        ]
        for message in bad:
            channel.feed(message)
        channel.feed(action(5, "p1", type="chat", text="还在吗"))
        await wait_for(
            lambda: any(r["req"] == 5 for r in channel.of_type("member_reply")), 5, "the chat"
        )
        assert channel.link.stats.bad_messages == len(bad)
        # The refused actions were answered (the edge's participant is not left waiting).
        errors = {
            r["req"]: r["error"]["code"] for r in channel.of_type("member_reply") if "error" in r
        }
        assert errors == {2: "bad_request", 3: "bad_request", 4: "bad_request"}
        assert list(room.classroom.remote) == ["edge-b~p1"]
        assert [m.text for m in room.classroom.chat] == ["还在吗"]
        assert room.classroom.hands == []


async def test_the_edge_forwards_actions_delivers_the_origin_messages_and_ignores_junk() -> None:
    room = Room(LessonInfo(room="r1"))
    channel = Channel(room, "edge")
    upstream = EdgeClassroom(room)
    room.classroom.upstream = upstream
    upstream.attach(channel.link)
    serving = asyncio.ensure_future(
        channel.link.serve(channel.receive, channel.send, _must_handle(upstream))
    )
    try:
        for junk in (
            {"type": "member_send", "members": "p1", "message": {"type": "chat"}},
            {"type": "member_send", "members": ["p1"], "message": {"type": "offer", "sdp": ""}},
            {"type": "member_reply", "req": 99, "reply": {"type": "done"}},  # nobody asked
        ):
            channel.feed(junk)
        channel.feed({"type": "member_send", "members": ["p-gone"], "message": {"type": "chat"}})
        await wait_for(lambda: channel.link.stats.bad_messages == 2, 5, "the junk counted")

        # A participant's action goes to the origin without its socket's id; the
        # origin's refusal is the participant's answer.
        who = SimpleNamespace(id="p1")
        asked = asyncio.ensure_future(
            upstream.action(who, "hand_raise", {"type": "hand_raise", "id": 5})  # type: ignore[arg-type]
        )
        await wait_for(lambda: bool(channel.of_type("member_action")), 5, "the forwarded action")
        forwarded = channel.of_type("member_action")[0]
        assert forwarded["member"] == "p1" and forwarded["message"] == {"type": "hand_raise"}
        channel.feed(
            {
                "type": "member_reply",
                "req": forwarded["req"],
                "error": {"code": "not_live", "message": "the lesson has not started yet"},
            }
        )
        with pytest.raises(SignallingError) as refused:
            await asyncio.wait_for(asked, 5)
        assert refused.value.code == "not_live"
        # The link gone: an action is answered at once, not after a timeout.
        upstream.detach(channel.link)
        with pytest.raises(SignallingError) as refused:
            await upstream.action(who, "chat", {"type": "chat", "text": "喂"})  # type: ignore[arg-type]
        assert refused.value.code == "relay_unavailable"
    finally:
        channel.inbox.put_nowait(None)
        await asyncio.wait_for(serving, 5)
        upstream.close()
        room.director.close()


def _must_handle(upstream: EdgeClassroom) -> Any:
    async def handle(message: dict[str, Any]) -> None:
        if not await upstream.handle(message):
            raise ValueError(f"unexpected {message.get('type')!r}")

    return handle


async def test_an_edge_that_links_again_keeps_its_members_present_when_the_old_link_ends() -> None:
    async with origin_side() as (room, old, old_members):
        old.feed(joined("p1", "p-xiaohe"))
        await wait_for(lambda: "edge-b~p1" in room.classroom.remote, 5, "the member")
        # The same edge links again (its socket died unseen): the new link's member
        # joins before the old link is noticed gone.
        new = Channel(room, "origin")
        new_members = OriginMembers(new.link, room)
        await new_members.handle(joined("p1", "p-xiaohe"))
        await old_members.close()
        assert room.classroom.remote["edge-b~p1"] is new_members.members["p1"]
        assert room.classroom.attendance["p-xiaohe"].connections == 1
        await new_members.close()
        assert room.classroom.attendance["p-xiaohe"].connections == 0
