"""Byte-level RTP helpers for the forwarding hot path.

Packets stay `bytes`; nothing here builds an object per packet. Offsets follow RFC 3550
(fixed header, CSRCs, one extension block) and RFC 3551 padding.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!BBHII")
SEQ_TS = struct.Struct("!HI")
U16 = struct.Struct("!H")

H264 = "h264"
VP8 = "vp8"
OPUS = "opus"


def payload_bounds(data: bytes) -> tuple[int, int]:
    """Return (start, end) of the payload; raise ValueError on a malformed packet."""
    size = len(data)
    if size < 12 or data[0] >> 6 != 2:
        raise ValueError("not an RTP packet")
    start = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if start + 4 > size:
            raise ValueError("truncated RTP extension header")
        start += 4 + 4 * U16.unpack_from(data, start + 2)[0]
    end = size - data[-1] if data[0] & 0x20 else size
    if start > end:
        raise ValueError("truncated RTP packet")
    return start, end


def one_byte_extension(data: bytes, ext_id: int) -> bytes | None:
    """The value of header extension `ext_id` in a one-byte-header block (RFC 8285), or
    None: no block, another profile, a truncated element, or no such element."""
    if not data[0] & 0x10:
        return None
    pos = 12 + 4 * (data[0] & 0x0F)
    if pos + 4 > len(data) or data[pos] != 0xBE or data[pos + 1] != 0xDE:
        return None
    end = min(pos + 4 + 4 * U16.unpack_from(data, pos + 2)[0], len(data))
    pos += 4
    while pos < end:
        head = data[pos]
        if head == 0:  # padding between elements
            pos += 1
            continue
        element, size = head >> 4, (head & 0x0F) + 1
        if element == 15:  # reserved: stop reading (RFC 8285)
            return None
        if pos + 1 + size > end:
            return None
        if element == ext_id:
            return data[pos + 1 : pos + 1 + size]
        pos += 1 + size
    return None


def h264_keyframe_start(data: bytes, start: int, end: int) -> bool:
    """True when this packet begins an IDR access unit (SPS, PPS or IDR slice start)."""
    if start >= end:
        return False
    nal = data[start] & 0x1F
    if nal == 24:  # STAP-A: look at the first aggregated NAL
        if start + 3 >= end:
            return False
        nal = data[start + 3] & 0x1F
        return nal in (5, 7)
    if nal == 28:  # FU-A: only the fragment that starts the NAL counts
        if start + 1 >= end:
            return False
        fu = data[start + 1]
        return bool(fu & 0x80) and (fu & 0x1F) in (5, 7)
    return nal in (5, 7)


def vp8_keyframe_start(data: bytes, start: int, end: int) -> bool:
    """True when this packet begins a VP8 key frame (RFC 7741 descriptor, then P bit 0)."""
    if start >= end:
        return False
    desc = data[start]
    # S bit set and partition index 0: the first packet of a frame.
    if not desc & 0x10 or desc & 0x07:
        return False
    pos = start + 1
    if desc & 0x80:  # X: extension byte follows
        if pos >= end:
            return False
        ext = data[pos]
        pos += 1
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if pos >= end:
                return False
            pos += 2 if data[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            pos += 1
    if pos >= end:
        return False
    return not data[pos] & 0x01


def is_keyframe_start(codec: str, data: bytes, start: int, end: int) -> bool:
    if codec == H264:
        return h264_keyframe_start(data, start, end)
    if codec == VP8:
        return vp8_keyframe_start(data, start, end)
    return True  # audio: every packet is a decodable start


AST_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AST_UNITS_PER_S = 1 << 18  # abs-send-time is 6.18 fixed-point seconds, 24 bits
AST_WRAP = 1 << 24


def abs_send_time(now_s: float) -> bytes:
    """abs-send-time: 6.18 fixed-point seconds, 24 bits."""
    return (int(now_s * AST_UNITS_PER_S) % AST_WRAP).to_bytes(3, "big")
