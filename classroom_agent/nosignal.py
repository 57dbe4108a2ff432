"""The card a video track shows, and the silence an audio track sends, while its source is down.

cv2's Hershey fonts have no CJK glyphs and the agent must not depend on system fonts,
so the three characters of 无信号 are drawn from stroke outlines defined here.
"""

from __future__ import annotations

import time

import av
import cv2
import numpy as np

# Each glyph is a list of polylines in a unit box (x right, y down).
_GLYPHS: dict[str, list[list[tuple[float, float]]]] = {
    "无": [
        [(0.2, 0.15), (0.8, 0.15)],
        [(0.08, 0.45), (0.92, 0.45)],
        [(0.47, 0.15), (0.45, 0.5), (0.35, 0.75), (0.1, 0.95)],
        [(0.58, 0.45), (0.58, 0.85), (0.63, 0.92), (0.9, 0.92), (0.93, 0.78)],
    ],
    "信": [
        [(0.28, 0.05), (0.08, 0.45)],
        [(0.2, 0.3), (0.2, 0.97)],
        [(0.58, 0.04), (0.65, 0.12)],
        [(0.38, 0.2), (0.95, 0.2)],
        [(0.45, 0.35), (0.88, 0.35)],
        [(0.45, 0.5), (0.88, 0.5)],
        [(0.45, 0.65), (0.88, 0.65), (0.88, 0.95), (0.45, 0.95), (0.45, 0.65)],
    ],
    "号": [
        [(0.28, 0.05), (0.72, 0.05), (0.72, 0.35), (0.28, 0.35), (0.28, 0.05)],
        [(0.08, 0.5), (0.92, 0.5)],
        [(0.38, 0.52), (0.3, 0.7), (0.78, 0.7), (0.74, 0.95), (0.6, 0.9)],
    ],
}
NO_SIGNAL_ZH = "无信号"


def draw_glyphs(img: np.ndarray, text: str, x: int, y: int, size: int, value: int) -> int:
    """Draw ``text`` (characters of :data:`NO_SIGNAL_ZH`) at (x, y); returns the end x."""
    thickness = max(1, size // 10)
    for char in text:
        for stroke in _GLYPHS[char]:
            pts = np.array([(x + px * size, y + py * size) for px, py in stroke], np.int32)
            cv2.polylines(img, [pts], False, value, thickness, cv2.LINE_AA)
        x += int(size * 1.15)
    return x


def render_no_signal(width: int, height: int, label: str, reason: str = "") -> av.VideoFrame:
    """A yuv420p frame: dark grey card with the source label, 无信号 / No signal, the time."""
    luma = np.full((height, width), 40, np.uint8)
    scale = height / 720
    size = max(12, int(64 * scale))
    font = cv2.FONT_HERSHEY_SIMPLEX
    thick = max(1, int(2 * scale))
    cv2.putText(
        luma,
        label,
        (int(width * 0.08), int(height * 0.3)),
        font,
        1.4 * scale,
        200,
        thick,
        cv2.LINE_AA,
    )
    y = int(height * 0.42)
    end = draw_glyphs(luma, NO_SIGNAL_ZH, int(width * 0.08), y, size, 235)
    cv2.putText(
        luma,
        "/ No signal",
        (end + size // 3, y + int(size * 0.85)),
        font,
        1.6 * scale,
        235,
        thick + 1,
        cv2.LINE_AA,
    )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    cv2.putText(
        luma,
        stamp,
        (int(width * 0.08), int(height * 0.72)),
        font,
        1.0 * scale,
        170,
        thick,
        cv2.LINE_AA,
    )
    if reason:
        cv2.putText(
            luma,
            reason[:80],
            (int(width * 0.08), int(height * 0.82)),
            font,
            0.6 * scale,
            120,
            max(1, thick // 2),
            cv2.LINE_AA,
        )
    frame = av.VideoFrame(width, height, "yuv420p")
    frame.planes[0].update(np.ascontiguousarray(_pad(luma, frame.planes[0].line_size)))
    for index in (1, 2):
        plane = frame.planes[index]
        plane.update(np.full(plane.buffer_size, 128, np.uint8))
    return frame


def _pad(rows: np.ndarray, line_size: int) -> np.ndarray:
    if rows.shape[1] == line_size:
        return rows
    out = np.zeros((rows.shape[0], line_size), np.uint8)
    out[:, : rows.shape[1]] = rows
    return out


def silence(samples: int = 960, sample_rate: int = 48000, layout: str = "stereo") -> av.AudioFrame:
    """A frame of digital silence in packed s16."""
    channels = 2 if layout == "stereo" else 1
    frame = av.AudioFrame.from_ndarray(
        np.zeros((1, samples * channels), np.int16), format="s16", layout=layout
    )
    frame.sample_rate = sample_rate
    return frame
