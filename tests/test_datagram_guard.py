"""Stray datagrams at the server's ICE ports: dropped and counted, the lesson goes on."""

from __future__ import annotations

import asyncio
import socket
import struct

from classroom_agent.client import ClientEvents, LessonClient, Publication
from tests.lesson_server import ServerProcess
from tests.media import PatternTrack, ToneTrack, first_frames, wait_for
from tests.test_sfu_forwarding import join


def server_ports(sdp: str) -> set[int]:
    """The UDP ports of the server's ICE candidates in an SDP it wrote."""
    ports = set()
    for line in sdp.splitlines():
        if line.startswith("a=candidate:") and " udp " in line.lower():
            ports.add(int(line.split()[5]))
    return ports


def attack(ports: set[int]) -> None:
    rtp_shaped = struct.pack("!BBHII", 0x80, 96, 1, 1, 0x1234) + b"\x00" * 9000
    junk_srtp = struct.pack("!BBHII", 0x80, 96, 7, 7, 0x1234) + b"\xaa" * 200
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for port in ports:
            for data in (b"", rtp_shaped, junk_srtp, b"\x16\xfe\xfd" + b"\x00" * 40, b"\xff"):
                sock.sendto(data, ("127.0.0.1", port))


async def frames_after(client: LessonClient, source: str, count: int) -> int:
    remote = next(r for r in client.active_tracks() if r.source == source)
    assert remote.track is not None
    got = 0
    for _ in range(count):
        await asyncio.wait_for(remote.track.recv(), 5)
        got += 1
    return got


async def test_stray_datagrams_neither_end_the_lesson_nor_go_uncounted(
    server: ServerProcess, room: str
) -> None:
    master = await join(server, room, "c-master", "master")
    await master.publish(
        [
            Publication(PatternTrack(320, 240), "teacher_camera", codec="vp8"),
            Publication(ToneTrack(), "classroom_mic"),
        ]
    )
    point = await join(server, room, "p-1", "point")
    try:
        await first_frames(point, {"teacher_camera", "classroom_mic"})
        assert master.publish_pc is not None and point.subscribe_pc is not None
        ports = server_ports(master.publish_pc.remoteDescription.sdp)
        ports |= server_ports(point.subscribe_pc.remoteDescription.sdp)
        assert ports
        before = server.stats()
        attack(ports)
        await wait_for(
            lambda: (
                server.stats()["datagrams_dropped"].get("empty", 0)
                > before["datagrams_dropped"].get("empty", 0)
            ),
            what="the empty datagram counted",
        )
        # Media keeps flowing both ways through the server after the attack.
        assert await frames_after(point, "teacher_camera", 30) == 30
        assert await frames_after(point, "classroom_mic", 50) == 50
        after = server.stats()
        dropped = after["datagrams_dropped"]
        for reason in ("empty", "oversized", "wrong_source", "unknown"):
            assert dropped.get(reason, 0) > before["datagrams_dropped"].get(reason, 0), reason
        assert (
            after["rooms"][room]["packets_forwarded"] > before["rooms"][room]["packets_forwarded"]
        )
    finally:
        await point.close()
        await master.close()


async def test_a_dead_media_connection_ends_the_session_so_the_client_rejoins(
    server: ServerProcess, room: str
) -> None:
    master = await join(server, room, "c-master", "master")
    await master.publish([Publication(PatternTrack(320, 240), "teacher_camera", codec="vp8")])
    errors: list[dict] = []
    point = await join(
        server,
        room,
        "p-1",
        "point",
        events=ClientEvents(
            on_message=lambda m: errors.append(m) if m.get("type") == "error" else None
        ),
    )
    try:
        await first_frames(point, {"teacher_camera"})
        assert point.subscribe_pc is not None
        # The media path dies while the signalling socket stays up.
        await point.subscribe_pc.close()
        await wait_for(
            lambda: any(e.get("code") == "media_failed" for e in errors),
            what="media_failed from the server",
        )
        await wait_for(
            lambda: server.stats()["rooms"][room]["participants"] == 1,
            what="the silent participant removed",
        )
    finally:
        await point.close()
        await master.close()
