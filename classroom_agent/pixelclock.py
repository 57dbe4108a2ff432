"""A wall-clock timestamp drawn into video pixels, readable after lossy compression.

Format (shared with ``web_client/pixelclock.js``; change both together):

* Payload: 40 bits, most significant first. Bits 0-31 are the capture time in
  wall-clock milliseconds (``int(time.time() * 1000) % 2**32``); bits 32-39 are a
  CRC-8 of those four big-endian bytes (polynomial 0x07, init 0x00, then XOR 0x55 so
  an all-black band never validates).
* Geometry: a row of 40 square blocks in the top-left corner, block ``i`` covering
  ``x in [round(i*b), round((i+1)*b))`` and ``y in [0, round(b))`` with
  ``b = min(height / 45, width / 40)``: 16 px at 1280x720, 4 px at 320x180. Because
  ``b`` scales with the picture, a stamp survives proportional scaling (simulcast
  layers, a browser canvas of another size).
* Colour: bit 1 is white (luma 235), bit 0 black (luma 16), chroma neutral.
* Reading: the mean luma of the central half of each block, thresholded at the
  midpoint between black and white; the CRC rejects misreads and pictures without a
  stamp, so ``read`` returns ``None`` rather than a wrong time.
"""

from __future__ import annotations

import av
import numpy as np
from av.video.plane import VideoPlane

BLOCKS = 40
VALUE_BITS = 32
CRC_XOR = 0x55
_WHITE_Y = 235
_BLACK_Y = 16
_THRESHOLD = (_WHITE_Y + _BLACK_Y) / 2
# RGB values whose BT.601 limited-range luma is _WHITE_Y/_BLACK_Y.
_WHITE_RGB = 255
_BLACK_RGB = 0


def crc8(data: bytes) -> int:
    """CRC-8 (poly 0x07, init 0) as used by the clock's check byte, before the XOR."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def encode_bits(ms: int) -> list[int]:
    """The 40 bits (MSB first) that represent ``ms``."""
    value = int(ms) % (1 << VALUE_BITS)
    check = crc8(value.to_bytes(4, "big")) ^ CRC_XOR
    word = (value << 8) | check
    return [(word >> (BLOCKS - 1 - i)) & 1 for i in range(BLOCKS)]


def decode_bits(bits: list[int]) -> int | None:
    """The milliseconds carried by 40 bits, or None when the check byte disagrees."""
    word = 0
    for bit in bits:
        word = (word << 1) | bit
    value, check = word >> 8, word & 0xFF
    if crc8(value.to_bytes(4, "big")) ^ CRC_XOR != check:
        return None
    return value


def block_size(width: int, height: int) -> float:
    """Side of one clock block in pixels for a picture of this size."""
    return min(height / 45.0, width / BLOCKS)


def _spans(width: int, height: int) -> tuple[list[tuple[int, int]], int]:
    b = block_size(width, height)
    xs = [(round(i * b), round((i + 1) * b)) for i in range(BLOCKS)]
    return xs, max(1, round(b))


def stamp(img: np.ndarray | VideoPlane, ms: int) -> None:
    """Draw the clock for ``ms`` into ``img`` in place.

    ``img`` is an (H, W, 3) uint8 RGB image, a 2-D uint8 luma array, or the Y plane
    (``frame.planes[0]``) of a yuv420p ``av.VideoFrame``; :func:`stamp_frame` also
    neutralises the chroma under the band, which keeps the blocks crisp.
    """
    if isinstance(img, VideoPlane):
        img = np.frombuffer(img, np.uint8).reshape(-1, img.line_size)[: img.height, : img.width]
    if img.ndim == 3:
        height, width = img.shape[:2]
        on, off = _WHITE_RGB, _BLACK_RGB
    elif img.ndim == 2:
        height, width = img.shape
        on, off = _WHITE_Y, _BLACK_Y
    else:
        raise ValueError(f"expected an (H, W, 3) RGB image or an (H, W) plane, got {img.shape}")
    xs, rows = _spans(width, height)
    for (x0, x1), bit in zip(xs, encode_bits(ms), strict=True):
        img[:rows, x0:x1] = on if bit else off


def stamp_frame(frame: av.VideoFrame, ms: int) -> None:
    """Draw the clock into a yuv420p ``av.VideoFrame`` in place (luma blocks, grey chroma)."""
    if frame.format.name != "yuv420p":
        raise ValueError(f"stamp_frame needs a yuv420p frame, got {frame.format.name}")
    width, height = frame.width, frame.height
    stamp(_plane_array(frame, 0, width, height), ms)
    stamp_frame_chroma(frame)


def stamp_frame_chroma(frame: av.VideoFrame) -> None:
    """Neutralise the chroma under the clock band of a yuv420p frame stamped via its Y plane."""
    xs, rows = _spans(frame.width, frame.height)
    # Chroma is subsampled 2x2; neutral chroma keeps the blocks pure black and white.
    cw, ch = (xs[-1][1] + 1) // 2, (rows + 1) // 2
    for index in (1, 2):
        _plane_array(frame, index, (frame.width + 1) // 2, (frame.height + 1) // 2)[:ch, :cw] = 128


def _plane_array(frame: av.VideoFrame, index: int, width: int, height: int) -> np.ndarray:
    plane = frame.planes[index]
    # A writable view of the plane's memory; rows are padded to line_size.
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:height, :width]


def _luma_of(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] >= 3:
        rgb = img[..., :3].astype(np.float32)
        # BT.601 limited range, the same mapping the encoder path uses.
        return 16.0 + (65.738 * rgb[..., 0] + 129.057 * rgb[..., 1] + 25.064 * rgb[..., 2]) / 256
    raise ValueError(f"expected an RGB(A) image or a 2-D plane, got {img.shape}")


def read(img: np.ndarray) -> int | None:
    """Read the clock from an (H, W, 3|4) RGB(A) image or an (H, W) luma plane."""
    height, width = img.shape[:2]
    b = block_size(width, height)
    if b < 2:
        return None
    band = _luma_of(img[: max(1, round(b))])
    y0, y1 = int(b * 0.25), max(int(b * 0.25) + 1, round(b * 0.75))
    bits = []
    for i in range(BLOCKS):
        x0 = int((i + 0.25) * b)
        x1 = max(x0 + 1, round((i + 0.75) * b))
        bits.append(1 if float(band[y0:y1, x0:x1].mean()) > _THRESHOLD else 0)
    return decode_bits(bits)


def read_frame(frame: av.VideoFrame) -> int | None:
    """Read the clock from a decoded video frame of any pixel format."""
    if frame.format.name in ("yuv420p", "yuvj420p", "nv12", "yuv422p", "yuv444p", "gray"):
        return read(_plane_array(frame, 0, frame.width, frame.height).copy())
    return read(frame.to_ndarray(format="rgb24"))


def now_ms() -> int:
    """The current wall-clock time in the clock's units (ms modulo 2**32)."""
    import time

    return int(time.time() * 1000) % (1 << VALUE_BITS)


def age_ms(clock: int, now: int | None = None) -> int:
    """Milliseconds between a read clock value and ``now``, across the 2**32 wrap."""
    current = now_ms() if now is None else now
    diff = (current - clock) % (1 << VALUE_BITS)
    # A clock slightly ahead of us (skewed machines) shows up as a small negative age.
    return diff - (1 << VALUE_BITS) if diff >= 1 << (VALUE_BITS - 1) else diff
