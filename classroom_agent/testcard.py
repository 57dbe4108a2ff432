"""Synthetic sources: a moving test card and a tone, through the same path as real capture.

The video card is pre-rendered once in yuv420p (colour bars and the label); each frame
only copies it, moves a box, writes the frame counter and stamps the pixel clock, so
1280x720 at 30 fps costs a few percent of a core before encoding. A white square
flashes during the first 100 ms of every wall-clock second, in step with the audio
beep, so lip sync can be judged by eye and ear.
"""

from __future__ import annotations

import time

import av
import cv2
import numpy as np

from . import pixelclock
from .sources import AUDIO_RATE, AUDIO_SAMPLES, MediaSource

_BARS_RGB = [
    (192, 192, 192),
    (192, 192, 0),
    (0, 192, 192),
    (0, 192, 0),
    (192, 0, 192),
    (192, 0, 0),
    (0, 0, 192),
    (16, 16, 16),
]


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
    plane = frame.planes[index]
    w = frame.width if index == 0 else (frame.width + 1) // 2
    h = frame.height if index == 0 else (frame.height + 1) // 2
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:h, :w]


class PacedVideo(MediaSource):
    """A synthetic camera paced at ``fps``: subclasses prepare their pictures in `setup`
    and draw frame ``index`` in `render`."""

    kind = "video"
    default_label = "Test card"

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        label: str | None = None,
        seed: int = 0,
        *,
        name: str | None = None,
        **kwargs: object,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"synthetic video needs even dimensions, got {width}x{height}")
        label = label or self.default_label
        super().__init__(
            name or label.lower().replace(" ", "_"),
            label=label,
            width=width,
            height=height,
            fps=fps,
            **kwargs,
        )  # type: ignore[arg-type]
        self.seed = seed
        self.frames = 0
        self._t0 = 0.0
        self.setup(np.random.default_rng(seed))

    def setup(self, rng: np.random.Generator) -> None:
        """Render what every frame reuses (called once, at construction)."""

    def open(self) -> None:
        self._t0 = time.monotonic() - self.frames / self.fps

    def read(self) -> av.VideoFrame:
        if not self.wait_until(self._t0 + self.frames / self.fps):
            raise SourceStopped(self.name)
        return self.render(self.frames, pixelclock.now_ms())

    def render(self, index: int, ms: int) -> av.VideoFrame:
        """Frame number ``index`` stamped with clock ``ms`` (no pacing; tests use this)."""
        raise NotImplementedError


class SyntheticVideo(PacedVideo):
    """A moving test card with ``label`` and the pixel clock, paced at ``fps``."""

    def setup(self, rng: np.random.Generator) -> None:
        self._static = self._render_static()
        self._box = max(8, (self.height // 6) & ~1)
        self._pos = rng.uniform(0, 1, 2)
        self._vel = rng.uniform(0.004, 0.012, 2) * rng.choice([-1, 1], 2)

    def _render_static(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, h = self.width, self.height
        rgb = np.zeros((h, w, 3), np.uint8)
        bar_w = w / len(_BARS_RGB)
        for i, colour in enumerate(_BARS_RGB):
            rgb[:, int(i * bar_w) : int((i + 1) * bar_w)] = colour
        # A grey ramp at the bottom shows banding and level problems.
        ramp_h = h // 6
        rgb[h - ramp_h :] = np.linspace(0, 255, w, dtype=np.float32).astype(np.uint8)[None, :, None]
        scale = h / 720
        font = cv2.FONT_HERSHEY_SIMPLEX
        (tw, th), _ = cv2.getTextSize(self.label, font, 2.0 * scale, max(1, int(4 * scale)))
        org = ((w - tw) // 2, int(h * 0.55))
        cv2.rectangle(
            rgb, (org[0] - 10, org[1] - th - 10), (org[0] + tw + 10, org[1] + 14), (0, 0, 0), -1
        )
        cv2.putText(
            rgb,
            self.label,
            org,
            font,
            2.0 * scale,
            (255, 255, 255),
            max(1, int(4 * scale)),
            cv2.LINE_AA,
        )
        i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        y = i420[:h]
        chroma = i420[h:].reshape(2, h // 2, w // 2)  # U then V, each (h/2, w/2)
        return y.copy(), chroma[0].copy(), chroma[1].copy()

    def render(self, index: int, ms: int) -> av.VideoFrame:
        self.frames = index + 1
        w, h = self.width, self.height
        frame = av.VideoFrame(w, h, "yuv420p")
        y, u, v = _plane(frame, 0), _plane(frame, 1), _plane(frame, 2)
        sy, su, sv = self._static
        y[:] = sy
        u[:] = su
        v[:] = sv
        # Box bouncing around the card: motion that makes the encoder work.
        self._pos += self._vel
        for axis in (0, 1):
            if not 0 <= self._pos[axis] <= 1:
                self._vel[axis] = -self._vel[axis]
                self._pos[axis] = min(1.0, max(0.0, self._pos[axis]))
        b = self._box
        bx = int(self._pos[0] * (w - b)) & ~1
        by = int(self._pos[1] * (h - b)) & ~1
        y[by : by + b, bx : bx + b] = 81
        u[by // 2 : (by + b) // 2, bx // 2 : (bx + b) // 2] = 90
        v[by // 2 : (by + b) // 2, bx // 2 : (bx + b) // 2] = 240
        scale = h / 720
        if ms % 1000 < 100:
            fy, fx = int(h * 0.7), int(w * 0.85)
            y[fy : fy + b, fx : fx + b] = 235
        cx, cy = int(w * 0.02), int(h * 0.8)
        y[cy - int(40 * scale) : cy + int(12 * scale), cx : cx + int(200 * scale)] = 16
        u[
            (cy - int(40 * scale)) // 2 : (cy + int(12 * scale)) // 2,
            cx // 2 : (cx + int(200 * scale)) // 2,
        ] = 128
        v[
            (cy - int(40 * scale)) // 2 : (cy + int(12 * scale)) // 2,
            cx // 2 : (cx + int(200 * scale)) // 2,
        ] = 128
        cv2.putText(
            y,
            f"#{index:06d}",
            (cx, cy),
            cv2.FONT_HERSHEY_SIMPLEX,
            1.2 * scale,
            235,
            max(1, int(3 * scale)),
            cv2.LINE_AA,
        )
        pixelclock.stamp(y, ms)
        pixelclock.stamp_frame_chroma(frame)
        return frame


class SourceStopped(Exception):
    """Raised inside a source thread when it is asked to stop while pacing."""


class SyntheticAudio(MediaSource):
    """20 ms stereo s16 frames at 48 kHz: a quiet tone and a beep at every whole second."""

    kind = "audio"

    def __init__(
        self,
        sample_rate: int = AUDIO_RATE,
        freq: float = 440.0,
        *,
        name: str = "synthetic_audio",
        label: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(name, label=label, **kwargs)  # type: ignore[arg-type]
        self.sample_rate = sample_rate
        self.freq = freq
        self.samples = AUDIO_SAMPLES * sample_rate // AUDIO_RATE
        self.frames = 0
        self._t0 = 0.0
        self._wall0_ms = 0.0

    def open(self) -> None:
        self._t0 = time.monotonic() - self.frames * self.samples / self.sample_rate
        self._wall0_ms = time.time() * 1000 - self.frames * self.samples * 1000 / self.sample_rate

    def read(self) -> av.AudioFrame:
        # A frame is due once its last sample would have been captured.
        due = self._t0 + (self.frames + 1) * self.samples / self.sample_rate
        if not self.wait_until(due):
            raise SourceStopped(self.name)
        return self.render(self.frames)

    def render(self, index: int) -> av.AudioFrame:
        """Frame number ``index`` (no pacing)."""
        self.frames = index + 1
        n = np.arange(index * self.samples, (index + 1) * self.samples, dtype=np.float64)
        t = n / self.sample_rate
        signal = 0.1 * np.sin(2 * np.pi * self.freq * t)
        wall_ms = self._wall0_ms + t * 1000
        beep = (wall_ms % 1000) < 100
        signal = np.where(beep, 0.5 * np.sin(2 * np.pi * 1000.0 * t), signal)
        pcm = (signal * 32767).astype(np.int16)
        stereo = np.repeat(pcm, 2)[None, :]
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = self.sample_rate
        frame.pts = index * self.samples
        return frame
