"""Receive-side quality meter for a teaching point's subscribed tracks.

Fed with decoded frames, it reports what a viewer notices: frame rate, freezes,
glass-to-glass latency (from the pixel clock the master agent stamps at capture; the
two machines' clocks must agree, e.g. via NTP), and how long the picture took to
appear; plus packet loss from aiortc's receiver statistics.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc import RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from . import pixelclock

MIN_FREEZE_S = 0.2


class TrackQuality:
    """Rolling quality figures of one received track; ``snapshot()`` is JSON-ready."""

    def __init__(
        self,
        kind: str = "video",
        name: str = "",
        window_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.name = name
        self.window_s = window_s
        self._clock = clock
        self.started = clock()
        self.first_frame_s: float | None = None
        self.frames = 0
        self._times: collections.deque[float] = collections.deque()
        self._intervals: collections.deque[float] = collections.deque(maxlen=30)
        self._last: float | None = None
        self.freezes = 0
        self.freeze_total_s = 0.0
        self.longest_freeze_s = 0.0
        self._latencies: collections.deque[int] = collections.deque(maxlen=300)
        self.clock_misses = 0
        self.size: tuple[int, int] | None = None
        self.level_dbfs: float | None = None
        self.samples = 0
        self.packets_received: int | None = None
        self.packets_lost: int | None = None
        self.jitter_s: float | None = None

    def add_frame(
        self,
        frame: av.VideoFrame | av.AudioFrame,
        now: float | None = None,
        now_ms: int | None = None,
    ) -> None:
        """Account one decoded frame; ``now``/``now_ms`` default to the current clocks."""
        t = self._clock() if now is None else now
        if self.first_frame_s is None:
            self.first_frame_s = t - self.started
        if self._last is not None:
            gap = t - self._last
            typical = float(np.median(self._intervals)) if self._intervals else gap
            # A gap is a freeze when it is clearly longer than the normal cadence; a
            # courseware track at 5 fps has 200 ms intervals that are not freezes.
            if len(self._intervals) >= 3 and gap > max(3 * typical, MIN_FREEZE_S):
                self.freezes += 1
                self.freeze_total_s += gap
                self.longest_freeze_s = max(self.longest_freeze_s, gap)
            else:
                self._intervals.append(gap)
        self._last = t
        self.frames += 1
        self._times.append(t)
        while self._times and self._times[0] < t - self.window_s:
            self._times.popleft()
        if isinstance(frame, av.VideoFrame):
            self.size = (frame.width, frame.height)
            clock = pixelclock.read_frame(frame)
            if clock is None:
                self.clock_misses += 1
            else:
                self._latencies.append(pixelclock.age_ms(clock, now_ms))
        else:
            pcm = frame.to_ndarray().astype(np.float64)
            if frame.format.name.startswith("s16"):
                pcm /= 32768.0
            rms = math.sqrt(float(np.mean(pcm * pcm))) if pcm.size else 0.0
            self.level_dbfs = round(20 * math.log10(rms), 1) if rms > 1e-6 else -120.0
            self.samples += frame.samples

    def fps(self, now: float | None = None) -> float:
        """Frames per second over the last ``window_s``."""
        t = self._clock() if now is None else now
        recent = [x for x in self._times if x > t - self.window_s]
        if t - self.started >= self.window_s:
            # A full window: frames shown in it, so a stall pulls the figure down.
            return len(recent) / self.window_s
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])

    def latency_ms(self, percentile: float) -> float | None:
        if not self._latencies:
            return None
        return float(np.percentile(np.fromiter(self._latencies, float), percentile))

    def update_receiver_stats(self, stats: dict[str, Any]) -> None:
        """Take packet counters from :func:`receiver_loss`."""
        self.packets_received = stats.get("packets_received")
        self.packets_lost = stats.get("packets_lost")
        self.jitter_s = stats.get("jitter_s")

    async def poll_receiver(self, receiver: RTCRtpReceiver) -> None:
        self.update_receiver_stats(await receiver_loss(receiver))

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        t = self._clock() if now is None else now
        loss = None
        if self.packets_received is not None and self.packets_lost is not None:
            expected = self.packets_received + self.packets_lost
            loss = round(self.packets_lost / expected, 4) if expected else 0.0
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "frames": self.frames,
            "first_frame_ms": None
            if self.first_frame_s is None
            else round(self.first_frame_s * 1000),
            "packets_received": self.packets_received,
            "packets_lost": self.packets_lost,
            "loss_ratio": loss,
            "jitter_ms": None if self.jitter_s is None else round(self.jitter_s * 1000, 1),
        }
        if self.kind == "video":
            p50, p95 = self.latency_ms(50), self.latency_ms(95)
            stalled = self._last is not None and t - self._last > max(
                3 * (float(np.median(self._intervals)) if self._intervals else 0), MIN_FREEZE_S
            )
            out.update(
                {
                    "fps": round(self.fps(t), 1),
                    "width": self.size[0] if self.size else None,
                    "height": self.size[1] if self.size else None,
                    "freezes": self.freezes,
                    "freeze_total_ms": round(self.freeze_total_s * 1000),
                    "longest_freeze_ms": round(self.longest_freeze_s * 1000),
                    "frozen_now": stalled,
                    "latency_p50_ms": None if p50 is None else round(p50),
                    "latency_p95_ms": None if p95 is None else round(p95),
                    "clock_misses": self.clock_misses,
                }
            )
        else:
            out.update({"samples": self.samples, "level_dbfs": self.level_dbfs})
        return out


async def receiver_loss(receiver: RTCRtpReceiver) -> dict[str, Any]:
    """Packets received/lost and jitter of a receiver, from its inbound-rtp stats."""
    report = await receiver.getStats()
    received = lost = 0
    jitter = None
    found = False
    for stats in report.values():
        if getattr(stats, "type", None) == "inbound-rtp":
            found = True
            received += stats.packetsReceived or 0
            lost += max(0, stats.packetsLost or 0)
            jitter = stats.jitter if jitter is None else max(jitter, stats.jitter)
    if not found:
        return {"packets_received": None, "packets_lost": None, "jitter_s": None}
    # aiortc reports jitter in RTP clock units; convert with the media clock rate.
    rate = 90000 if receiver.track and receiver.track.kind == "video" else 48000
    return {
        "packets_received": received,
        "packets_lost": lost,
        "jitter_s": None if jitter is None else jitter / rate,
    }


async def meter_track(
    track: MediaStreamTrack,
    quality: TrackQuality,
    on_frame: Callable[[av.VideoFrame | av.AudioFrame], None] | None = None,
) -> None:
    """Consume a remote track until it ends, feeding ``quality`` (and ``on_frame``)."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        quality.add_frame(frame)
        if on_frame is not None:
            on_frame(frame)
