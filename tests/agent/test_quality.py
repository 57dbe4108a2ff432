"""The teaching point's quality meter."""

from __future__ import annotations

import json

import av
import numpy as np

from classroom_agent import pixelclock
from classroom_agent.nosignal import silence
from classroom_agent.quality import TrackQuality
from classroom_agent.testcard import SyntheticAudio, SyntheticVideo


def test_freezes_fps_and_latency_from_a_known_timeline() -> None:
    src = SyntheticVideo(320, 180, 30, "Teacher camera", seed=1)
    q = TrackQuality("video", "teacher_camera", window_s=0.5, clock=lambda: 100.0)
    t, wall = 100.0, 1_000_000
    # 60 frames at 30 fps, 150 ms glass-to-glass; then a 1 s stall; then 30 more frames.
    for i in range(90):
        if i == 60:
            t += 1.0
            wall += 1000
        frame = src.render(i, wall - 150)
        q.add_frame(frame, now=t + 0.25, now_ms=wall)
        t += 1 / 30
        wall += 33
    snap = q.snapshot(now=t + 0.25)
    assert snap["frames"] == 90
    assert snap["first_frame_ms"] == 250
    assert snap["freezes"] == 1
    assert 1000 <= snap["freeze_total_ms"] <= 1040
    assert abs(snap["fps"] - 30) < 1  # the last half second, after the stall
    assert snap["latency_p50_ms"] == 150 and snap["latency_p95_ms"] == 150
    assert (snap["width"], snap["height"]) == (320, 180)
    assert not snap["frozen_now"]
    assert q.snapshot(now=t + 2)["frozen_now"]
    json.dumps(snap)


def test_slow_courseware_is_not_a_freeze() -> None:
    src = SyntheticVideo(320, 180, 5, "Courseware", seed=2)
    q = TrackQuality("video", "courseware")
    for i in range(20):
        q.add_frame(src.render(i, pixelclock.now_ms()), now=i * 0.2)
    assert q.snapshot(now=4.0)["freezes"] == 0


def test_picture_without_clock_counts_a_miss() -> None:
    q = TrackQuality("video")
    grey = np.full((180, 320, 3), 128, np.uint8)
    q.add_frame(
        av.VideoFrame.from_ndarray(grey, format="rgb24").reformat(format="yuv420p"), now=0.0
    )
    snap = q.snapshot(now=0.0)
    assert snap["clock_misses"] == 1 and snap["latency_p50_ms"] is None


def test_audio_level() -> None:
    q = TrackQuality("audio", "classroom_mic")
    audio = SyntheticAudio()
    audio.open()
    q.add_frame(audio.render(0), now=0.0)
    tone = q.snapshot()["level_dbfs"]
    q.add_frame(silence(), now=0.02)
    snap = q.snapshot()
    assert snap["frames"] == 2 and snap["samples"] == 1920
    # A 0.1-amplitude sine is about -23 dBFS (or -9 during the beep); silence is the floor.
    assert -26 < tone < -5
    assert snap["level_dbfs"] == -120.0
