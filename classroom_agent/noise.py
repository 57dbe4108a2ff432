"""A high-entropy synthetic camera: a panning textured scene under sensor grain.

The test card is mostly flat colour; an encoder spends a small fraction of its target on
it, which hides what a real camera does to a link (a classroom camera fills its
configured bitrate with detail, motion and sensor noise). This source does the same at
little cost: a textured scene (noise at several scales) and a grain field are rendered
once; each frame copies a window of the scene that pans along a smooth path, XORs the
low bits of a randomly shifted window of the grain into it (fresh noise every frame that
no motion search can predict), writes the label and stamps the pixel clock, so
glass-to-glass latency stays readable. 1280x720 at 30 fps costs a few milliseconds a
frame before encoding.
"""

from __future__ import annotations

import av
import cv2
import numpy as np

from . import pixelclock
from .testcard import PacedVideo, _plane

# Low bits of luma flipped by the grain (3: up to +-7 levels, a cheap webcam's noise).
LUMA_GRAIN_BITS = 3
CHROMA_GRAIN_BITS = 1
# How far the scene pans, as a share of the picture size, and how fast (cycles/s).
PAN_SHARE = 0.5
PAN_HZ = (0.07, 0.11)
GRAIN_MARGIN = 64


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Noise summed over octaves: large blobs to fine texture, like a busy classroom."""
    out = np.zeros((h, w), np.float32)
    for cell, weight in ((64, 1.0), (16, 0.6), (4, 0.4), (1, 0.25)):
        small = rng.random((max(2, h // cell), max(2, w // cell)), dtype=np.float32)
        out += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    out -= out.min()
    out *= 200.0 / max(float(out.max()), 1e-6)
    return (out + 28.0).astype(np.uint8)


class NoiseVideo(PacedVideo):
    """Panning textured scene with per-frame grain, ``label`` and the pixel clock."""

    default_label = "Noise"

    def setup(self, rng: np.random.Generator) -> None:
        width, height = self.width, self.height
        self._pan = (int(width * PAN_SHARE) & ~1, int(height * PAN_SHARE) & ~1)
        sh, sw = height + self._pan[1], width + self._pan[0]
        self._y = _scene(rng, sh, sw)
        self._u = _scene(rng, sh // 2, sw // 2) // 2 + 64
        self._v = _scene(rng, sh // 2, sw // 2) // 2 + 64
        gh, gw = height + GRAIN_MARGIN, width + GRAIN_MARGIN
        self._grain_y = rng.integers(0, 1 << LUMA_GRAIN_BITS, (gh, gw), dtype=np.uint8)
        self._grain_c = rng.integers(0, 1 << CHROMA_GRAIN_BITS, (gh // 2, gw // 2), dtype=np.uint8)
        self._phase = rng.uniform(0, 2 * np.pi, 2)
        self._rng = np.random.default_rng(self.seed + 1)

    def render(self, index: int, ms: int) -> av.VideoFrame:
        self.frames = index + 1
        w, h = self.width, self.height
        t = index / self.fps
        # A smooth pan (camera operator, people moving): predictable by motion search,
        # unlike the grain on top of it.
        px = int((np.sin(2 * np.pi * PAN_HZ[0] * t + self._phase[0]) + 1) / 2 * self._pan[0]) & ~1
        py = int((np.sin(2 * np.pi * PAN_HZ[1] * t + self._phase[1]) + 1) / 2 * self._pan[1]) & ~1
        gx, gy = (int(v) & ~1 for v in self._rng.integers(0, GRAIN_MARGIN, 2))
        frame = av.VideoFrame(w, h, "yuv420p")
        y, u, v = _plane(frame, 0), _plane(frame, 1), _plane(frame, 2)
        np.bitwise_xor(
            self._y[py : py + h, px : px + w], self._grain_y[gy : gy + h, gx : gx + w], out=y
        )
        cy, cx, ch, cw, gcy, gcx = py // 2, px // 2, h // 2, w // 2, gy // 2, gx // 2
        grain_c = self._grain_c[gcy : gcy + ch, gcx : gcx + cw]
        np.bitwise_xor(self._u[cy : cy + ch, cx : cx + cw], grain_c, out=u)
        np.bitwise_xor(self._v[cy : cy + ch, cx : cx + cw], grain_c, out=v)
        scale = h / 720
        tx, ty = int(w * 0.02), int(h * 0.9)
        cv2.putText(
            y,
            f"{self.label} #{index:06d}",
            (tx, ty),
            cv2.FONT_HERSHEY_SIMPLEX,
            1.2 * scale,
            235,
            max(1, int(3 * scale)),
            cv2.LINE_AA,
        )
        pixelclock.stamp(y, ms)
        pixelclock.stamp_frame_chroma(frame)
        return frame
