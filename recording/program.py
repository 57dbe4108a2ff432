"""The composed program and the low-bandwidth rendition, in one decode pass.

Courseware fills the picture; the teacher camera (or, during a call-on, the called-on
teaching point's camera) sits in a picture-in-picture corner, or beside the courseware
with `layout="side"`. A libavfilter graph overlays the two and splits the result: one
branch is encoded as the program (H.264 + AAC MP4), the other is scaled down for the
low rendition (at most 300 kbit/s in total). The same pass feeds the thumbnail sprite
and the slide-change detector, so every source is decoded exactly once.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from recording.chapters import SlideDetector
from recording.source import Recording
from recording.thumbnails import THUMB_H, THUMB_W, SpriteBuilder, thumb_interval
from recording.timeline import Event

AUDIO_RATE = 48000


@dataclass
class ProgramSettings:
    width: int = 960
    height: int = 540
    fps: int = 15
    layout: str = "pip"  # pip | side
    crf: int = 25
    preset: str = "veryfast"
    max_kbps: int = 1500
    audio_kbps: int = 64
    low_width: int = 480
    low_height: int = 270
    # The low rendition keeps every n-th program frame.
    low_every: int = 2
    low_video_kbps: int = 200
    low_audio_kbps: int = 32


@dataclass
class ProgramResult:
    program_mp4: Path
    low_mp4: Path
    slide_changes: list[float]
    sprite: dict[str, object]
    duration_s: float
    call_ons: list[tuple[float, float, str]] = field(default_factory=list)


def call_on_intervals(events: list[Event], end_s: float) -> list[tuple[float, float, str]]:
    """(start, end, classroom) for each call-on; one without a call-off lasts until the
    next call-on or the end of the lesson."""
    out: list[tuple[float, float, str]] = []
    current: tuple[float, str] | None = None
    for e in events:
        if e.kind == "call_on" and e.get("classroom"):
            if current:
                out.append((current[0], e.t, current[1]))
            current = (e.t, str(e.get("classroom")))
        elif e.kind == "call_off" and current:
            out.append((current[0], e.t, current[1]))
            current = None
    if current:
        out.append((current[0], end_s, current[1]))
    return out


class _Cursor:
    """Decoded frames of one track on the lesson clock; `at(t)` gives the latest frame."""

    def __init__(self, path: Path, offset_s: float, kind: str = "video") -> None:
        self.path = path
        self._frames = self._decode(path, offset_s, kind)
        self.current: av.VideoFrame | None = None
        self.current_t = -math.inf
        self._next: tuple[float, av.VideoFrame] | None = None
        self._done = False
        self.version = 0  # bumps whenever `current` changes

    @staticmethod
    def _decode(path: Path, offset_s: float, kind: str) -> Iterator[tuple[float, av.Frame]]:
        with av.open(str(path)) as container:
            stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
            stream.thread_type = "AUTO"
            first: int | None = None
            tb: Fraction = stream.time_base
            try:
                for packet in container.demux(stream):
                    if packet.dts is None:
                        continue
                    if first is None:
                        first = packet.dts
                    for frame in packet.decode():
                        if frame.pts is None:
                            continue
                        yield offset_s + float((frame.pts - first) * tb), frame
                for frame in stream.decode(None):
                    if frame.pts is not None and first is not None:
                        yield offset_s + float((frame.pts - first) * tb), frame
            except av.error.FFmpegError:
                # Killed writer: the file ends in a damaged packet. Keep what decoded.
                return

    def _peek(self) -> tuple[float, av.VideoFrame] | None:
        if self._next is None and not self._done:
            self._next = next(self._frames, None)  # type: ignore[arg-type]
            if self._next is None:
                self._done = True
        return self._next

    def at(self, t: float) -> av.VideoFrame | None:
        while True:
            nxt = self._peek()
            if nxt is None or nxt[0] > t:
                return self.current
            self.current_t, self.current = nxt
            self._next = None
            self.version += 1


def _video_stream(
    out: av.container.OutputContainer,
    w: int,
    h: int,
    fps: Fraction,
    crf: int,
    preset: str,
    max_kbps: int,
    gop: int,
) -> av.VideoStream:
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height = w, h
    stream.pix_fmt = "yuv420p"
    stream.codec_context.gop_size = gop
    stream.codec_context.time_base = 1 / fps
    stream.codec_context.options = {
        "preset": preset,
        "crf": str(crf),
        "maxrate": f"{max_kbps}k",
        "bufsize": f"{max_kbps * 2}k",
        "profile": "main",
        # Scene cuts would add keyframes between segments; a fixed GOP keeps segments even.
        "sc_threshold": "0",
        "x264-params": f"keyint_min={gop}",
    }
    return stream


def _audio_stream(out: av.container.OutputContainer, kbps: int) -> av.AudioStream:
    stream = out.add_stream("aac", rate=AUDIO_RATE)
    stream.layout = "mono"
    stream.bit_rate = kbps * 1000
    return stream


def _black(w: int, h: int) -> av.VideoFrame:
    frame = av.VideoFrame(w, h, "yuv420p")
    frame.planes[0].update(bytes(frame.planes[0].buffer_size))
    grey = bytes([128]) * frame.planes[1].buffer_size
    frame.planes[1].update(grey)
    frame.planes[2].update(grey)
    return frame


class _Compositor:
    """libavfilter graph: [background][pip] overlay, split into program and low branches."""

    def __init__(self, s: ProgramSettings, pip: tuple[int, int, int, int] | None) -> None:
        self.graph = av.filter.Graph()
        tb = Fraction(1, s.fps)
        self.bg = self.graph.add_buffer(
            width=s.width, height=s.height, format="yuv420p", time_base=tb
        )
        node = self.bg
        self.pip = None
        if pip is not None:
            x, y, w, h = pip
            self.pip = self.graph.add_buffer(width=w, height=h, format="yuv420p", time_base=tb)
            overlay = self.graph.add("overlay", f"x={x}:y={y}:eof_action=endall")
            self.bg.link_to(overlay, 0, 0)
            self.pip.link_to(overlay, 0, 1)
            node = overlay
        split = self.graph.add("split", "2")
        node.link_to(split)
        scale = self.graph.add("scale", f"{s.low_width}:{s.low_height}:flags=area")
        self.program_sink = self.graph.add("buffersink")
        self.low_sink = self.graph.add("buffersink")
        split.link_to(self.program_sink, 0, 0)
        split.link_to(scale, 1, 0)
        scale.link_to(self.low_sink)
        self.graph.configure()

    def push(self, bg: av.VideoFrame | None, pip: av.VideoFrame | None) -> None:
        self.bg.push(bg)
        if self.pip is not None:
            self.pip.push(pip)

    @staticmethod
    def pull(sink: av.filter.context.FilterContext) -> list[av.VideoFrame]:
        frames = []
        while True:
            try:
                frames.append(sink.pull())
            except (BlockingIOError, av.error.EOFError):
                return frames


def build_program(
    rec: Recording,
    out_dir: Path,
    settings: ProgramSettings | None = None,
    progress: Callable[[float], None] | None = None,
) -> ProgramResult:
    s = settings or ProgramSettings()
    duration = rec.duration_s
    courseware = rec.video("courseware")
    teacher = rec.video("teacher_camera") or next(
        (t for t in rec.manifest.tracks if t.kind == "video" and t is not courseware), None
    )
    audio = rec.audio()
    calls = call_on_intervals(rec.timeline, duration)
    cursors: dict[str, _Cursor] = {}

    def cursor(track_id: str) -> _Cursor:
        if track_id not in cursors:
            t = rec.manifest.track(track_id)
            cursors[track_id] = _Cursor(rec.path(t), t.offset_s or 0.0)
        return cursors[track_id]

    point_tracks = {
        c: rec.video(f"point:{c}") for _, _, c in calls if rec.video(f"point:{c}") is not None
    }

    # Layout: where the camera goes on the canvas, and the background area.
    W, H = s.width, s.height
    if courseware is not None and (teacher is not None or point_tracks):
        if s.layout == "side":
            bg_box = (0, 0, W * 2 // 3 // 2 * 2, H)
            pip_box = (W * 2 // 3 // 2 * 2, H // 4, W - W * 2 // 3 // 2 * 2, H // 2)
        else:
            bg_box = (0, 0, W, H)
            pw = (W // 4) // 2 * 2
            ph = (pw * 9 // 16) // 2 * 2
            pip_box = (W - pw - 16, H - ph - 16, pw, ph)
    else:
        bg_box, pip_box = (0, 0, W, H), None
    comp = _Compositor(s, pip_box)

    out_dir.mkdir(parents=True, exist_ok=True)
    program_path, low_path = out_dir / "program.mp4", out_dir / "low.mp4"
    fps = Fraction(s.fps)
    prog = av.open(str(program_path), "w", options={"movflags": "+faststart"})
    low = av.open(str(low_path), "w", options={"movflags": "+faststart"})
    pv = _video_stream(prog, W, H, fps, s.crf, s.preset, s.max_kbps, gop=2 * s.fps)
    lfps = fps / s.low_every
    lv = _video_stream(
        low,
        s.low_width,
        s.low_height,
        lfps,
        s.crf + 4,
        s.preset,
        s.low_video_kbps,
        gop=max(1, int(4 * lfps)),
    )
    lv.codec_context.options = {**lv.codec_context.options, "profile": "baseline"}
    pa = la = None
    audio_frames: Iterator[tuple[float, av.AudioFrame]] | None = None
    if audio is not None:
        pa = _audio_stream(prog, s.audio_kbps)
        la = _audio_stream(low, s.low_audio_kbps)
        audio_frames = _Cursor._decode(rec.path(audio), audio.offset_s or 0.0, "audio")
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=AUDIO_RATE)
    audio_pending: tuple[float, av.AudioFrame] | None = None
    audio_next_pts = 0

    def feed_audio(until: float | None) -> None:
        nonlocal audio_pending, audio_next_pts
        if audio_frames is None or pa is None or la is None:
            return
        while True:
            item = audio_pending or next(audio_frames, None)
            audio_pending = None
            if item is None:
                break
            t, frame = item
            if until is not None and t > until:
                audio_pending = item
                return
            if t < 0:
                continue
            frame.pts = None
            for rf in resampler.resample(frame):
                # Audio goes on the lesson clock; a gap in the track stays a gap.
                start = max(round(t * AUDIO_RATE), audio_next_pts)
                rf.pts = start
                rf.time_base = Fraction(1, AUDIO_RATE)
                audio_next_pts = start + rf.samples
                t += rf.samples / AUDIO_RATE
                prog.mux(pa.encode(rf))
                low.mux(la.encode(rf))
        if until is None:
            prog.mux(pa.encode(None))
            low.mux(la.encode(None))

    sprite = SpriteBuilder(thumb_interval(duration))
    detector = SlideDetector()
    black_bg = _black(bg_box[2], bg_box[3])
    black_pip = _black(pip_box[2], pip_box[3]) if pip_box else None
    canvas_cache: dict[str, tuple[int, av.VideoFrame]] = {}
    # One scaler per purpose, reused frame after frame: `VideoFrame.reformat` builds a
    # new swscale context for every frame, which cost more than decoding the sources
    # (3.5 ms against 1.2 ms for a 720p picture; 40 % of packaging on hard content).
    scalers: dict[str, VideoReformatter] = collections.defaultdict(VideoReformatter)

    def fitted(key: str, cur: _Cursor, box: tuple[int, int, int, int]) -> av.VideoFrame | None:
        frame = cur.current
        if frame is None:
            return None
        cached = canvas_cache.get(key)
        if cached and cached[0] == cur.version:
            return cached[1]
        scaled = scalers[key].reformat(
            frame, width=box[2], height=box[3], format="yuv420p", interpolation="AREA"
        )
        canvas_cache[key] = (cur.version, scaled)
        return scaled

    def to_canvas(bg_frame: av.VideoFrame | None) -> av.VideoFrame:
        if bg_frame is None:
            bg_frame = black_bg
        if (bg_box[2], bg_box[3]) == (W, H):
            return bg_frame
        # Side-by-side: pad the courseware onto the full canvas.
        arr = np.zeros((H * 3 // 2, W), np.uint8)
        arr[:H, :] = 16
        arr[H:, :] = 128
        y = bg_frame.to_ndarray()
        bh, bw = bg_box[3], bg_box[2]
        top = (H - bh) // 2 // 2 * 2
        arr[top : top + bh, :bw] = y[:bh]
        # Chroma planes of yuv420p as laid out by to_ndarray: U then V, each (H/4) rows.
        u = y[bh : bh + bh // 4].reshape(bh // 2, bw // 2)
        v = y[bh + bh // 4 :].reshape(bh // 2, bw // 2)
        cu = arr[H : H + H // 4].reshape(H // 2, W // 2)
        cv = arr[H + H // 4 :].reshape(H // 2, W // 2)
        cu[top // 2 : top // 2 + bh // 2, : bw // 2] = u
        cv[top // 2 : top // 2 + bh // 2, : bw // 2] = v
        return av.VideoFrame.from_ndarray(arr, format="yuv420p")

    ticks = max(1, math.ceil(duration * s.fps))
    poster_tick = ticks // 3
    low_index = 0
    last_report = 0

    def encode_outputs() -> None:
        nonlocal low_index
        for frame in comp.pull(comp.program_sink):
            t = frame.pts / s.fps
            prog.mux(pv.encode(frame))
            if sprite.wants(t) or frame.pts == poster_tick:
                small = (
                    scalers["thumb"]
                    .reformat(
                        frame, width=THUMB_W, height=THUMB_H, format="bgr24", interpolation="AREA"
                    )
                    .to_ndarray()
                )
                if sprite.wants(t):
                    sprite.add(t, small)
                if frame.pts == poster_tick:
                    sprite.set_poster(
                        frame.reformat(
                            width=320, height=180, format="bgr24", interpolation="AREA"
                        ).to_ndarray()
                    )
        for frame in comp.pull(comp.low_sink):
            if frame.pts % s.low_every == 0:
                frame.pts = low_index
                frame.time_base = 1 / lfps
                low_index += 1
                low.mux(lv.encode(frame))

    for tick in range(ticks):
        t = tick / s.fps
        feed_audio(t + 0.5)
        bg_frame = None
        if courseware is not None:
            cw = cursor(courseware.id)
            before = cw.version
            cw.at(t)
            if cw.current is not None and cw.version != before:
                gray = (
                    scalers["slides"]
                    .reformat(cw.current, width=64, height=36, format="gray")
                    .to_ndarray()
                )
                detector.feed(cw.current_t, gray)
        main_id = teacher.id if teacher is not None else None
        for start, end, classroom in calls:
            if start <= t < end and classroom in point_tracks:
                main_id = point_tracks[classroom].id  # type: ignore[union-attr]
        if pip_box is not None and courseware is not None:
            bg_frame = fitted("bg", cursor(courseware.id), bg_box)
            pip_frame = None
            if main_id is not None:
                cur = cursor(main_id)
                cur.at(t)
                pip_frame = fitted(main_id, cur, pip_box)
            # Keep every camera cursor moving so switching back does not replay the past.
            for other in ([teacher.id] if teacher else []) + [
                p.id for p in point_tracks.values() if p is not None
            ]:
                if other != main_id:
                    cursor(other).at(t)
            bg = to_canvas(bg_frame)
            pip = pip_frame if pip_frame is not None else black_pip
        else:
            only = courseware.id if courseware is not None else main_id
            assert only is not None
            cur = cursor(only)
            cur.at(t)
            bg = fitted("bg", cur, bg_box) or black_bg
            pip = None
        bg.pts = tick
        bg.time_base = Fraction(1, s.fps)
        if pip is not None:
            pip.pts = tick
            pip.time_base = bg.time_base
        comp.push(bg, pip)
        encode_outputs()
        if progress and tick - last_report >= s.fps * 10:
            last_report = tick
            progress(tick / ticks)
    comp.push(None, None)
    encode_outputs()
    prog.mux(pv.encode(None))
    low.mux(lv.encode(None))
    feed_audio(None)
    prog.close()
    low.close()
    if progress:
        progress(1.0)
    return ProgramResult(
        program_mp4=program_path,
        low_mp4=low_path,
        slide_changes=detector.changes,
        sprite=sprite.write(out_dir),
        duration_s=duration,
        call_ons=calls,
    )
