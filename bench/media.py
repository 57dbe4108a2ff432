"""Pre-encoded media for benchmarks: encoded once, cached, replayed without encoding."""

from __future__ import annotations

import asyncio
import fractions
import time
from pathlib import Path

import av
import numpy as np
from aiortc import MediaStreamTrack

OUT = Path(__file__).resolve().parent / "out"


def encoded_h264(
    seconds: int = 10, width: int = 1280, height: int = 720, fps: int = 30, kbps: int = 1500
) -> Path:
    """A moving 720p test pattern in H.264 (Annex B in MPEG-TS), made once and cached."""
    path = OUT / f"pattern-{width}x{height}-{fps}fps-{kbps}k-{seconds}s.ts"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with av.open(str(tmp), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = kbps * 1000
        stream.options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "profile": "baseline",
            "x264-params": f"keyint={fps * 2}:min-keyint={fps * 2}:scenecut=0:repeat-headers=1"
            f":vbv-maxrate={kbps}:vbv-bufsize={kbps}:nal-hrd=cbr",
        }
        rng = np.random.default_rng(7)
        noise = rng.integers(0, 255, (height, width), dtype=np.uint8)
        xs = np.arange(width, dtype=np.uint16)
        for i in range(seconds * fps):
            y = ((xs[None, :] + i * 6) % 256).astype(np.uint8).repeat(height, 0)
            y = ((y.astype(np.uint16) + np.roll(noise, i * 3, axis=1)) // 2).astype(np.uint8)
            frame = av.VideoFrame(width, height, "yuv420p")
            frame.planes[0].update(y.tobytes())
            frame.planes[1].update(np.full((height // 2) * (width // 2), 100, np.uint8).tobytes())
            frame.planes[2].update(np.full((height // 2) * (width // 2), 150, np.uint8).tobytes())
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


def encoded_opus(seconds: int = 10) -> Path:
    path = OUT / f"tone-opus-{seconds}s.mkv"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with av.open(str(tmp), "w", format="matroska") as out:
        stream = out.add_stream("libopus", rate=48000)
        stream.bit_rate = 32000
        stream.layout = "stereo"
        for i in range(seconds * 50):
            t = (np.arange(960) + i * 960) / 48000
            pcm = (np.sin(2 * np.pi * 440 * t) * 6000).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(
                np.repeat(pcm[None, :], 2, 0).reshape(1, -1), format="s16", layout="stereo"
            )
            frame.sample_rate, frame.pts = 48000, i * 960
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


class PacketLoopTrack(MediaStreamTrack):
    """Replays a file's encoded packets in real time, looping; aiortc only packetizes them."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__()
        self.kind = kind
        with av.open(str(path)) as container:
            stream = container.streams[0]
            rate = 90000 if kind == "video" else 48000
            tb = stream.time_base
            items = []
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                items.append((bytes(packet), int(packet.pts * tb * rate)))
        first = items[0][1]
        self._items = [(d, p - first) for d, p in items]
        step = self._items[1][1] - self._items[0][1]
        self._loop_len = self._items[-1][1] + step
        self._rate = rate
        self._time_base = fractions.Fraction(1, rate)
        self._i = 0
        self._loops = 0
        self._start: float | None = None
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        # The file has a keyframe every 2 s; a real encoder would make one now.
        self.keyframe_requests += 1

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.time()
        data, pts = self._items[self._i]
        pts += self._loops * self._loop_len
        self._i += 1
        if self._i == len(self._items):
            self._i, self._loops = 0, self._loops + 1
        wait = self._start + pts / self._rate - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = self._time_base
        return packet
