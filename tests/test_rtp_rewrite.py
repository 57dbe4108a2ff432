"""Byte-level rewriting: what a subscriber's decoder relies on, packet by packet."""

from __future__ import annotations

import asyncio
import itertools
import struct

import pytest
from aiortc.rtp import HeaderExtensionsMap, RtcpPacket, RtcpSrPacket, RtpPacket

from media_server.downtrack import DownTrack
from media_server.rtpbytes import (
    h264_keyframe_start,
    one_byte_extension,
    payload_bounds,
    vp8_keyframe_start,
)
from media_server.sink import MemorySink
from media_server.source import MediaSource
from media_server.uptrack import KEYFRAME_MIN_INTERVAL_S, UpTrack
from tests.media import wait_for


def rtp(seq: int, ts: int, ssrc: int, payload: bytes, pt: int = 96, marker: int = 0) -> bytes:
    # With a CSRC and a two-byte extension from the publisher that must not leak through.
    header = struct.pack("!BBHII", 0x91, (marker << 7) | pt, seq, ts, ssrc)
    return header + struct.pack("!I", 1234) + b"\xbe\xde\x00\x01\x22\xab\xcd\x00" + payload


VP8_KEY = b"\x10" + b"\x00" + b"keyframe"  # S=1, PID=0, P bit 0
VP8_DELTA = b"\x10" + b"\x01" + b"delta"
VP8_CONT = b"\x00" + b"\x01" + b"continuation"


def make_up(layer: str, ssrc: int, requests: list[str]) -> UpTrack:
    return UpTrack(
        track_id=f"p1/teacher_camera/{layer}",
        source="teacher_camera",
        layer=layer,
        kind="video",
        codec="vp8",
        clock_rate=90000,
        ssrc=ssrc,
        payload_type=96,
        rtx_ssrc=None,
        rtx_payload_type=None,
        request_keyframe=lambda up: requests.append(up.layer),
        request_nack=lambda up: None,
    )


def make_down(wire: MemorySink) -> DownTrack:
    return DownTrack(
        sink=wire,
        mid="3",
        ssrc=0xCAFEBABE,
        payload_type=120,
        mid_ext_id=1,
        ast_ext_id=3,
    )


async def test_rewritten_packets_carry_our_ssrc_pt_extensions_and_the_same_payload() -> None:
    requests: list[str] = []
    up = make_up("h", 1111, requests)
    source = MediaSource(
        "p1", "c1", "Master", "teacher_camera", "video", "vp8", "Teacher camera", {"h": up}
    )
    wire = MemorySink()
    down = make_down(wire)
    down.bind(source)
    assert requests == ["h"]  # a new subscriber asks for a keyframe at once

    up.on_rtp(rtp(500, 9000, 1111, VP8_DELTA), 0)  # not decodable: must not be sent
    assert wire.rtp == []
    up.on_rtp(rtp(501, 12000, 1111, VP8_KEY, marker=1), 0)
    up.on_rtp(rtp(502, 15000, 1111, VP8_DELTA), 0)
    packets = [RtpPacket.parse(p, HeaderExtensionsMap()) for p in wire.rtp]
    assert [p.ssrc for p in packets] == [0xCAFEBABE] * 2
    assert [p.payload_type for p in packets] == [120, 120]
    assert [p.marker for p in packets] == [1, 0]
    assert packets[1].sequence_number == (packets[0].sequence_number + 1) & 0xFFFF
    assert packets[1].timestamp - packets[0].timestamp == 3000
    assert [p.payload for p in packets] == [VP8_KEY, VP8_DELTA]
    assert packets[0].csrc == []
    # Our extension block: mid "3" with id 1, abs-send-time with id 3; the publisher's gone.
    ext = wire.rtp[0][12:]
    assert ext[:2] == b"\xbe\xde"
    assert ext[4:6] == b"\x10" + b"3"
    assert ext[6] == (3 << 4) | 2


async def test_layer_switch_keeps_sequence_and_timestamps_continuous() -> None:
    requests: list[str] = []
    high, low = make_up("h", 1111, requests), make_up("l", 2222, requests)
    source = MediaSource(
        "p1", "c1", "M", "teacher_camera", "video", "vp8", "T", {"h": high, "l": low}
    )
    wire = MemorySink()
    down = make_down(wire)
    down.bind(source)
    high.on_rtp(rtp(100, 1000, 1111, VP8_KEY), 0)
    high.on_rtp(rtp(101, 4000, 1111, VP8_CONT), 0)
    down.set_max_layer("l")
    assert requests[-1] == "l"
    low.on_rtp(rtp(7000, 555_000, 2222, VP8_DELTA), 0)  # not a keyframe: keep the old layer
    high.on_rtp(rtp(102, 7000, 1111, VP8_DELTA), 0)
    low.on_rtp(rtp(7001, 558_000, 2222, VP8_KEY), 0)  # switch here
    high.on_rtp(rtp(103, 10000, 1111, VP8_DELTA), 0)  # old layer: no longer forwarded
    low.on_rtp(rtp(7002, 561_000, 2222, VP8_DELTA), 0)
    packets = [RtpPacket.parse(p, HeaderExtensionsMap()) for p in wire.rtp]
    assert [p.payload for p in packets] == [VP8_KEY, VP8_CONT, VP8_DELTA, VP8_KEY, VP8_DELTA]
    seqs = [p.sequence_number for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    stamps = [p.timestamp for p in packets]
    assert all(0 <= (b - a) & 0xFFFFFFFF < 90000 for a, b in itertools.pairwise(stamps))
    assert down.current is low and down not in high.downtracks


async def test_nack_is_answered_from_the_cache_with_the_same_sequence_number() -> None:
    up = make_up("h", 1111, [])
    source = MediaSource("p1", "c1", "M", "teacher_camera", "video", "vp8", "T", {"h": up})
    wire = MemorySink()
    down = make_down(wire)
    down.bind(source)
    for i in range(5):
        up.on_rtp(rtp(10 + i, 3000 * i, 1111, VP8_KEY if i == 0 else VP8_DELTA + bytes([i])), 0)
    sent = [RtpPacket.parse(p, HeaderExtensionsMap()) for p in wire.rtp]
    lost = sent[2]
    from aiortc.rtp import RtcpRtpfbPacket

    await down._handle_rtcp_packet(
        RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=down.ssrc, lost=[lost.sequence_number])
    )
    again = RtpPacket.parse(wire.rtp[-1], HeaderExtensionsMap())
    assert again.sequence_number == lost.sequence_number
    assert again.timestamp == lost.timestamp
    assert again.payload == lost.payload
    assert down.stats.retransmitted == 1


async def test_sender_reports_map_our_timestamps_to_the_publishers_ntp_clock() -> None:
    up = make_up("h", 1111, [])
    source = MediaSource("p1", "c1", "M", "teacher_camera", "video", "vp8", "T", {"h": up})
    wire = MemorySink()
    down = make_down(wire)
    down.bind(source)
    up.on_rtp(rtp(1, 90_000, 1111, VP8_KEY), 0)
    out_ts = RtpPacket.parse(wire.rtp[0], HeaderExtensionsMap()).timestamp
    ntp = 3_900_000_000 << 32
    up.on_sender_report(ntp, 90_000)
    report = down.sender_report()
    assert report is not None
    sr = RtcpPacket.parse(report)[0]
    assert isinstance(sr, RtcpSrPacket) and sr.ssrc == down.ssrc
    # The same instant on the publisher's clock, in our timestamp space (a few ms later).
    elapsed_s = ((sr.sender_info.ntp_timestamp - ntp) & (2**64 - 1)) / 2**32
    expected = (out_ts + round(elapsed_s * 90000)) & 0xFFFFFFFF
    assert abs(((sr.sender_info.rtp_timestamp - expected + 2**31) % 2**32) - 2**31) <= 2
    assert sr.sender_info.packet_count == 1
    # Byte for byte what aiortc's RtcpSrPacket writes.
    assert report == bytes(
        RtcpSrPacket(ssrc=sr.ssrc, sender_info=sr.sender_info, reports=sr.reports)
    )
    assert sr.sender_info.octet_count == down.stats.octets and not sr.reports


def test_keyframe_detection_reads_h264_and_vp8_payloads() -> None:
    def bounds(payload: bytes) -> tuple[bytes, int, int]:
        data = rtp(1, 0, 1, payload)
        start, end = payload_bounds(data)
        return data, start, end

    assert h264_keyframe_start(*bounds(b"\x65rest"))  # IDR slice
    assert not h264_keyframe_start(*bounds(b"\x41rest"))  # non-IDR slice
    assert h264_keyframe_start(*bounds(b"\x78\x00\x05\x67abcd"))  # STAP-A starting with SPS
    assert h264_keyframe_start(*bounds(b"\x7c\x85rest"))  # FU-A start of IDR
    assert not h264_keyframe_start(*bounds(b"\x7c\x05rest"))  # FU-A middle of IDR
    assert vp8_keyframe_start(*bounds(VP8_KEY))
    assert not vp8_keyframe_start(*bounds(VP8_DELTA))
    assert not vp8_keyframe_start(*bounds(VP8_CONT))
    # With the extended descriptor and a 15-bit picture id.
    assert vp8_keyframe_start(*bounds(b"\x90\x80\x81\x23\x00frame"))


async def test_keyframe_requests_are_throttled_but_never_dropped() -> None:
    sent: list[float] = []
    up = make_up("h", 1111, [])
    up._request_keyframe = lambda _up: sent.append(asyncio.get_running_loop().time())
    for _ in range(5):  # five subscribers asking at once
        up.request_keyframe()
    assert len(sent) == 1
    await wait_for(lambda: len(sent) == 2, 5, "the deferred request")
    assert sent[1] - sent[0] >= KEYFRAME_MIN_INTERVAL_S * 0.9
    up.close()


async def test_a_sparse_streams_frames_end_with_a_tiny_padding_packet_when_asked() -> None:
    """1mbit-5pct-300ms, agent: the loss of a 3 fps courseware frame's last packet showed
    only with the next frame, 333 ms later; a padding packet right behind each frame's
    last one makes it a gap at once. Its number is answered with padding, never media."""
    up = make_up("h", 1111, [])
    source = MediaSource("p1", "c1", "M", "courseware", "video", "vp8", "C", {"h": up})
    wire = MemorySink()
    down = make_down(wire)
    down.bind(source)
    up.on_rtp(rtp(10, 0, 1111, VP8_KEY, marker=1), 0)
    assert len(wire.rtp) == 1  # not asked: nothing more
    down.tail_padding = True
    up.on_rtp(rtp(11, 30000, 1111, VP8_DELTA, marker=0), 0)
    up.on_rtp(rtp(12, 30000, 1111, VP8_CONT, marker=1), 0)
    up.on_rtp(rtp(13, 60000, 1111, VP8_DELTA, marker=0), 0)
    sent = [RtpPacket.parse(p, HeaderExtensionsMap()) for p in wire.rtp]
    seqs = [p.sequence_number for p in sent]
    assert seqs == [seqs[0] + i for i in range(5)]  # the numbers stay continuous
    pad = sent[3]
    assert pad.payload == b"" and pad.padding_size == 1 and pad.timestamp == sent[2].timestamp
    assert [p.payload for p in sent[:3]] == [VP8_KEY, VP8_DELTA, VP8_CONT]
    assert sent[4].payload == VP8_DELTA
    from aiortc.rtp import RtcpRtpfbPacket

    await down._handle_rtcp_packet(
        RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=down.ssrc, lost=[pad.sequence_number])
    )
    again = RtpPacket.parse(wire.rtp[-1], HeaderExtensionsMap())
    assert again.sequence_number == pad.sequence_number and again.payload == b""


@pytest.mark.parametrize(
    ("mid_ext_id", "ast_ext_id"), [(1, 3), (1, None), (None, 3), (None, None), (14, 2)]
)
def test_the_forwarding_path_writes_what_the_repair_path_writes(
    mid_ext_id: int | None, ast_ext_id: int | None
) -> None:
    """forward packs our header and extension block in one struct; `_write` (repairs,
    probes) joins the pieces: the bytes must be the same."""
    up = make_up("h", 1111, [])
    source = MediaSource("p1", "c1", "M", "teacher_camera", "video", "vp8", "T", {"h": up})
    wire = MemorySink()
    down = DownTrack(
        sink=wire, mid="12", ssrc=7, payload_type=120, mid_ext_id=mid_ext_id, ast_ext_id=ast_ext_id
    )
    down.bind(source)
    up.on_rtp(rtp(1, 90_000, 1111, VP8_KEY, marker=1), 0)
    sent = wire.rtp[-1]
    seq, ts = struct.unpack_from("!HI", sent, 2)
    start, end = payload_bounds(sent)
    ast = one_byte_extension(sent, ast_ext_id) if ast_ext_id else b"\x01\x02\x03"
    assert ast is not None
    down._write(0x80, seq, ts, ast, sent[start:end])
    assert wire.rtp[-1] == sent and sent[start:end] == VP8_KEY


@pytest.mark.parametrize(
    ("mid_ext_id", "ast_ext_id", "tcc_ext_id"),
    [
        (1, 3, 5),
        (1, 3, None),
        (1, None, None),
        (None, 3, None),
        (None, None, None),
        (None, None, 5),
    ],
)
def test_a_probe_is_as_large_as_media_and_reads_as_padding_with_our_extensions(
    mid_ext_id: int | None, ast_ext_id: int | None, tcc_ext_id: int | None
) -> None:
    """256kbit-10pct, agent: 280-byte probes passed a retest over a line whose byte-counted
    queue dropped the 1.2 kB media at that rate, and the picture it let in stood still.
    A probe is now PROBE_PACKET_BYTES long; a receiver parses it as padding only, with
    our mid, abs-send-time and transport-wide number where the pacer reads it."""
    from media_server.downtrack import PROBE_PACKET_BYTES
    from media_server.twcc import SEQ_OFFSET

    up = make_up("h", 1111, [])
    source = MediaSource("p1", "c1", "M", "teacher_camera", "video", "vp8", "T", {"h": up})
    wire = MemorySink()
    down = DownTrack(
        sink=wire,
        mid="12",
        ssrc=7,
        payload_type=120,
        mid_ext_id=mid_ext_id,
        ast_ext_id=ast_ext_id,
        tcc_ext_id=tcc_ext_id,
        transport_seq=itertools.count(40),
    )
    down.bind(source)
    up.on_rtp(rtp(1, 90_000, 1111, VP8_KEY, marker=1), 0)
    size = down.probe()
    probe = wire.rtp[-1]
    assert size == len(probe) and PROBE_PACKET_BYTES - 4 < len(probe) <= PROBE_PACKET_BYTES
    parsed = RtpPacket.parse(probe, HeaderExtensionsMap())
    media = RtpPacket.parse(wire.rtp[0], HeaderExtensionsMap())
    assert parsed.payload == b"" and parsed.padding_size == 1
    assert parsed.sequence_number == (media.sequence_number + 1) & 0xFFFF
    assert parsed.timestamp == media.timestamp and parsed.ssrc == 7
    assert parsed.payload_type == 120 and not parsed.marker
    if mid_ext_id:
        assert one_byte_extension(probe, mid_ext_id) == b"12"
    if ast_ext_id:
        assert one_byte_extension(probe, ast_ext_id) is not None
    if tcc_ext_id:
        assert one_byte_extension(probe, tcc_ext_id) == (41).to_bytes(2, "big")
        assert probe[SEQ_OFFSET - 1] == (tcc_ext_id << 4) | 1
        assert int.from_bytes(probe[SEQ_OFFSET : SEQ_OFFSET + 2], "big") == 41
    # Its number NACKed is answered with (small) padding, never media.
    down.retransmit(parsed.sequence_number)
    again = RtpPacket.parse(wire.rtp[-1], HeaderExtensionsMap())
    assert again.sequence_number == parsed.sequence_number and again.payload == b""
