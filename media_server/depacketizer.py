"""RTP packets of one stream back into the encoder's frames, for the server recorder.

Packets come as the recorder's DownTrack sent them: in arrival order, so a packet the
server recovered by NACK comes late and a lost one never. They wait in a small reorder
buffer (at most `REORDER_WAIT_S`, long enough for a retransmission over a 600 ms
satellite link) and leave it in sequence order. A video frame is written only when
every packet of it arrived; after a loss the stream waits for the next keyframe, and
`keyframe_wanted` tells the recorder to ask for one. Nothing is decoded: payloads are
unpacked (H.264 STAP-A/FU-A to Annex B, VP8 without its descriptor, Opus as it is) and
keyframes read for their picture size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from media_server.rtpbytes import OPUS, SEQ_TS, is_keyframe_start, payload_bounds
from tongke import rtc_internals

REORDER_WAIT_S = 1.0
MAX_HELD = 2048  # packets behind a hole; past this the hole is given up at once


@dataclass
class Frame:
    data: bytes
    timestamp: int  # RTP timestamp, unwrapped (keeps growing past 2^32)
    keyframe: bool
    arrival: float  # wall time (Unix seconds) its first packet reached the server
    size: tuple[int, int] | None = None  # picture size, read from a keyframe


def _unwrap(ref: int | None, value: int, bits: int) -> int:
    """`value` (modulo 2^bits) as the number nearest to `ref`."""
    if ref is None:
        return value
    span = 1 << bits
    delta = (value - ref) % span
    if delta >= span // 2:
        delta -= span
    return ref + delta


class Depacketizer:
    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.video = codec != OPUS
        self._held: dict[int, tuple[float, bytes]] = {}  # unwrapped seq -> packet
        self._next: int | None = None  # the unwrapped sequence number due next
        self._seq_ref: int | None = None
        self._ts_ref: int | None = None
        self._hole_since = 0.0  # when the first packet behind the current hole arrived
        # The frame being gathered.
        self._parts: list[bytes] = []
        self._ts: int | None = None
        self._key = False
        self._arrival = 0.0
        self._broken = False
        self._need_key = self.video
        self.keyframe_wanted = False
        self.lost = 0  # packets given up for

    @property
    def timestamp_ref(self) -> int | None:
        """The last unwrapped timestamp (None before the first packet)."""
        return self._ts_ref

    def extend_timestamp(self, ts: int) -> int:
        """A timestamp of this stream (a sender report's) unwrapped like its packets'."""
        return _unwrap(self._ts_ref, ts, 32)

    def unwrap_timestamp(self, ts: int) -> int:
        self._ts_ref = _unwrap(self._ts_ref, ts, 32)
        return self._ts_ref

    def push(self, data: bytes, arrival: float) -> list[Frame]:
        """One packet in; the frames it completes out."""
        if len(data) < 12:
            return []
        seq = _unwrap(self._seq_ref, SEQ_TS.unpack_from(data, 2)[0], 16)
        self._seq_ref = max(seq, self._seq_ref) if self._seq_ref is not None else seq
        if self._next is None:
            self._next = seq
        if seq < self._next or seq in self._held:
            return []  # too late (given up already) or a duplicate
        if not self._held:
            self._hole_since = arrival
        self._held[seq] = (arrival, data)
        out = self._release()
        if len(self._held) > MAX_HELD:
            out += self._skip_hole()
        return out

    def flush(self, now: float) -> list[Frame]:
        """Give up on a hole nothing has filled for REORDER_WAIT_S."""
        if self._held and now - self._hole_since > REORDER_WAIT_S:
            return self._skip_hole()
        return []

    def _skip_hole(self) -> list[Frame]:
        assert self._next is not None
        first = min(self._held)
        self.lost += first - self._next
        self._next = first
        self._lose()
        return self._release()

    def _release(self) -> list[Frame]:
        out: list[Frame] = []
        held = self._held
        while self._next in held:
            arrival, data = held.pop(self._next)
            self._next += 1
            self._packet(data, arrival, out)
        if held:
            self._hole_since = min(a for a, _ in held.values())
        return out

    def _lose(self) -> None:
        """A packet is gone for good: the frame it belonged to cannot be written."""
        self._broken = True
        if self.video:
            self._need_key = True
            self.keyframe_wanted = True

    def _packet(self, data: bytes, arrival: float, out: list[Frame]) -> None:
        try:
            start, end = payload_bounds(data)
            unpacked = rtc_internals.depayload(self.codec, data[start:end])
        except ValueError:
            self._lose()
            return
        ts = self.unwrap_timestamp(SEQ_TS.unpack_from(data, 2)[1])
        if not self.video:
            out.append(Frame(unpacked, ts, True, arrival))
            return
        if ts != self._ts:
            # A new frame. The previous one ended without its marker packet only when
            # that packet was lost, which `_lose` noted; a finished one was emitted.
            self._finish(out)
            self._ts, self._arrival = ts, arrival
            self._key = is_keyframe_start(self.codec, data, start, end)
            self._broken = False
            if self._need_key and self._key:
                self._need_key = False
        if not self._need_key and not self._broken:
            self._parts.append(unpacked)
        if data[1] & 0x80:
            self._finish(out)

    def _finish(self, out: list[Frame]) -> None:
        parts, self._parts = self._parts, []
        if not parts or self._broken or self._ts is None:
            return
        data = b"".join(parts)
        size = picture_size(self.codec, data) if self._key else None
        out.append(Frame(data, self._ts, self._key, self._arrival, size))


# -- picture sizes (the manifest and the muxer need them; nothing is decoded) ------------


def picture_size(codec: str, frame: bytes) -> tuple[int, int] | None:
    try:
        if codec == "vp8":
            return _vp8_size(frame)
        if codec == "h264":
            for nal in _annexb_nals(frame):
                if nal and nal[0] & 0x1F == 7:
                    return _sps_size(nal)
    except (IndexError, ValueError):
        return None
    return None


def _vp8_size(frame: bytes) -> tuple[int, int] | None:
    # Key frame: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height.
    if len(frame) < 10 or frame[0] & 1 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    w, h = struct.unpack_from("<HH", frame, 6)
    return w & 0x3FFF, h & 0x3FFF


def _annexb_nals(data: bytes) -> list[bytes]:
    out = []
    for chunk in data.split(b"\x00\x00\x01"):
        chunk = chunk.rstrip(b"\x00")
        if chunk:
            out.append(chunk)
    return out


class _Bits:
    def __init__(self, rbsp: bytes) -> None:
        self.data = rbsp
        self.pos = 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            v = (v << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def _sps_size(nal: bytes) -> tuple[int, int]:
    """Width and height from an H.264 sequence parameter set (ITU-T H.264 7.3.2.1.1)."""
    rbsp = nal[1:].replace(b"\x00\x00\x03", b"\x00\x00")
    b = _Bits(rbsp)
    profile = b.u(8)
    b.u(16)  # constraint flags, level
    b.ue()  # sps id
    chroma = 1
    if profile in _HIGH_PROFILES:
        chroma = b.ue()
        if chroma == 3:
            b.u(1)
        b.ue()
        b.ue()
        b.u(1)
        if b.u(1):  # scaling matrices
            for i in range(12 if chroma == 3 else 8):
                if b.u(1):
                    last = nxt = 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + b.se()) % 256
                        last = nxt or last
    b.ue()  # log2_max_frame_num
    poc = b.ue()
    if poc == 0:
        b.ue()
    elif poc == 1:
        b.u(1)
        b.se()
        b.se()
        for _ in range(b.ue()):
            b.se()
    b.ue()  # max_num_ref_frames
    b.u(1)
    w_mbs = b.ue() + 1
    h_units = b.ue() + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.u(1)
    b.u(1)
    crop = (0, 0, 0, 0)
    if b.u(1):
        crop = (b.ue(), b.ue(), b.ue(), b.ue())
    sub_w, sub_h = (2, 2) if chroma == 1 else (2, 1) if chroma == 2 else (1, 1)
    unit_x = sub_w if chroma else 1
    unit_y = (sub_h if chroma else 1) * (2 - frame_mbs_only)
    width = w_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * h_units * 16 - unit_y * (crop[2] + crop[3])
    return width, height
