"""bench/rural.py's point-agent figures survive a re-subscribed track (a new meter)."""

from __future__ import annotations

from typing import Any

from bench.rural import summarise_agent


def report(t: float, samples: int, frames: int) -> dict[str, Any]:
    video = {"source": "teacher_camera", "kind": "video", "frames": frames, "freezes": 0}
    video |= {"freeze_total_ms": 0, "width": 320, "height": 180, "paused": False}
    audio = {"source": "classroom_mic", "kind": "audio", "samples": samples}
    return {"time": t, "connected": True, "tracks": [audio, video]}


def test_counters_restarting_at_zero_count_what_the_new_meter_got() -> None:
    # Full audio and 10 fps for 4 s; the tracks are re-subscribed after 2 s.
    reports = [
        report(0, 480_000, 100),
        report(1, 528_000, 110),
        report(2, 576_000, 120),
        report(3, 48_000, 10),
        report(4, 96_000, 20),
    ]
    sources = summarise_agent(reports, start=0)["sources"]
    assert sources["classroom_mic"]["missing_share"] == 0.0
    assert sources["teacher_camera"]["fps_mean"] == 10.0
    assert sources["teacher_camera"]["no_new_frame_share"] == 0.0


def test_each_seconds_missing_audio_is_placed() -> None:
    # Full audio, then half a second missing, then full again.
    reports = [
        report(0, 0, 0),
        report(1, 48_000, 10),
        report(2, 72_000, 20),
        report(3, 120_000, 30),
    ]
    audio = summarise_agent(reports, start=0)["sources"]["classroom_mic"]
    assert audio["missing_per_second"] == [0.0, 0.5, 0.0]
    assert audio["missing_share"] == round(0.5 / 3, 4)


def test_a_resumed_picture_waiting_for_its_frame_is_labelled_not_frozen() -> None:
    reports = [report(0, 0, 0), report(1, 48_000, 10), report(2, 96_000, 10)]
    reports[2]["tracks"][1]["resuming"] = True
    teacher = summarise_agent(reports, start=0)["sources"]["teacher_camera"]
    assert teacher["no_new_frame_share"] == 0.5 and teacher["frozen_live_share"] == 0.0
    del reports[2]["tracks"][1]["resuming"]
    teacher = summarise_agent(reports, start=0)["sources"]["teacher_camera"]
    assert teacher["frozen_live_share"] == 0.5


def test_the_report_written_as_the_agent_stops_is_outside_the_measured_minute() -> None:
    # Full audio for 3 s; the bench ends its window at 3.0 and then stops the agent, whose
    # last report has no tracks. Counted, it made a second of "missing" audio.
    reports = [report(t, 48_000 * t, 10 * t) for t in range(4)]
    reports.append({"time": 4.0, "connected": False, "tracks": []})
    sources = summarise_agent(reports, start=0, end=3.0)["sources"]
    assert sources["classroom_mic"]["missing_share"] == 0.0
    assert sources["teacher_camera"]["fps_mean"] == 10.0
