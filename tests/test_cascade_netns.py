"""A lesson cascaded from an origin node to an edge node, each a host of its own.

Both nodes are real `tongke serve` processes in their own network namespaces (see
tests/node_netns.py), started by this module; the publishers and subscribers are real
aiortc peers in the test process.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from classroom_agent.client import ClientEvents, LessonClient, Publication
from media_server import relay_wire as wire
from tests.lesson_server import ServerProcess
from tests.media import PatternTrack, ToneTrack, first_frames, wait_for
from tests.node_netns import NodePair, netns_available, origin_and_edge

_rooms = itertools.count(1)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodePair]:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    with origin_and_edge("cs-test", 171, tmp_path_factory.mktemp) as pair:
        yield pair


def relay_state(server: ServerProcess) -> dict[str, Any]:
    return server.api("GET", "/api/relay")


def link_of(server: ServerProcess, room: str) -> dict[str, Any] | None:
    return next((lk for lk in relay_state(server)["links"] if lk["room"] == room), None)


def imported(link: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """The imported layers of `source` on a link (empty when not imported)."""
    for track in (link or {}).get("imported", []):
        if track["track"].endswith("/" + source):
            return track["layers"]
    return {}


@asynccontextmanager
async def cascaded(nodes: NodePair) -> AsyncIterator[tuple[str, ServerProcess, ServerProcess]]:
    """A lesson opened on the origin, the edge made its edge for it."""
    room = f"cascade-{next(_rooms)}"
    origin, edge = nodes.servers["origin"], nodes.servers["edge"]
    origin.open_room(room)
    made = edge.api("POST", "/api/relay/edges", {"room": room, "origin": nodes.line_url("origin")})
    assert made["room"] == room
    await wait_for(lambda: link_of(edge, room) is not None, 10, "the relay link")
    try:
        yield room, origin, edge
    finally:
        edge.api("DELETE", f"/api/relay/edges/{room}")


async def client(server: ServerProcess, room: str, who: str, role: str, **kw: Any) -> LessonClient:
    c = LessonClient(server.url, room, server.token(room, who, role), **kw)
    await c.connect()
    return c


async def test_an_edge_viewer_gets_the_origin_lesson_with_keyframes_and_repairs_across_the_relay(
    nodes: NodePair,
) -> None:
    asked: list[str] = []
    async with cascaded(nodes) as (room, origin, edge):
        master = await client(
            origin, room, "c-master", "master",
            events=ClientEvents(on_keyframe_request=asked.append),
        )  # fmt: skip
        viewer = None
        try:
            await master.publish(
                [
                    Publication(PatternTrack(), "teacher_camera", codec="vp8"),
                    Publication(ToneTrack(), "classroom_mic", codec="opus"),
                ]
            )
            viewer_messages: list[dict[str, Any]] = []
            viewer = await client(
                edge, room, "o-edge", "observer",
                events=ClientEvents(on_message=viewer_messages.append),
            )  # fmt: skip
            frames = await first_frames(viewer, {"teacher_camera", "classroom_mic"}, timeout=30)
            assert frames["teacher_camera"].width == 320
            assert frames["classroom_mic"].sample_rate == 48000

            # Lip sync: the publisher's sender-report clock reached the edge's layers.
            def synced() -> bool:
                link = link_of(edge, room)
                return all(
                    imported(link, s).get("h", {}).get("synced")
                    for s in ("teacher_camera", "classroom_mic")
                )

            await wait_for(synced, 10, "sender reports relayed")

            # The origin's classroom state reaches the edge's receive policy.
            await master.request({"type": "lesson_start"})
            await wait_for(
                lambda: any(
                    m.get("type") == "classroom" and m["state"]["phase"] == "live"
                    for m in viewer_messages
                ),
                10,
                "the lesson live on the edge",
            )

            # A keyframe request from the edge viewer reaches the publisher on the origin.
            # The origin holds a request back for 1 s after a keyframe, and drops it when
            # another keyframe (someone else's) comes meanwhile: the viewer asks again, as
            # the page does when no picture follows.
            track = next(r for r in viewer.active_tracks() if r.source == "teacher_camera")
            for _ in range(5):
                before = len(asked)
                await viewer.send({"type": "request_keyframe", "track": track.info["track"]})
                try:
                    await wait_for(lambda b=before: len(asked) > b, 2, "the keyframe request")
                    break
                except AssertionError:
                    continue
            else:
                raise AssertionError("no keyframe request of 5 reached the publisher")
            assert asked[-1] == "teacher_camera"
            origin_link = link_of(origin, room)
            assert origin_link is not None and origin_link["keyframe_requests_in"] >= 1

            # Every 10th datagram to the edge is lost on the line: NACKs over the link
            # repair them from the origin's cache, and the viewer keeps its picture.
            port = relay_state(edge)["port"]
            lost_before = imported(link_of(edge, room), "teacher_camera")["h"]["lost"]
            nodes.drop_on_line(10, port)
            try:
                await wait_for(
                    lambda: (
                        imported(link_of(edge, room), "teacher_camera")["h"]["lost"]
                        >= lost_before + 15
                    ),
                    20,
                    "losses on the line",
                )
            finally:
                nodes.heal_line()
            await asyncio.sleep(0.5)  # the last retransmissions
            layer = imported(link_of(edge, room), "teacher_camera")["h"]
            assert layer["recovered"] >= 0.8 * layer["lost"], layer
            assert link_of(origin, room)["retransmitted"] >= 10  # type: ignore[index]
            video = next(r for r in viewer.active_tracks() if r.source == "teacher_camera")
            assert video.track is not None
            await asyncio.wait_for(video.track.recv(), 10)
        finally:
            if viewer is not None:
                await viewer.close()
            await master.close()


async def test_a_teaching_point_on_the_edge_is_seen_on_the_origin_and_nothing_loops(
    nodes: NodePair,
) -> None:
    async with cascaded(nodes) as (room, origin, edge):
        master = await client(origin, room, "c-master", "master")
        point = await client(edge, room, "p-xiaohe", "point", name="小河教学点")
        try:
            await master.publish([Publication(PatternTrack(), "teacher_camera", codec="vp8")])
            await point.publish([Publication(PatternTrack(), "point_camera", codec="vp8")])
            frames = await first_frames(master, {"point_camera"}, timeout=30)
            assert frames["point_camera"].width == 320
            await first_frames(point, {"teacher_camera"}, timeout=30)
            # Each node exports only its own participants' sources over the link.
            origin_link, edge_link = link_of(origin, room), link_of(edge, room)
            assert origin_link is not None and edge_link is not None
            assert [t["track"].split("/")[1] for t in origin_link["exported"]] == ["teacher_camera"]
            assert [t["track"].split("/")[1] for t in edge_link["exported"]] == ["point_camera"]
            tracks = origin.api("GET", f"/api/rooms/{room}")["tracks"]
            assert sorted(t["source"] for t in tracks) == ["point_camera", "teacher_camera"]
            assert next(t for t in tracks if t["source"] == "point_camera")["name"] == "小河教学点"
        finally:
            await point.close()
            await master.close()
        # The point left the edge: its camera is gone from the origin too.
        await wait_for(
            lambda: (
                not any(
                    t["source"] == "point_camera"
                    for t in origin.api("GET", f"/api/rooms/{room}")["tracks"]
                )
            ),
            10,
            "the point's camera withdrawn on the origin",
        )


async def test_the_edge_carries_only_the_layers_its_viewers_receive(nodes: NodePair) -> None:
    async with cascaded(nodes) as (room, origin, edge):
        master = await client(origin, room, "c-master", "master")
        viewer = await client(edge, room, "o-edge", "observer")
        try:
            await master.publish(
                [
                    Publication(PatternTrack(320, 240), "teacher_camera", layer="h", codec="vp8"),
                    Publication(PatternTrack(160, 120), "teacher_camera", layer="l", codec="vp8"),
                ]
            )
            await first_frames(viewer, {"teacher_camera"}, timeout=30)

            def exported() -> dict[str, bool]:
                link = link_of(origin, room)
                return link["exported"][0]["layers"] if link and link["exported"] else {}

            await wait_for(lambda: exported() == {"h": True, "l": False}, 10, "h alone relayed")
            track = next(r for r in viewer.active_tracks() if r.source == "teacher_camera")
            await viewer.send(
                {"type": "set_subscription", "track": track.info["track"], "layer": "l"}
            )
            await wait_for(lambda: exported() == {"h": False, "l": True}, 10, "l alone relayed")
            assert track.track is not None

            async def small_picture() -> bool:
                frame = await asyncio.wait_for(track.track.recv(), 10)  # type: ignore[union-attr]
                return bool(frame.width == 160)

            await wait_for(small_picture, 15, "the low layer's pictures at the viewer")
        finally:
            await viewer.close()
            await master.close()


async def test_closing_the_lesson_on_the_origin_ends_its_relay(nodes: NodePair) -> None:
    async with cascaded(nodes) as (room, origin, edge):
        master = await client(origin, room, "c-master", "master")
        try:
            await master.publish([Publication(ToneTrack(), "classroom_mic", codec="opus")])
            await wait_for(
                lambda: bool(imported(link_of(edge, room), "classroom_mic")), 10, "relayed"
            )
            origin.api("DELETE", f"/api/rooms/{room}")
            await wait_for(lambda: link_of(edge, room) is None, 10, "the link closed")
            await wait_for(
                lambda: edge.api("GET", f"/api/rooms/{room}")["tracks"] == [],
                10,
                "the relayed sources gone from the edge",
            )
            dialer = relay_state(edge)["edges"][0]
            await wait_for(
                lambda: "unknown_room" in str(relay_state(edge)["edges"][0]["error"]),
                10,
                "the edge told why it cannot relink",
            )
            assert dialer["room"] == room
        finally:
            await master.close()


def send_udp(data: bytes, address: tuple[str, int], netns: list[str] | None = None) -> None:
    """One datagram to `address`, from this host or from inside a namespace."""
    if netns is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(data, address)
        return
    code = (
        "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        f"s.sendto(bytes.fromhex(sys.argv[1]),({address[0]!r},{address[1]}))"
    )
    subprocess.run([*netns, sys.executable, "-c", code, data.hex()], check=True)


async def test_spoofed_relay_packets_and_unsigned_links_are_dropped_and_counted(
    nodes: NodePair,
) -> None:
    async with cascaded(nodes) as (room, origin, edge):
        master = await client(origin, room, "c-master", "master")
        viewer = await client(edge, room, "o-edge", "observer")
        try:
            await master.publish([Publication(PatternTrack(), "teacher_camera", codec="vp8")])
            await first_frames(viewer, {"teacher_camera"}, timeout=30)
            state = relay_state(edge)
            link_id, port = link_of(edge, room)["link"], state["port"]  # type: ignore[index]
            target = (nodes.address["edge"], port)
            key = b"k" * 32  # not the link's key: nobody outside the service has that
            forged = wire.seal(key, wire.RTP, link_id, 1, b"\x80" * 40)
            send_udp(forged, target)  # from an address that is not the origin
            send_udp(wire.seal(key, wire.RTP, link_id ^ 1, 1, b"\x80" * 40), target)
            # From the origin's own address, with the real link id, but no key.
            send_udp(forged, (nodes.line["edge"], port), nodes.exec_prefix("origin"))

            def dropped() -> dict[str, int]:
                return relay_state(edge)["dropped"]

            await wait_for(
                lambda: {"wrong_source", "unknown_link", "bad_tag"} <= set(dropped()),
                10,
                "the forged datagrams counted",
            )
            assert dropped() == {"wrong_source": 1, "unknown_link": 1, "bad_tag": 1}

            # A node without the secret cannot open a link: refused, counted, nothing opened.
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(origin.url + "/api/relay/link")
                await ws.send_json(
                    {"type": "hello", "node": "intruder", "room": room, "sent_at": time.time(),
                     "nonce": "0" * 32, "port": 9, "mac": "0" * 64}
                )  # fmt: skip
                reply = await ws.receive_json(timeout=10)
                assert reply["error"]["code"] == "relay_refused"
                await ws.close()
            assert relay_state(origin)["refused"].get("relay_refused") == 1
            assert [lk["peer"] for lk in relay_state(origin)["links"]] == [state["node"]]

            # The lesson went on: the viewer still decodes new pictures.
            video = next(r for r in viewer.active_tracks() if r.source == "teacher_camera")
            assert video.track is not None
            before = imported(link_of(edge, room), "teacher_camera")["h"]["packets"]
            await wait_for(
                lambda: (
                    imported(link_of(edge, room), "teacher_camera")["h"]["packets"] > before + 30
                ),
                10,
                "media after the forgeries",
            )
        finally:
            await viewer.close()
            await master.close()


if sys.platform != "linux":  # pragma: no cover - namespaces are a Linux thing
    pytestmark = pytest.mark.skip("Linux only")
