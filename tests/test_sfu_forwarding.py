"""A lesson through the SFU: real aiortc peers, the server in its own process."""

from __future__ import annotations

import asyncio

import av
import pytest

from classroom_agent.client import ClientEvents, LessonClient, LessonError, Publication
from tests.lesson_server import ServerProcess
from tests.media import PatternTrack, ToneTrack, first_frames, wait_for


async def join(server: ServerProcess, room: str, classroom: str, role: str, **kw) -> LessonClient:
    client = LessonClient(server.url, room, server.token(room, classroom, role), **kw)
    await client.connect()
    return client


async def test_every_point_sees_and_hears_the_master_without_server_codecs(
    server: ServerProcess, room: str
) -> None:
    master = await join(server, room, "c-master", "master")
    await master.publish(
        [
            Publication(PatternTrack(320, 240), "teacher_camera", codec="vp8"),
            Publication(PatternTrack(320, 240), "board_camera", codec="h264"),
            Publication(ToneTrack(), "classroom_mic"),
        ]
    )
    points = [await join(server, room, f"p-{i}", "point") for i in range(2)]
    try:
        for point in points:
            frames = await first_frames(point, {"teacher_camera", "board_camera", "classroom_mic"})
            assert isinstance(frames["teacher_camera"], av.VideoFrame)
            assert frames["board_camera"].width == 320
            assert isinstance(frames["classroom_mic"], av.AudioFrame)
            labels = {r.source: r.info["label"] for r in point.active_tracks()}
            assert labels["teacher_camera"] == "Teacher camera"
        stats = server.stats()
        assert stats["decoders"] == 0
        assert stats["encoders"] == 0
        assert stats["decoder_threads"] == 0
        assert stats["rooms"][room]["packets_forwarded"] > 0
    finally:
        for c in [*points, master]:
            await c.close()


async def test_a_point_joining_mid_lesson_gets_a_picture_after_a_keyframe_request(
    server: ServerProcess, room: str
) -> None:
    requests: list[str] = []
    master = await join(
        server,
        room,
        "c-master",
        "master",
        events=ClientEvents(on_keyframe_request=requests.append),
    )
    await master.publish([Publication(PatternTrack(), "teacher_camera", codec="vp8")])
    early = await join(server, room, "p-early", "point")
    late = None
    try:
        await first_frames(early, {"teacher_camera"})
        before = len(requests)
        late = await join(server, room, "p-late", "point")
        frames = await first_frames(late, {"teacher_camera"})
        assert frames["teacher_camera"].width == 320
        # The late point could only start on a keyframe the SFU asked the master for.
        assert len(requests) > before
    finally:
        for c in (late, early, master):
            if c is not None:
                await c.close()


async def test_leaving_and_vanishing_participants_are_cleaned_up(
    server: ServerProcess, room: str
) -> None:
    baseline = server.stats()
    master = await join(server, room, "c-master", "master")
    await master.publish([Publication(PatternTrack(), "teacher_camera", codec="vp8")])
    leaver = await join(server, room, "p-leaver", "point")
    vanisher = await join(server, room, "p-vanisher", "point")
    await first_frames(leaver, {"teacher_camera"})
    await first_frames(vanisher, {"teacher_camera"})
    assert server.stats()["rooms"][room]["participants"] == 3

    await leaver.close()
    # Vanishing: the socket drops without a goodbye and the PeerConnection just stops.
    assert vanisher._ws is not None
    vanisher._ws._response.connection.transport.abort()  # type: ignore[union-attr]
    for pc in (vanisher.subscribe_pc, vanisher.publish_pc):
        if pc is not None:
            await pc.close()
    await wait_for(lambda: server.stats()["rooms"][room]["participants"] == 1, what="cleanup")
    tracks = server.stats()["rooms"][room]["tracks"]
    assert tracks[0]["subscribers"] == 0

    await master.close()
    await wait_for(
        lambda: (
            server.stats()["peer_connections"] == baseline["peer_connections"]
            and server.stats()["sessions"] == baseline["sessions"]
        ),
        what="all peer connections and sessions closed",
    )
    stats = server.stats()
    assert stats["rooms"][room]["participants"] == 0
    assert stats["rooms"][room]["tracks"] == []
    assert stats["tasks"] <= baseline["tasks"] + 1
    if vanisher._session is not None:
        await vanisher._session.close()


async def test_a_point_can_ask_for_the_low_layer_and_the_stream_stays_continuous(
    server: ServerProcess, room: str
) -> None:
    master = await join(server, room, "c-master", "master")
    await master.publish(
        [
            Publication(PatternTrack(320, 240), "teacher_camera", layer="h", codec="vp8"),
            Publication(PatternTrack(160, 120), "teacher_camera", layer="l", codec="vp8"),
        ]
    )
    point = await join(server, room, "p-1", "point")
    try:
        frames = await first_frames(point, {"teacher_camera"})
        assert frames["teacher_camera"].width == 320
        remote = next(r for r in point.active_tracks() if r.source == "teacher_camera")
        await point.send({"type": "set_subscription", "track": remote.info["track"], "layer": "l"})
        assert remote.track is not None

        async def got_low() -> bool:
            frame = await asyncio.wait_for(remote.track.recv(), 10)  # type: ignore[union-attr]
            return frame.width == 160

        await wait_for(got_low, what="a 160-pixel frame from the low layer")
        assert len(point.active_tracks()) == 1  # one source, not two
    finally:
        await point.close()
        await master.close()


async def test_packets_a_point_loses_are_resent_from_the_sfu_cache(
    server: ServerProcess, room: str
) -> None:
    master = await join(server, room, "c-master", "master")
    await master.publish([Publication(PatternTrack(320, 240), "teacher_camera", codec="vp8")])
    point = await join(server, room, "p-lossy", "point")
    try:
        await first_frames(point, {"teacher_camera"})
        assert point.subscribe_pc is not None
        dtls = point.subscribe_pc.getTransceivers()[0].receiver.transport
        connection = dtls.transport._connection
        deliver = connection.data_received
        seen: set[bytes] = set()
        dropped = 0

        def lossy(data: bytes, component: int) -> None:
            # Drop the first copy of every 7th video RTP packet; let resends through.
            nonlocal dropped
            is_rtp = 127 < data[0] < 192 and not 192 <= data[1] <= 208
            if is_rtp and data[2:4] not in seen:
                seen.add(data[2:4])
                if int.from_bytes(data[2:4], "big") % 7 == 0:
                    dropped += 1
                    return
            deliver(data, component)

        connection.data_received = lossy
        remote = point.active_tracks()[0]
        for _ in range(30):
            await asyncio.wait_for(remote.track.recv(), 10)  # type: ignore[union-attr]
        stats = server.stats()["rooms"][room]
        assert dropped > 0
        assert stats["nacks_received"] > 0
        assert stats["packets_retransmitted"] > 0
    finally:
        await point.close()
        await master.close()


async def test_points_receive_the_master_and_the_master_receives_every_point(
    server: ServerProcess, room: str
) -> None:
    master = await join(server, room, "c-master", "master")
    await master.publish([Publication(PatternTrack(), "teacher_camera", codec="vp8")])
    points = [await join(server, room, f"p-{i}", "point") for i in range(2)]
    try:
        for point in points:
            await point.publish([Publication(PatternTrack(160, 120), "point_camera", codec="vp8")])
        await wait_for(
            lambda: sum(1 for r in master.active_tracks() if r.source == "point_camera") == 2,
            what="the master to receive both points",
        )
        await first_frames(master, {"point_camera"})
        for point in points:
            await first_frames(point, {"teacher_camera"})
            # A rural downlink carries the lesson, not the other points' cameras.
            assert {r.source for r in point.active_tracks()} == {"teacher_camera"}
    finally:
        for c in [*points, master]:
            await c.close()


async def test_an_observer_joining_late_receives_every_classrooms_audio_and_video(
    server: ServerProcess, room: str
) -> None:
    # One subscribe offer with several audio and video transceivers: each must get its
    # media over the one bundled transport.
    publishers = []
    for i, role in enumerate(["master", "point", "point"]):
        client = await join(server, room, f"c-{i}", role)
        await client.publish(
            [
                Publication(PatternTrack(160, 120), f"camera_{i}", codec="vp8"),
                Publication(ToneTrack(300 + 100 * i), f"mic_{i}"),
            ]
        )
        publishers.append(client)
    observer = await join(server, room, "ops", "observer")
    try:
        wanted = {f"camera_{i}" for i in range(3)} | {f"mic_{i}" for i in range(3)}
        frames = await first_frames(observer, wanted)
        assert {s for s, f in frames.items() if isinstance(f, av.AudioFrame)} == {
            f"mic_{i}" for i in range(3)
        }
        assert observer.subscribe_pc is not None
        transports = {t.receiver.transport for t in observer.subscribe_pc.getTransceivers()}
        assert len(transports) == 1
    finally:
        for c in [observer, *publishers]:
            await c.close()


async def test_a_publish_mixing_codecs_in_one_source_is_refused_and_changes_nothing(
    server: ServerProcess, room: str
) -> None:
    master = await join(server, room, "c-master", "master")
    try:
        with pytest.raises(LessonError) as refused:
            await master.publish(
                [
                    Publication(PatternTrack(), "teacher_camera", layer="h", codec="vp8"),
                    Publication(PatternTrack(), "teacher_camera", layer="l", codec="h264"),
                ]
            )
        assert refused.value.code == "bad_request"
        assert "one kind and codec" in refused.value.message
        assert server.stats()["rooms"][room]["tracks"] == []
    finally:
        await master.close()
