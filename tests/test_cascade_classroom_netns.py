"""The lesson across a cascade: teaching points on an edge node are members of the
origin's lesson, and points there that take the program get the origin's director.

Both nodes are real `tongke serve` processes in their own network namespaces
(tests/node_netns.py); the master console, the points and the viewer are real aiortc
peers in the test process.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from classroom_agent.client import ClientEvents, LessonClient, LessonError, Publication
from tests.lesson_server import ServerProcess
from tests.media import PatternTrack, ToneTrack, first_frames, wait_for
from tests.node_netns import NodePair, netns_available, origin_and_edge

_rooms = itertools.count(1)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodePair]:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    with origin_and_edge("ce-test", 173, tmp_path_factory.mktemp) as pair:
        yield pair


@dataclass
class Member:
    client: LessonClient
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> dict[str, Any]:
        states = [m["state"] for m in self.messages if m.get("type") == "classroom"]
        return states[-1] if states else {}

    def chats(self) -> list[dict[str, Any]]:
        return [m["message"] for m in self.messages if m.get("type") == "chat"]

    async def do(self, kind: str, **fields: Any) -> dict[str, Any]:
        return await self.client.request({"type": kind, **fields})


async def join(server: ServerProcess, room: str, classroom: str, role: str, name: str) -> Member:
    member = Member(client=None)  # type: ignore[arg-type]
    token = server.token(room, classroom, role, name=name)
    member.client = LessonClient(
        server.url, room, token, events=ClientEvents(on_message=member.messages.append)
    )
    await member.client.connect()
    await wait_for(lambda: bool(member.state), 15, f"{classroom}'s classroom state")
    return member


@asynccontextmanager
async def cascaded(nodes: NodePair) -> AsyncIterator[tuple[str, ServerProcess, ServerProcess]]:
    room = f"edge-class-{next(_rooms)}"
    origin, edge = nodes.servers["origin"], nodes.servers["edge"]
    origin.open_room(room)
    edge.api("POST", "/api/relay/edges", {"room": room, "origin": nodes.line_url("origin")})
    await wait_for(
        lambda: any(lk["room"] == room for lk in edge.api("GET", "/api/relay")["links"]),
        10,
        "the relay link",
    )
    try:
        yield room, origin, edge
    finally:
        edge.api("DELETE", f"/api/relay/edges/{room}")


def point_entry(member: Member, classroom: str) -> dict[str, Any]:
    return next((p for p in member.state.get("points", []) if p["classroom"] == classroom), {})


async def test_a_point_on_the_edge_raises_its_hand_chats_and_is_called_on_and_muted_from_the_origin(
    nodes: NodePair,
) -> None:
    async with cascaded(nodes) as (room, origin, edge):
        master = await join(origin, room, "c-master", "master", "城关小学")
        xiaohe = await join(edge, room, "p-xiaohe", "point", "小河教学点")
        shanbei = await join(edge, room, "p-shanbei", "point", "山背教学点")
        viewer = await join(edge, room, "o-county", "observer", "县教研室")
        try:
            # Attendance: the origin's master console sees the edge's points present.
            await wait_for(
                lambda: (
                    point_entry(master, "p-xiaohe").get("present") is True
                    and point_entry(master, "p-shanbei").get("present") is True
                ),
                10,
                "the edge's points present at the origin",
            )
            report = origin.api("GET", f"/api/rooms/{room}/attendance")
            present = {a["classroom"] for a in report["attendance"] if a["present"]}
            assert {"c-master", "p-xiaohe", "p-shanbei"} <= present
            await master.do("lesson_start")
            await wait_for(lambda: xiaohe.state.get("phase") == "live", 10, "live on the edge")

            # A hand raised on the edge is in the master's queue; lowered, it is gone.
            assert (await xiaohe.do("hand_raise"))["action"] == "hand_raise"
            await wait_for(
                lambda: [h["classroom"] for h in master.state["hands"]] == ["p-xiaohe"],
                10,
                "the edge's hand at the origin",
            )
            assert [h["name"] for h in master.state["hands"]] == ["小河教学点"]
            await shanbei.do("hand_raise")
            await shanbei.do("hand_lower")
            await wait_for(
                lambda: (
                    [h["classroom"] for h in master.state["hands"]] == ["p-xiaohe"]
                    and [h["classroom"] for h in shanbei.state["hands"]] == ["p-xiaohe"]
                ),
                10,
                "the lowered hand gone everywhere",
            )

            # Chat both ways, and the private line with the master stays private.
            await xiaohe.do("chat", text="老师，我们准备好了")
            await wait_for(
                lambda: any(c["text"] == "老师，我们准备好了" for c in master.chats()),
                10,
                "the edge's chat at the master",
            )
            await xiaohe.do("chat", text="只给老师看", to="master")
            await master.do("chat", text="小河，请稍等", to="p-xiaohe")
            await master.do("chat", text="大家好")
            await wait_for(
                lambda: (
                    [c["text"] for c in xiaohe.chats()]
                    == ["老师，我们准备好了", "只给老师看", "小河，请稍等", "大家好"]
                ),
                10,
                "every chat line the point may see",
            )
            await wait_for(
                lambda: [c["text"] for c in shanbei.chats()] == ["老师，我们准备好了", "大家好"],
                10,
                "the other point's chat",
            )
            private = next(c for c in master.chats() if c["text"] == "只给老师看")
            assert private["private_with"] == "p-xiaohe" and private["name"] == "小河教学点"
            # A refusal at the origin is the edge participant's answer.
            with pytest.raises(LessonError) as refused:
                await shanbei.do("chat", text="悄悄话", to="p-xiaohe")
            assert refused.value.code == "forbidden"
            with pytest.raises(LessonError) as refused:
                await viewer.do("hand_raise")
            assert refused.value.code == "forbidden"

            # The point's device report reaches the master console's tile.
            await xiaohe.do("agent_state", devices=[], encoders=[])
            await wait_for(
                lambda: any(
                    m.get("type") == "agent_state" and m["classroom"] == "p-xiaohe"
                    for m in master.messages
                ),
                10,
                "the edge point's device report at the master",
            )

            # The master calls on the edge point: its microphone then reaches everyone.
            await xiaohe.client.publish([Publication(ToneTrack(), "classroom_mic", codec="opus")])
            await first_frames(viewer.client, {"classroom_mic"}, timeout=30)
            assert (await master.do("call_on", classroom="p-xiaohe"))["action"] == "call_on"
            await wait_for(
                lambda: (
                    xiaohe.state.get("called_on") == "p-xiaohe"
                    and shanbei.state.get("called_on") == "p-xiaohe"
                    and not master.state["hands"]
                ),
                10,
                "the call-on on the edge",
            )
            await first_frames(shanbei.client, {"classroom_mic"}, timeout=30)

            # Muted from the origin: applied on the edge, where the point's microphone
            # is forwarded to the viewer and the other point.
            await master.do("mute", classroom="p-xiaohe")
            await wait_for(
                lambda: point_entry(xiaohe, "p-xiaohe").get("muted") is True,
                10,
                "muted, as the edge point sees it",
            )

            def hears_xiaohe(member: Member) -> bool:  # (the one microphone here)
                return any(t.source == "classroom_mic" for t in member.client.active_tracks())

            await wait_for(lambda: not hears_xiaohe(viewer), 10, "the muted mic gone at the edge")
            await wait_for(lambda: not hears_xiaohe(shanbei), 10, "the muted mic gone (point)")

            # The point leaves the edge: the origin sees it go and releases the call-on.
            await xiaohe.client.close()
            await wait_for(
                lambda: (
                    point_entry(master, "p-xiaohe").get("present") is False
                    and master.state.get("called_on") is None
                ),
                10,
                "the edge point's leaving at the origin",
            )
        finally:
            for m in (viewer, shanbei, xiaohe, master):
                await m.client.close()


async def test_a_program_only_point_on_the_edge_gets_the_origin_director_and_its_cuts(
    nodes: NodePair,
) -> None:
    async with cascaded(nodes) as (room, origin, edge):
        master = await join(origin, room, "c-master", "master", "城关小学")
        point = await join(edge, room, "p-xiaohe", "point", "小河教学点")
        try:
            await master.client.publish(
                [
                    Publication(PatternTrack(320, 240), "teacher_camera", codec="vp8"),
                    Publication(PatternTrack(160, 120), "board_camera", codec="vp8"),
                ]
            )
            await master.do("lesson_start")
            assert (await point.do("receive_mode", mode="program"))["action"] == "receive_mode"
            frames = await first_frames(point.client, {"program"}, timeout=30)
            # The teacher camera is on air at the origin: its picture, through the relay.
            assert (frames["program"].width, frames["program"].height) == (320, 240)
            # The edge made no program of its own: the point receives the origin's.
            assert {t.source for t in point.client.active_tracks()} == {"program"}
            described = edge.api("GET", f"/api/rooms/{room}")["director"]
            assert described["program"] is not None and "~director/" in described["program"]
            # Its receive mode is the edge's to follow, and the point's page shows it.
            await wait_for(
                lambda: "p-xiaohe" in point.state.get("director", {}).get("program_only", []),
                10,
                "program-only shown to the point",
            )

            # A cut at the origin (the master takes the board camera) is seen on the edge.
            await master.do("director", track=board_track(origin, room))
            program = next(t for t in point.client.active_tracks() if t.source == "program")
            assert program.track is not None

            async def board_on_air() -> bool:
                frame = await asyncio.wait_for(program.track.recv(), 10)  # type: ignore[union-attr]
                return bool(frame.width == 160)

            await wait_for(board_on_air, 15, "the board camera's pictures on the edge")
            cuts = point.state["director"]["cuts"]
            assert cuts[-1]["reason"] == "manual" and cuts[-1]["track"].endswith("/board_camera")
        finally:
            await point.client.close()
            await master.client.close()


def board_track(origin: ServerProcess, room: str) -> str:
    tracks = origin.api("GET", f"/api/rooms/{room}")["tracks"]
    return str(next(t["track"] for t in tracks if t["source"] == "board_camera"))


if sys.platform != "linux":  # pragma: no cover - namespaces are a Linux thing
    pytestmark = pytest.mark.skip("Linux only")
