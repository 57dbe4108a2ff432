"""What rural links need from the SFU: feedback to publishers and subscribers, repair discipline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket

from classroom_agent.client import ClientEvents, Publication
from media_server.downtrack import DownTrack, RepairBudget
from media_server.sink import MemorySink
from media_server.source import MediaSource
from tests.lesson_server import ServerProcess, start_server_process
from tests.media import PatternTrack, ToneTrack, first_frames, wait_for
from tests.test_datagram_guard import server_ports
from tests.test_rtp_rewrite import VP8_DELTA, VP8_KEY, make_up, rtp
from tests.test_sfu_forwarding import join
from tongke.codecs import answered_audio_red, enable_opus_fec, offer_audio_red


async def test_publishers_hear_which_layers_nobody_receives_and_their_uplink_estimate(
    server: ServerProcess, room: str
) -> None:
    feedback: list[dict[str, Any]] = []
    master = await join(
        server,
        room,
        "c-master",
        "master",
        events=ClientEvents(
            on_message=lambda m: feedback.append(m) if m["type"] == "publish_feedback" else None
        ),
    )
    await master.publish(
        [
            Publication(PatternTrack(320, 240), "teacher_camera", layer="h", codec="vp8"),
            Publication(PatternTrack(160, 120), "teacher_camera", layer="l", codec="vp8"),
            Publication(ToneTrack(), "classroom_mic"),
        ]
    )

    def idle() -> list[tuple[str, str]] | None:
        if not feedback:
            return None
        return [(i["source"], i["layer"]) for i in feedback[-1]["idle"]]

    await wait_for(
        lambda: idle() == [("teacher_camera", "h"), ("teacher_camera", "l")],
        what="both layers idle before anyone watches",
    )
    assert feedback[-1]["bitrate_bps"] > 1_000_000
    allocations: list[dict[str, Any]] = []
    point = await join(
        server,
        room,
        "p-1",
        "point",
        events=ClientEvents(
            on_message=lambda m: allocations.append(m) if m["type"] == "allocation" else None
        ),
    )
    try:
        await first_frames(point, {"teacher_camera", "classroom_mic"})
        await wait_for(lambda: idle() == [("teacher_camera", "l")], what="h wanted again")
        # The subscriber is told what it gets: the top layer, nothing paused on loopback.
        await wait_for(lambda: bool(allocations), what="an allocation message")
        tracks = {t["track"].split("/")[1]: t for t in allocations[-1]["tracks"]}
        assert tracks["teacher_camera"]["layer"] == "h"
        assert not tracks["teacher_camera"]["paused"]
        assert allocations[-1]["estimate_bps"] > 0
    finally:
        await point.close()
        await master.close()


async def test_a_camera_added_after_the_microphone_gets_its_uplink_read_from_its_delay(
    server: ServerProcess, room: str
) -> None:
    # A classroom that starts with its microphone and adds the camera later (a second
    # offer on the same connection): the SFU reads the uplink from the camera's
    # abs-send-time too, not from loss alone.
    master = await join(server, room, "c-master", "master")
    try:
        await master.publish([Publication(ToneTrack(), "classroom_mic")])

        def uplink() -> dict[str, Any] | None:
            receiving = server.stats()["rooms"][room]["receiving"]
            return next((p["uplink"] for p in receiving if p["role"] == "master"), None)

        await wait_for(lambda: uplink() is not None, what="the microphone published")
        await master.publish(
            [Publication(PatternTrack(320, 240), "teacher_camera", layer="h", codec="vp8")]
        )
        await wait_for(
            lambda: (uplink() or {}).get("delay_packets", 0) > 0,
            what="the camera's packets read by the uplink's delay detector",
        )
    finally:
        await master.close()


def test_a_nack_storm_is_answered_within_the_budget_and_each_packet_once_per_rtt() -> None:
    up = make_up("h", 1111, [])
    source = MediaSource("p1", "c1", "M", "teacher_camera", "video", "vp8", "T", {"h": up})
    sink = MemorySink()
    budget = RepairBudget(1_000_000)
    down = DownTrack(sink=sink, ssrc=0xCAFE, payload_type=96, repair=budget)
    down.bind(source)
    for i in range(200):
        up.on_rtp(rtp(100 + i, 3000 * i, 1111, (VP8_KEY if i == 0 else VP8_DELTA) * 100), 0)
    sent = len(sink.rtp)
    first_seq = int.from_bytes(sink.rtp[0][2:4], "big")
    lost = [(first_seq + i) & 0xFFFF for i in range(200)]
    for _ in range(50):  # the same NACK, fifty times in a burst
        down.on_rtcp(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=0xCAFE, lost=lost))
    resent = sink.rtp[sent:]
    assert down.stats.retransmitted == len(resent)
    # Budget: a fifth of 1 Mbit/s over half a second = 12.5 kB, whatever was asked.
    assert sum(len(p) for p in resent) <= 12_500 + 1200
    seqs = [int.from_bytes(p[2:4], "big") for p in resent]
    assert len(seqs) == len(set(seqs))  # nothing resent twice within one RTT


def test_opus_in_band_fec_is_asked_for_in_the_sdp_we_send() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 96 0",
            "a=rtpmap:96 opus/48000/2",
            "a=rtpmap:0 PCMU/8000",
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
            "a=rtpmap:96 VP8/90000",
            "a=rtpmap:97 rtx/90000",
            "a=fmtp:97 apt=96",
            "",
        ]
    )
    amended = enable_opus_fec(sdp)
    assert "a=fmtp:96 minptime=10;useinbandfec=1" in amended.split("\r\n")
    # Not on PCMU, and not on VP8 although it has the same payload type in its section.
    assert amended.count("useinbandfec") == 1
    assert amended.split("m=video")[1] == sdp.split("m=video")[1]
    assert enable_opus_fec(amended) == amended  # idempotent


async def test_a_fixed_udp_port_range_carries_the_lesson(tmp_path: Path) -> None:
    """A school firewall opens one range of UDP ports to the server: media uses only it."""
    server = start_server_process(tmp_path / "data", extra=["--ice-port-range", "47100-47119"])
    try:
        room = "ported"
        server.open_room(room)
        master = await join(server, room, "c-master", "master")
        await master.publish([Publication(PatternTrack(320, 240), "teacher_camera", codec="vp8")])
        point = await join(server, room, "p-1", "point")
        try:
            await first_frames(point, {"teacher_camera"})
            assert master.publish_pc is not None and point.subscribe_pc is not None
            ports = server_ports(master.publish_pc.remoteDescription.sdp)
            ports |= server_ports(point.subscribe_pc.remoteDescription.sdp)
            assert ports and all(47100 <= p <= 47119 for p in ports)
        finally:
            await point.close()
            await master.close()
    finally:
        server.stop()
    with pytest.raises(RuntimeError, match="server did not start"):
        start_server_process(tmp_path / "bad", extra=["--ice-port-range", "9-x"])


def test_red_is_offered_around_opus_and_read_back_from_the_answer() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 96",
            "a=mid:0",
            "a=rtpmap:96 opus/48000/2",
            "m=video 9 UDP/TLS/RTP/SAVPF 97",
            "a=rtpmap:97 VP8/90000",
            "",
        ]
    )
    offered = offer_audio_red(sdp)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 63 96" in offered
    assert "a=rtpmap:63 red/48000/2\r\na=fmtp:63 96/96" in offered
    assert offered.split("m=video")[1] == sdp.split("m=video")[1]
    assert answered_audio_red(offered) == (63, 96)
    assert answered_audio_red(sdp) is None  # a peer that did not accept it


def audio_up() -> Any:
    from media_server.uptrack import UpTrack

    return UpTrack(
        track_id="p1/classroom_mic",
        source="classroom_mic",
        layer="h",
        kind="audio",
        codec="opus",
        clock_rate=48000,
        ssrc=7,
        payload_type=111,
        rtx_ssrc=None,
        rtx_payload_type=None,
        request_keyframe=lambda up: None,
        request_nack=lambda up: None,
    )


@pytest.mark.parametrize(
    ("packets", "expected"),
    [
        # The first packet has nothing before it: primary only (1-byte header, F=0).
        ([(0, b"a" * 5)], [bytes([96]) + b"a" * 5]),
        # Each next one carries the previous one: F=1, PT, 14-bit offset 960, length 5.
        (
            [(0, b"a" * 5), (960, b"bb")],
            [
                bytes([96]) + b"a" * 5,
                bytes([0x80 | 96, 960 >> 6, (960 & 0x3F) << 2, 5, 96]) + b"a" * 5 + b"bb",
            ],
        ),
        # A gap longer than 14 bits of timestamp (a pause): no copy.
        ([(0, b"a"), (20_000, b"b")], [bytes([96]) + b"a", bytes([96]) + b"b"]),
        # A previous packet too long for 10 bits of length: no copy.
        ([(0, b"x" * 1100), (960, b"b")], [bytes([96]) + b"x" * 1100, bytes([96]) + b"b"]),
    ],
)
def test_red_wraps_each_opus_packet_with_the_previous_one(
    packets: list[tuple[int, bytes]], expected: list[bytes]
) -> None:
    up = audio_up()
    source = MediaSource("p1", "c", "P", "classroom_mic", "audio", "opus", "", layers={"h": up})
    sink = MemorySink()
    down = DownTrack(sink=sink, ssrc=9, payload_type=96, red=(63, 96))
    down.bind(source)
    for i, (ts, payload) in enumerate(packets):
        up.on_rtp(
            bytes([0x80, 111])
            + (100 + i).to_bytes(2, "big")
            + ts.to_bytes(4, "big")
            + (7).to_bytes(4, "big")
            + payload,
            0,
        )
    assert [p[1] & 0x7F for p in sink.rtp] == [63] * len(packets)
    assert [p[12:] for p in sink.rtp] == expected
