"""RTP back into frames for the server recorder: reordering, loss, picture sizes."""

from __future__ import annotations

import itertools
import random
import struct
from fractions import Fraction

import av
import numpy as np

from media_server.depacketizer import Depacketizer, Frame, picture_size

MTU = 300  # small, so that frames split into FU-A fragments


def h264_frames(count: int, width: int = 320, height: int = 180) -> list[tuple[bytes, bool]]:
    """Real libx264 output (Annex B, SPS/PPS on keyframes), a keyframe every 5 frames."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = Fraction(1, 15)
    codec.options = {"tune": "zerolatency", "preset": "ultrafast", "g": "5", "repeat-headers": "1"}
    rng = np.random.default_rng(1)
    out = []
    for i in range(count):
        img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in codec.encode(None)]
    return out


def nals(annexb: bytes) -> list[bytes]:
    return [n.rstrip(b"\x00") for n in annexb.split(b"\x00\x00\x01") if n.rstrip(b"\x00")]


def packetize(frame: bytes) -> list[bytes]:
    """RFC 6184 payloads: SPS and PPS in one STAP-A, big NALs as FU-A, others single."""
    units = nals(frame)
    small = [n for n in units if n[0] & 0x1F in (7, 8)]
    payloads = []
    if small:
        payloads.append(b"\x18" + b"".join(struct.pack("!H", len(n)) + n for n in small))
    for n in units:
        if n[0] & 0x1F in (7, 8):
            continue
        if len(n) <= MTU:
            payloads.append(n)
            continue
        head, body = n[0], n[1:]
        pieces = [body[i : i + MTU] for i in range(0, len(body), MTU)]
        for i, piece in enumerate(pieces):
            fu = (head & 0x1F) | (0x80 if i == 0 else 0) | (0x40 if i == len(pieces) - 1 else 0)
            payloads.append(bytes([(head & 0xE0) | 28, fu]) + piece)
    return payloads


def rtp(seq: int, ts: int, payload: bytes, marker: bool, pt: int = 102) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts, 1) + payload


def stream(frames: list[tuple[bytes, bool]], seq0: int = 65500, ts0: int = 2**32 - 12000):
    """RTP packets of `frames` at 15 fps, sequence numbers and timestamps wrapping."""
    seq = seq0
    out = []
    for i, (frame, _) in enumerate(frames):
        payloads = packetize(frame)
        for j, p in enumerate(payloads):
            out.append(rtp(seq, (ts0 + i * 6000) & 0xFFFFFFFF, p, j == len(payloads) - 1))
            seq += 1
    return out


def feed(d: Depacketizer, packets: list[bytes], t0: float = 1000.0) -> list[Frame]:
    out = []
    for i, p in enumerate(packets):
        out += d.push(p, t0 + i * 0.001)
    return out + d.flush(t0 + 60)


def same(a: bytes, b: bytes) -> bool:
    return nals(a) == nals(b)


def test_reordered_packets_come_back_as_the_encoders_frames_in_order() -> None:
    frames = h264_frames(12)
    packets = stream(frames)
    # Packets a NACK recovered arrive late: shuffle within windows of 6.
    rng = random.Random(3)
    shuffled = []
    for i in range(0, len(packets), 6):
        window = packets[i : i + 6]
        rng.shuffle(window)
        shuffled += window
    d = Depacketizer("h264")
    out = feed(d, shuffled)
    assert len(out) == len(frames)
    assert all(same(o.data, f) for o, (f, _) in zip(out, frames, strict=True))
    assert [o.keyframe for o in out] == [k for _, k in frames]
    # Timestamps keep growing across the 32-bit wrap, one frame (6000) apart.
    assert [b.timestamp - a.timestamp for a, b in itertools.pairwise(out)] == [6000] * 11
    assert out[0].size == (320, 180)
    assert d.lost == 0


def test_a_lost_packet_drops_frames_until_the_next_keyframe_and_asks_for_one() -> None:
    frames = h264_frames(12)
    assert [k for _, k in frames][:6] == [True, False, False, False, False, True]
    packets = stream(frames)
    # Lose the last packet of frame 2 (a delta frame).
    per_frame = [len(packetize(f)) for f, _ in frames]
    lost = sum(per_frame[:3]) - 1
    d = Depacketizer("h264")
    out = []
    for i, p in enumerate(packets):
        if i != lost:
            out += d.push(p, 1000.0)
    # Nothing comes while the hole may still be filled by a retransmission...
    assert len(out) == 2
    out += d.flush(1000.5)
    assert len(out) == 2
    # ...then the hole is given up: frames 2-4 cannot be decoded, 5 on are written.
    out += d.flush(1002.0)
    assert d.keyframe_wanted and d.lost == 1
    assert len(out) == 2 + 7 and out[2].keyframe
    assert all(same(o.data, frames[i][0]) for i, o in zip([0, 1, *range(5, 12)], out, strict=True))


def test_picture_sizes_are_read_without_decoding() -> None:
    for w, h in ((320, 180), (640, 360), (1280, 720), (176, 144)):
        key = h264_frames(1, w, h)[0][0]
        assert picture_size("h264", key) == (w, h)
    vp8 = av.CodecContext.create("libvpx", "w")
    vp8.width, vp8.height, vp8.pix_fmt = 480, 270, "yuv420p"
    vp8.time_base = Fraction(1, 15)
    frame = av.VideoFrame(480, 270, "yuv420p")
    frame.pts = 0
    packets = list(vp8.encode(frame)) + list(vp8.encode(None))
    assert picture_size("vp8", bytes(packets[0])) == (480, 270)
    assert picture_size("h264", b"\x00\x00\x00\x01\x67") is None  # truncated: no size


def test_opus_packets_are_frames_and_duplicates_are_dropped() -> None:
    d = Depacketizer("opus")
    packets = [rtp(i, i * 960, bytes([0xFC, i]), False, 111) for i in range(5)]
    out = feed(d, [packets[0], packets[2], packets[1], packets[1], packets[3], packets[4]])
    assert [o.data[1] for o in out] == [0, 1, 2, 3, 4]
    assert all(o.keyframe for o in out)
