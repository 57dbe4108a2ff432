"""Synthetic lesson recordings for tests, demos and the benchmark.

Pictures are drawn with numpy/OpenCV and encoded with PyAV exactly as the agent does
(libx264 Annex B or libvpx, libopus 20 ms), then written through `LessonRecorder`.
For long lessons a `loop_s` clip is encoded once and its packets repeated with shifted
timestamps, so building a 45-minute recording takes seconds, not an hour.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from recording.manifest import LessonMeta
from recording.writer import LessonRecorder

VIDEO_TB = Fraction(1, 90000)
AUDIO_TB = Fraction(1, 48000)


@dataclass
class SyntheticLesson:
    seconds: float = 12.0
    camera_size: tuple[int, int] = (320, 180)
    courseware_size: tuple[int, int] = (480, 270)
    fps: int = 15
    courseware_fps: int = 5
    slide_every_s: float = 4.0
    # (start, end) of a call-on of the teaching point, lesson seconds.
    call_on: tuple[float, float] | None = (5.0, 8.0)
    gop_s: float = 2.0
    video_codec: str = "h264"
    loop_s: float | None = None
    seed: int = 7
    # "easy": flat colours and static slides; "hard": sensor-like noise on every
    # picture (camera and courseware), which costs encoders and decoders what real
    # classroom video does.
    content: str = "easy"
    video_kbps: int = 600
    started_at: float = 1_750_000_000.0
    # Start delay of each track on the lesson clock (as if cameras came up one by one).
    offsets: dict[str, float] = field(
        default_factory=lambda: {
            "teacher_camera": 0.0,
            "microphone": 0.0,
            "courseware": 0.2,
            "point:p-xiaohe": 0.5,
        }
    )
    meta: LessonMeta = field(
        default_factory=lambda: LessonMeta(
            lesson="math-2025-03-04-p3",
            school="s-yizhong",
            subject="math",
            grade="7",
            teacher="王老师",
            title="分数的加减 Adding fractions",
            points={"p-xiaohe": "小河教学点"},
        )
    )


def _camera_frame(i: int, fps: int, size: tuple[int, int], hue: int, label: str) -> np.ndarray:
    w, h = size
    t = i / fps
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (hue, 90 + int(40 * math.sin(t)), 140)
    x = int((w - w // 5) * (0.5 + 0.5 * math.sin(t * 1.3)))
    cv2.rectangle(img, (x, h // 3), (x + w // 5, h // 3 + h // 3), (240, 230, 220), -1)
    cv2.putText(
        img,
        f"{label} {t:6.2f}",
        (4, h - 8),
        cv2.FONT_HERSHEY_SIMPLEX,
        h / 360,
        (255, 255, 255),
        max(1, h // 180),
    )
    return img


def _slide_frame(index: int, size: tuple[int, int], rng_seed: int) -> np.ndarray:
    w, h = size
    rng = np.random.default_rng(rng_seed + index)
    img = np.full((h, w, 3), 250, np.uint8)
    colour = tuple(int(c) for c in rng.integers(0, 200, 3))
    cv2.rectangle(img, (0, 0), (w, h // 6), colour, -1)
    cv2.putText(
        img,
        f"Slide {index + 1}",
        (w // 20, h // 8),
        cv2.FONT_HERSHEY_SIMPLEX,
        h / 300,
        (255, 255, 255),
        max(1, h // 150),
    )
    for k in range(4):
        y = h // 4 + k * h // 7
        length = int(w * (0.4 + 0.5 * rng.random()))
        cv2.rectangle(img, (w // 20, y), (w // 20 + length, y + h // 30), (60, 60, 60), -1)
    cx, cy = int(w * 0.75), int(h * 0.6)
    cv2.circle(img, (cx, cy), h // 6, colour, -1)
    return img


class _Noise:
    """High-entropy texture: a fixed random field, shifted every frame."""

    def __init__(self, size: tuple[int, int], seed: int, amplitude: int = 48) -> None:
        w, h = size
        rng = np.random.default_rng(seed)
        self._field = rng.integers(0, amplitude, (h + 32, w + 32, 3), dtype=np.uint8)
        self._size = size

    def add(self, img: np.ndarray, i: int) -> np.ndarray:
        w, h = self._size
        dx, dy = (i * 7) % 32, (i * 13) % 32
        return cv2.add(img, self._field[dy : dy + h, dx : dx + w])


def _video_encoder(
    codec: str, size: tuple[int, int], fps: int, gop: int, kbps: int = 600
) -> av.CodecContext:
    name = "libx264" if codec == "h264" else "libvpx"
    enc = av.CodecContext.create(name, "w")
    enc.width, enc.height = size
    enc.pix_fmt = "yuv420p"
    enc.time_base = VIDEO_TB
    enc.framerate = Fraction(fps)
    enc.gop_size = gop
    if codec == "h264":
        # What the agent uses for live publishing: no B-frames, headers on every keyframe.
        enc.options = {"preset": "ultrafast", "tune": "zerolatency", "repeat-headers": "1"}
        enc.bit_rate = kbps * 1000
    else:
        enc.options = {"deadline": "realtime", "cpu-used": "8"}
        enc.bit_rate = kbps * 1000
    return enc


def _encode_video(
    enc: av.CodecContext, frames: Iterator[tuple[int, np.ndarray]]
) -> list[av.Packet]:
    out: list[av.Packet] = []
    for pts, img in frames:
        frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
        frame.pts = pts
        frame.time_base = VIDEO_TB
        out.extend(enc.encode(frame))
    out.extend(enc.encode(None))
    return out


def _encode_audio(seconds: float, seed: int) -> list[av.Packet]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = 48000
    enc.layout = "mono"
    enc.format = "s16"
    enc.time_base = AUDIO_TB
    enc.bit_rate = 32000
    rng = np.random.default_rng(seed)
    out: list[av.Packet] = []
    n = int(seconds * 50)
    for i in range(n):
        t = (np.arange(960) + i * 960) / 48000
        # A short beep each second, so a listener (or a test) can hear the clock.
        tone = np.sin(2 * np.pi * 440 * t) * (0.5 if (i % 50) < 5 else 0.05)
        noise = rng.normal(0, 0.01, 960)
        samples = ((tone + noise) * 20000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = AUDIO_TB
        out.extend(enc.encode(frame))
    out.extend(enc.encode(None))
    return out


def _repeat(packets: list[av.Packet], clip_ticks: int, total_ticks: int) -> Iterator[av.Packet]:
    """Yield `packets` again and again with shifted timestamps until `total_ticks`."""
    shift = 0
    first = min((p.pts for p in packets if p.pts is not None), default=0)
    while shift < total_ticks:
        for p in packets:
            if p.pts is None or p.pts + shift >= total_ticks or p.pts >= first + clip_ticks:
                continue
            q = av.Packet(bytes(p))
            q.pts = p.pts + shift
            q.dts = (p.dts if p.dts is not None else p.pts) + shift
            q.time_base = p.time_base
            q.duration = p.duration
            q.is_keyframe = p.is_keyframe
            yield q
        shift += clip_ticks


def make_recording(root: Path, spec: SyntheticLesson | None = None) -> Path:
    """Write a complete recording under `root`; returns its directory."""
    spec = spec or SyntheticLesson()
    clip_s = min(spec.loop_s or spec.seconds, spec.seconds)
    fps, cfps = spec.fps, spec.courseware_fps
    gop = max(1, int(spec.gop_s * fps))
    # Synthesis runs faster than real time: wait for the disk rather than drop packets.
    rec = LessonRecorder(
        root, spec.meta, origin="agent", started_at=spec.started_at, wait_when_full=True
    )
    point = next(iter(spec.meta.points), None)

    if spec.content not in ("easy", "hard"):
        raise ValueError(f"content must be 'easy' or 'hard', got {spec.content!r}")
    hard = spec.content == "hard"

    def frames(size: tuple[int, int], hue: int, label: str) -> Iterator[tuple[int, np.ndarray]]:
        noise = _Noise(size, spec.seed + hue) if hard else None
        for i in range(int(clip_s * fps)):
            img = _camera_frame(i, fps, size, hue, label)
            yield i * (90000 // fps), noise.add(img, i) if noise else img

    slides_cache: dict[int, np.ndarray] = {}
    slide_noise = _Noise(spec.courseware_size, spec.seed + 1, amplitude=24) if hard else None

    def slide_frames() -> Iterator[tuple[int, np.ndarray]]:
        for i in range(int(clip_s * cfps)):
            index = int(i / cfps // spec.slide_every_s)
            if index not in slides_cache:
                slides_cache[index] = _slide_frame(index, spec.courseware_size, spec.seed)
            slide = slides_cache[index]
            yield i * (90000 // cfps), slide_noise.add(slide, i) if slide_noise else slide

    plan: list[tuple[str, str, str, list[av.Packet], dict[str, int]]] = []
    cam = _encode_video(
        _video_encoder(spec.video_codec, spec.camera_size, fps, gop, spec.video_kbps),
        frames(spec.camera_size, 30, "teacher"),
    )
    plan.append(
        (
            "teacher_camera",
            "video",
            spec.video_codec,
            cam,
            {"width": spec.camera_size[0], "height": spec.camera_size[1]},
        )
    )
    cw_enc = _video_encoder(
        spec.video_codec,
        spec.courseware_size,
        cfps,
        max(1, int(spec.gop_s * cfps)),
        spec.video_kbps,
    )
    cw = _encode_video(cw_enc, slide_frames())
    plan.append(
        (
            "courseware",
            "video",
            spec.video_codec,
            cw,
            {"width": spec.courseware_size[0], "height": spec.courseware_size[1]},
        )
    )
    if point:
        pc = _encode_video(
            _video_encoder(spec.video_codec, spec.camera_size, fps, gop, spec.video_kbps),
            frames(spec.camera_size, 110, point),
        )
        plan.append(
            (
                f"point:{point}",
                "video",
                spec.video_codec,
                pc,
                {"width": spec.camera_size[0], "height": spec.camera_size[1]},
            )
        )
    plan.append(("microphone", "audio", "opus", _encode_audio(clip_s, spec.seed), {}))

    for source, kind, codec, packets, dims in plan:
        offset = spec.offsets.get(source, 0.0)
        tb = VIDEO_TB if kind == "video" else AUDIO_TB
        writer = rec.add_track(source, kind, codec, wall_at_pts0=spec.started_at + offset, **dims)
        clip_ticks = round(clip_s / tb)
        total_ticks = round((spec.seconds - offset) / tb)
        for packet in _repeat(packets, clip_ticks, total_ticks):
            writer.write(packet)
        writer.close()

    if point:
        rec.event("join", t=0.4, classroom=point, name=spec.meta.points[point])
    n_slides = int(spec.seconds // spec.slide_every_s)
    for k in range(1, n_slides + 1, 2):
        # Only every other slide change is announced; the others must be detected.
        t = k * spec.slide_every_s
        if t < spec.seconds:
            rec.event("slide", t=round(t + spec.offsets.get("courseware", 0.0), 3), index=k + 1)
    if point and spec.call_on:
        rec.event("hand_raised", t=max(0.0, spec.call_on[0] - 1.0), classroom=point)
        rec.event("call_on", t=spec.call_on[0], classroom=point, name=spec.meta.points[point])
        rec.event("call_off", t=spec.call_on[1], classroom=point)
    rec.event("chat", t=min(spec.seconds - 0.5, 2.0), sender="小明", text="老师好")
    rec.close()
    # The timeline was written out of order; packaging sorts by t.
    return rec.directory
