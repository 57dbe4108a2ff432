"""Thumbnail sprite (one JPEG grid, for scrubbing previews) and a poster picture."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

THUMB_W, THUMB_H = 160, 90
COLUMNS = 10
MAX_THUMBS = 120


def thumb_interval(duration_s: float) -> float:
    """At most MAX_THUMBS pictures, and not more than one every 5 seconds."""
    return max(5.0, math.ceil(duration_s / MAX_THUMBS))


@dataclass
class SpriteBuilder:
    interval_s: float
    thumbs: list[np.ndarray] = field(default_factory=list)
    poster: np.ndarray | None = None
    next_t: float = 0.0

    def wants(self, t: float) -> bool:
        return t >= self.next_t

    def add(self, t: float, bgr: np.ndarray) -> None:
        """`bgr`: a THUMB_W x THUMB_H picture of the program at lesson time `t`."""
        self.thumbs.append(bgr)
        self.next_t = (len(self.thumbs)) * self.interval_s

    def set_poster(self, bgr: np.ndarray) -> None:
        self.poster = bgr

    def write(self, directory: Path) -> dict[str, object]:
        if not self.thumbs:
            blank = np.zeros((THUMB_H, THUMB_W, 3), np.uint8)
            self.thumbs.append(blank)
        n = len(self.thumbs)
        cols = min(COLUMNS, n)
        rows = math.ceil(n / cols)
        grid = np.zeros((rows * THUMB_H, cols * THUMB_W, 3), np.uint8)
        for i, img in enumerate(self.thumbs):
            r, c = divmod(i, cols)
            grid[r * THUMB_H : (r + 1) * THUMB_H, c * THUMB_W : (c + 1) * THUMB_W] = img
        _write_jpeg(directory / "sprite.jpg", grid, 70)
        poster = self.poster if self.poster is not None else self.thumbs[len(self.thumbs) // 3]
        _write_jpeg(directory / "poster.jpg", poster, 82)
        return {
            "sprite": "sprite.jpg",
            "poster": "poster.jpg",
            "interval_s": self.interval_s,
            "width": THUMB_W,
            "height": THUMB_H,
            "columns": cols,
            "count": n,
        }


def _write_jpeg(path: Path, img: np.ndarray, quality: int) -> None:
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"could not encode {path.name}")
    path.write_bytes(data.tobytes())
