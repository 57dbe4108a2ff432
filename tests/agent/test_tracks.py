"""Encoded tracks: what aiortc's sender will pack and send, and what the recorder gets."""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder

from classroom_agent import pixelclock
from classroom_agent.testcard import SyntheticAudio, SyntheticVideo
from classroom_agent.tracks import EncodedAudioTrack, EncodedVideoTrack

from .conftest import within


def nal_types(data: bytes) -> list[int]:
    types, pos = [], data.find(b"\x00\x00\x01")
    while pos != -1:
        types.append(data[pos + 3] & 0x1F)
        pos = data.find(b"\x00\x00\x01", pos + 3)
    return types


async def collect(track: EncodedVideoTrack | EncodedAudioTrack, n: int) -> list[av.Packet]:
    return [await within(track.recv()) for _ in range(n)]


async def test_h264_track_publishes_annexb_packets_that_decode() -> None:
    track = EncodedVideoTrack(
        SyntheticVideo(640, 360, 30, "Teacher camera", seed=1),
        "h264",
        800,
        30,
        keyframe_interval_s=0.5,
    )
    try:
        packets = await collect(track, 20)
    finally:
        track.stop()
    first = packets[0]
    assert first.is_keyframe and first.time_base.denominator == 90000
    # SPS and PPS travel in-band with every keyframe, so a late subscriber can start there.
    keyframes = [p for p in packets if p.is_keyframe]
    assert len(keyframes) >= 2
    for key in keyframes:
        assert {7, 8, 5} <= set(nal_types(bytes(key)))
    assert all(5 not in nal_types(bytes(p)) for p in packets if not p.is_keyframe)
    pts = [p.pts for p in packets]
    assert pts == sorted(set(pts))
    payloads, timestamp = H264Encoder().pack(packets[3])
    assert payloads and all(len(p) <= 1300 for p in payloads)
    assert timestamp == packets[3].pts
    decoder = av.CodecContext.create("h264", "r")
    clocks = [pixelclock.read_frame(f) for p in packets for f in decoder.decode(p)]
    assert len(clocks) == 20 and None not in clocks
    # Each clock is a capture time from the last seconds, not garbage.
    assert all(0 <= pixelclock.age_ms(c) < 10_000 for c in clocks)


async def test_vp8_track_and_keyframe_request() -> None:
    track = EncodedVideoTrack(
        SyntheticVideo(320, 180, 30, "Board camera", seed=2),
        "vp8",
        300,
        30,
        keyframe_interval_s=60,
        keyframe_min_gap_s=0,
    )
    try:
        packets = await collect(track, 5)
        assert [p.is_keyframe for p in packets] == [True, False, False, False, False]
        track.request_keyframe()
        after = await collect(track, 3)
    finally:
        track.stop()
    assert after[0].is_keyframe
    # A VP8 keyframe has the inverse key bit clear in its first byte.
    assert bytes(after[0])[0] & 1 == 0
    payloads, _ = Vp8Encoder().pack(after[0])
    assert payloads
    decoder = av.CodecContext.create("vp8", "r")
    assert len(decoder.decode(after[0])) == 1


async def test_h264_keyframe_request_is_an_idr_with_parameter_sets() -> None:
    track = EncodedVideoTrack(
        SyntheticVideo(320, 180, 30, "Teacher camera", seed=3),
        "h264",
        300,
        30,
        keyframe_interval_s=60,
        keyframe_min_gap_s=0,
    )
    try:
        await collect(track, 4)
        track.request_keyframe()
        key = (await collect(track, 1))[0]
    finally:
        track.stop()
    assert key.is_keyframe
    assert {7, 8, 5} <= set(nal_types(bytes(key)))
    # A fresh decoder (a subscriber switching layers) can start on it.
    assert len(av.CodecContext.create("h264", "r").decode(key)) == 1


async def test_forced_keyframes_keep_their_minimum_gap_and_are_never_lost() -> None:
    """Requests right after a keyframe are answered by one keyframe at the end of the
    gap (capture time, read from the packets' timestamps), not by one per request."""
    track = EncodedVideoTrack(
        SyntheticVideo(320, 180, 30, "Teacher camera", seed=4),
        "h264",
        300,
        30,
        keyframe_interval_s=60,
        keyframe_min_gap_s=0.5,
    )
    try:
        first = await collect(track, 3)
        for _ in range(3):
            track.request_keyframe()
        after = await collect(track, 30)
    finally:
        track.stop()
    assert first[0].is_keyframe
    keys = [p for p in after if p.is_keyframe]
    assert len(keys) == 1
    assert keys[0].pts - first[0].pts >= 0.5 * 90000
    # It is the first frame captured after the gap: the one before it was inside.
    before = after[after.index(keys[0]) - 1]
    assert before.pts - first[0].pts < 0.5 * 90000


async def test_sink_receives_exactly_the_published_packets() -> None:
    track = EncodedVideoTrack(SyntheticVideo(320, 180, 30, "Teacher camera"), "h264", 300)
    recorded: list[av.Packet] = []
    track.add_sink(recorded.append)
    try:
        sent = await collect(track, 10)
    finally:
        track.stop()
    assert [bytes(p) for p in recorded] == [bytes(p) for p in sent]
    stats = track.stats()
    assert stats["frames"] == 10
    assert stats["bytes"] == sum(p.size for p in sent)
    assert stats["keyframes"] == 1


async def test_a_layer_reports_what_its_encoding_took_and_an_idle_one_encodes_nothing() -> None:
    source = SyntheticVideo(640, 360, 30, "Teacher camera", seed=6)
    high = EncodedVideoTrack(source, "h264", 500, layer="h")
    low = EncodedVideoTrack(source, "h264", 120, fps=15, width=320, height=180, layer="l")
    try:
        await asyncio.gather(collect(high, 4), collect(low, 2))
        low.set_idle(True)
        idle_at = low.stats()["encoded_frames"]
        # The idle layer keeps reading its capture while the top layer encodes 20 frames.
        waiting = asyncio.ensure_future(low.recv())
        await collect(high, 20)
        stats, idle = high.stats(), low.stats()
        assert not waiting.done()
        waiting.cancel()
    finally:
        high.stop()
        low.stop()
    assert (stats["layer"], stats["width"], stats["height"], stats["fps"]) == ("h", 640, 360, 30)
    assert stats["encoded_frames"] == stats["frames"] == 24
    # Wall time spent encoding and waiting for the encoder, accumulated per frame.
    assert stats["encode_s"] > 0 and stats["queue_s"] >= 0
    assert stats["target_kbps"] == 500 and not stats["idle"]
    # Nobody receives the idle layer and nothing records it: not one frame encoded.
    assert idle["idle"] and idle["encoded_frames"] == idle_at


async def test_two_layers_share_one_capture() -> None:
    source = SyntheticVideo(1280, 720, 30, "Teacher camera", seed=5)
    high = EncodedVideoTrack(source, "h264", 1500, layer="h")
    low = EncodedVideoTrack(source, "h264", 150, fps=15, width=320, height=180, layer="l")
    try:
        highs, lows = await asyncio.gather(collect(high, 20), collect(low, 10))
    finally:
        high.stop()
        low.stop()
    decoder = av.CodecContext.create("h264", "r")
    low_frames = [f for p in lows for f in decoder.decode(p)]
    assert {(f.width, f.height) for f in low_frames} == {(320, 180)}
    assert None not in [pixelclock.read_frame(f) for f in low_frames]
    assert sum(p.size for p in lows) < sum(p.size for p in highs) / 2
    assert not source.running  # the capture thread stops with its last track


class BusyVideo(SyntheticVideo):
    """The test card with a noisy region: detail that uses up any bitrate it is given."""

    def render(self, index: int, ms: int) -> av.VideoFrame:
        frame = super().render(index, ms)
        rng = np.random.default_rng(index)
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        h, w = self.height, self.width
        luma[h // 2 : h * 3 // 4, : w // 2] = rng.integers(0, 256, (h * 3 // 4 - h // 2, w // 2))
        return frame


async def test_set_bitrate_lowers_the_stream() -> None:
    track = EncodedVideoTrack(
        BusyVideo(640, 360, 30, "Teacher camera", seed=6), "h264", 1500, keyframe_interval_s=60
    )
    try:
        await collect(track, 5)
        rich = sum(p.size for p in (await collect(track, 20)))
        track.set_bitrate(150)
        await collect(track, 20)  # rate control settles within half a second
        lean = sum(p.size for p in (await collect(track, 20)))
    finally:
        track.stop()
    assert track.bitrate_kbps == 150
    assert lean < rich / 2


async def test_opus_track() -> None:
    track = EncodedAudioTrack(SyntheticAudio(), bitrate_kbps=32)
    try:
        packets = await collect(track, 75)  # 1.5 s
    finally:
        track.stop()
    assert all(p.time_base.denominator == 48000 for p in packets)
    assert [p.pts for p in packets] == [i * 960 for i in range(75)]
    payloads, timestamp = OpusEncoder().pack(packets[10])
    assert payloads == [bytes(packets[10])] and timestamp == 9600
    decoder = av.CodecContext.create("opus", "r")
    pcm = np.concatenate(
        [f.to_ndarray().reshape(-1) for p in packets for f in decoder.decode(p)]
    ).astype(np.float32)
    if np.issubdtype(pcm.dtype, np.floating) and np.abs(pcm).max() > 2:
        pcm /= 32768
    windows = np.abs(pcm[: len(pcm) // 960 * 960]).reshape(-1, 960).max(axis=1)
    # A steady quiet tone, and at least one loud one-second beep in 1.5 s.
    assert np.median(windows) == pytest.approx(0.1, abs=0.05)
    assert windows.max() > 0.35


async def test_screen_content_track_encodes_full_resolution_at_a_low_rate() -> None:
    track = EncodedVideoTrack(
        SyntheticVideo(1280, 720, 5, "Courseware", seed=3), "h264", 400, 5, 6.0, content="screen"
    )
    try:
        packets = await collect(track, 3)
    finally:
        track.stop()
    decoder = av.CodecContext.create("h264", "r")
    frames = [f for p in packets for f in decoder.decode(p)]
    assert packets[0].is_keyframe and not packets[1].is_keyframe
    assert {(f.width, f.height) for f in frames} == {(1280, 720)}
    assert None not in [pixelclock.read_frame(f) for f in frames]
