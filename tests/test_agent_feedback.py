"""The agent against the real SFU: layers nobody receives stop; a wanted one comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiortc import RTCPeerConnection

from classroom_agent.agent import ClassroomAgent
from classroom_agent.client import ClientEvents, LessonClient
from classroom_agent.config import SourceConfig
from media_server.bandwidth import LATE_START_BPS, UNHEARD_MAX_S
from media_server.twcc import build_feedback
from tests.lesson_server import ServerProcess
from tests.media import first_frames, wait_for
from tests.test_agent import running, small_master
from tongke import rtc_internals


async def test_the_agent_encodes_only_the_layers_the_sfu_forwards(
    server: ServerProcess, room: str
) -> None:
    camera = SourceConfig(
        name="teacher_camera",
        type="synthetic",
        codec="h264",
        width=640,
        height=360,
        bitrate_kbps=500,
        fps=15,
        layers=["h", "l"],
        seed=1,
    )
    config = small_master(server, room)
    config.sources = [camera, *config.sources[1:]]
    master = ClassroomAgent(config, record=False)
    viewer = LessonClient(server.url, room, server.token(room, "ops", "observer"))
    async with running(master):
        await viewer.connect()
        try:
            layers = {}
            await wait_for(lambda: len(master.tracks) == 3, 20, "the agent's tracks")
            layers = {p.layer: p.track for p in master.tracks if p.source == "teacher_camera"}
            frames = await first_frames(viewer, {"teacher_camera"}, 30)
            assert (frames["teacher_camera"].width, frames["teacher_camera"].height) == (640, 360)
            # The viewer gets the top layer; nobody receives 180p, so it is not encoded.
            await wait_for(lambda: layers["l"].idle, 20, "the SFU to report 180p idle")
            frozen = layers["l"].stats()["frames"]
            assert not layers["h"].idle
            # The viewer asks for the 180p layer only: it comes back (on a keyframe) and
            # the top layer, now unwatched, stops.
            remote = next(r for r in viewer.active_tracks() if r.source == "teacher_camera")
            await viewer.send(
                {"type": "set_subscription", "track": remote.info["track"], "layer": "l"}
            )
            await wait_for(lambda: not layers["l"].idle, 20, "180p to be wanted again")
            await wait_for(lambda: layers["h"].idle, 20, "720p to be reported idle")
            assert remote.track is not None

            async def small_picture() -> bool:
                frame = await asyncio.wait_for(remote.track.recv(), 10)  # type: ignore[union-attr]
                return (frame.width, frame.height) == (320, 180)

            await wait_for(small_picture, 30, "180p pictures at the viewer")
            assert layers["l"].stats()["frames"] > frozen
            assert layers["l"].stats()["keyframes"] >= 2  # the first, and the restart
        finally:
            await viewer.close()


def point_downlink(server: ServerProcess, room: str) -> dict | None:
    for p in server.stats()["rooms"].get(room, {}).get("receiving", []):
        if p["role"] == "point" and p["downlink"]:
            return p["downlink"]  # type: ignore[no-any-return]
    return None


async def test_a_point_agent_tells_the_sfu_when_each_packet_arrived(
    server: ServerProcess, room: str
) -> None:
    """The point agent accepts transport-cc and reports arrivals as a browser does, so the
    SFU estimates its line by delay (before it loses packets) and probes it; without the
    reports it could learn a point agent's line only by overflowing it."""
    async with reporting_point(server, room, 20) as point:
        down = point_downlink(server, room)
        assert down is not None and down["delay_bps"] is not None
        assert down["late_start"] is None  # heard from at once: the usual start
        assert point.feedback is not None
    assert point.feedback is None  # stopped with the connection


async def test_a_point_first_heard_from_late_starts_low_and_still_gets_its_lesson(
    server: ServerProcess, room: str
) -> None:
    """A point whose way back to the SFU comes up late (as on a thin, lossy line whose
    handshake's last flight was lost) sends no receiver report and no transport-cc
    feedback until then. It is not sent the whole lesson at the SFU's default estimate
    once heard: its estimate starts from 300 kbit/s, probes climb from there, and the
    teacher's picture still comes."""
    releases: dict[int, Callable[[], None]] = {}

    def way_back_shut(pc: RTCPeerConnection) -> None:
        for transceiver in pc.getTransceivers():
            dtls = rtc_internals.dtls_of(transceiver)
            if id(dtls) not in releases:
                releases[id(dtls)] = rtc_internals.hold_rtcp(dtls)

    master = ClassroomAgent(small_master(server, room), record=False)
    point = LessonClient(
        server.url,
        room,
        server.token(room, "xiaohe", "point", name="小河"),
        events=ClientEvents(on_subscribe_transceivers=way_back_shut),
    )
    async with running(master):
        await point.connect()
        try:
            await wait_for(
                lambda: point_downlink(server, room) is not None, 30, "the point's downlink"
            )
            # The impairment: the way back stays shut past the SFU's 5 s wait, counted
            # from its first control tick (within a second of the downlink showing).
            await asyncio.sleep(UNHEARD_MAX_S + 2.0)
            for release in releases.values():
                release()

            def started_low() -> bool:
                down = point_downlink(server, room)
                return down is not None and down["late_start"] is not None

            await wait_for(started_low, 10, "the late point's estimate to start low")
            late = point_downlink(server, room)["late_start"]  # type: ignore[index]
            assert late["after_s"] >= UNHEARD_MAX_S
            assert late["estimate_bps"] <= LATE_START_BPS
            await first_frames(point, {"teacher_camera"}, 30)
        finally:
            await point.close()


@asynccontextmanager
async def reporting_point(
    server: ServerProcess, room: str, reports: int
) -> AsyncIterator[LessonClient]:
    """A master agent and a point agent, once the point's first pictures arrived and
    more than `reports` of its transport-cc reports reached the SFU."""
    master = ClassroomAgent(small_master(server, room), record=False)
    point = LessonClient(server.url, room, server.token(room, "xiaohe", "point", name="小河"))
    async with running(master):
        await point.connect()
        try:
            await first_frames(point, {"teacher_camera"}, 30)

            def reported() -> bool:
                down = point_downlink(server, room)
                return bool(down and down["transport_cc"] and down["feedback_reports"] > reports)

            await wait_for(reported, 30, "transport-cc reports from the point agent")
            yield point
        finally:
            await point.close()


async def test_feedback_read_at_the_socket_leaves_the_rest_to_aiortc_and_forgeries_out(
    server: ServerProcess, room: str
) -> None:
    """Feedback sent alone is read in the socket callback, before aiortc's queue. A
    compound that opens with feedback and also asks for a keyframe still gets its
    keyframe; a datagram dressed as feedback that SRTCP does not authenticate is dropped,
    and the estimate and the lesson go on as before."""
    async with reporting_point(server, room, 5) as point:
        assert point.subscribe_pc is not None
        transceiver = next(
            t
            for t in point.subscribe_pc.getTransceivers()
            if t.mid == next(r.mid for r in point.active_tracks() if r.source == "teacher_camera")
        )
        dtls = rtc_internals.dtls_of(transceiver)
        media_ssrc = transceiver.receiver.getSynchronizationSources()[0].source

        def camera_keyframe_requests() -> int:
            for p in server.stats()["rooms"][room]["receiving"]:
                if p["role"] == "point":
                    for t in p["tracks"]:
                        if t["track"] and "teacher_camera" in t["track"]:
                            return int(t["keyframe_requests"] or 0)
            return 0

        asked = camera_keyframe_requests()
        reports = point_downlink(server, room)["feedback_reports"]  # type: ignore[index]
        # Feedback about numbers far behind (nothing matches), then a PLI.
        feedback = build_feedback(30_000, [1_000_000, 1_001_000], sender_ssrc=7)
        pli = bytes([0x81, 206]) + (2).to_bytes(2, "big") + (7).to_bytes(4, "big")
        await rtc_internals.send_rtcp(dtls, feedback + pli + media_ssrc.to_bytes(4, "big"))
        await wait_for(lambda: camera_keyframe_requests() > asked, 10, "the PLI after the feedback")
        assert point_downlink(server, room)["feedback_reports"] > reports  # type: ignore[index]
        # Forged: a clear header that says feedback, and bytes no key signed.
        drops = server.stats()["datagrams_dropped"].get("bad_srtcp", 0)
        pair = rtc_internals.selected_pair(dtls)
        assert pair is not None
        sendto, addr = pair
        for i in range(3):
            sendto(bytes([0x8F, 205, 0, 6]) + bytes(range(i, i + 40)), addr)
        await wait_for(
            lambda: server.stats()["datagrams_dropped"].get("bad_srtcp", 0) >= drops + 3,
            10,
            "the forged feedback dropped",
        )
        before = point_downlink(server, room)["feedback_reports"]  # type: ignore[index]
        await wait_for(
            lambda: point_downlink(server, room)["feedback_reports"] > before + 5,  # type: ignore[index]
            10,
            "the point's own reports still read",
        )
        await first_frames(point, {"teacher_camera"}, 10)  # the lesson goes on
