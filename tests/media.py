"""Small synthetic media tracks for tests: aiortc encodes them in the test process."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Awaitable, Callable

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import VideoStreamTrack

from classroom_agent.client import LessonClient


class PatternTrack(VideoStreamTrack):
    """A moving gradient of a given size, so decoded frames show which layer arrived."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height = width, height
        self._n = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        self._n += 1
        img = np.zeros((self.height, self.width, 3), np.uint8)
        img[:, :, 0] = (np.arange(self.width) + self._n * 4) % 256
        img[:, :, 1] = 128
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class ToneTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, freq: float = 440.0) -> None:
        super().__init__()
        self._freq = freq
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        samples = 960
        if self._start is None:
            self._start = time.time()
        wait = self._start + self._pts / 48000 - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(samples) + self._pts) / 48000
        pcm = (np.sin(2 * np.pi * self._freq * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, 48000)
        self._pts += samples
        return frame


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0, what: str = ""
) -> None:
    """Poll a condition until it holds; fail with `what` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.05)


async def first_frames(client: LessonClient, sources: set[str], timeout: float = 15.0) -> dict:
    """Wait until `client` receives each source, then decode one frame from each."""
    await wait_for(
        lambda: sources <= {r.source for r in client.active_tracks() if r.track is not None},
        timeout,
        f"tracks {sources}",
    )
    frames = {}
    for remote in client.active_tracks():
        if remote.source in sources:
            assert remote.track is not None
            frames[remote.source] = await asyncio.wait_for(remote.track.recv(), timeout)
    return frames
