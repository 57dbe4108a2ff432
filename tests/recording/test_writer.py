"""The agent's safety copy: layout, clock alignment, surviving a kill, disk bounds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import av
import pytest

from recording.manifest import LessonMeta, load_manifest
from recording.synthetic import SyntheticLesson, make_recording
from recording.timeline import read_timeline
from recording.writer import LessonRecorder, enforce_retention

REPO = Path(__file__).resolve().parents[2]


def _packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as c:
        return [p for p in c.demux(c.streams[0]) if p.pts is not None]


def test_every_published_packet_is_in_its_track_file(master_recording: Path) -> None:
    manifest = load_manifest(master_recording)
    assert {t.source for t in manifest.tracks} == {
        "teacher_camera",
        "courseware",
        "point:p-xiaohe",
        "microphone",
    }
    for track in manifest.tracks:
        assert track.closed and track.origin == "agent"
        packets = _packets(master_recording / track.file)
        assert len(packets) == track.packets
    camera = manifest.track("teacher_camera")
    assert camera.codec == "h264" and (camera.width, camera.height) == (320, 180)
    # 12 s at 15 fps, nothing dropped.
    assert camera.packets == 180


def test_tracks_from_different_start_times_line_up_on_the_lesson_clock(
    master_recording: Path,
) -> None:
    manifest = load_manifest(master_recording)
    spec = SyntheticLesson()
    for track in manifest.tracks:
        want = spec.offsets[track.source]
        # Opus carries encoder priming before pts 0: a few ms, well inside 40 ms.
        assert abs((track.offset_s or 0.0) - want) < 0.04, track.id


def test_timeline_holds_lesson_events_with_media_times(master_recording: Path) -> None:
    events = read_timeline(master_recording / "timeline.jsonl")
    kinds = [e.kind for e in events]
    assert kinds.count("call_on") == 1 and "chat" in kinds and "join" in kinds
    call = next(e for e in events if e.kind == "call_on")
    assert call.t == 5.0 and call.get("classroom") == "p-xiaohe"
    assert events == sorted(events, key=lambda e: e.t)


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from recording.synthetic import SyntheticLesson, _encode_audio, _encode_video, \\
        _video_encoder, _camera_frame
    from recording.manifest import LessonMeta
    from recording.writer import LessonRecorder
    codec, root = sys.argv[1], Path(sys.argv[2])
    rec = LessonRecorder(root, LessonMeta("kill-test", "s", "math", "7", "t"))
    fps = 15
    if codec == "opus":
        w = rec.add_track("microphone", "audio", "opus")
        packets = _encode_audio(20, 1)
    else:
        w = rec.add_track("teacher_camera", "video", codec, width=160, height=90)
        enc = _video_encoder(codec, (160, 90), fps, 30)
        packets = _encode_video(enc, ((i * 6000, _camera_frame(i, fps, (160, 90), 40, "k"))
                                      for i in range(20 * fps)))
    reported = 0
    for p in packets:
        w.write(p)
        t = float(p.pts * p.time_base)
        # Paced like a live encoder (4x real time keeps the test short).
        time.sleep(float(p.duration * p.time_base) / 4 if p.duration else 0.01)
        if int(t) > reported:
            reported = int(t)
            print(reported, flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("codec", ["h264", "vp8", "opus"])
def test_track_file_survives_sigkill_up_to_its_last_two_seconds(codec: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, codec, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    reached = 0
    deadline = time.monotonic() + 60
    while reached < 6 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        reached = int(line)
    # The writer thread has had everything up to `reached` handed to it.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached >= 6, "the writer subprocess did not get going"
    rec_dir = tmp_path / "kill-test"
    manifest = json.loads((rec_dir / "manifest.json").read_text())
    track = manifest["tracks"][0]
    assert track["closed"] is False and track["offset_s"] is not None
    packets = _packets(rec_dir / track["file"])
    last = max(float(p.pts * p.time_base) for p in packets)
    first = min(float(p.pts * p.time_base) for p in packets)
    assert last - first >= reached - 2.0
    # And it decodes: a player shows pictures / plays sound up to there.
    with av.open(str(rec_dir / track["file"])) as c:
        frames = sum(1 for _ in c.decode(c.streams[0]))
    assert frames >= len(packets) - 2


def test_disk_budget_stops_recording_cleanly_and_says_why(tmp_path: Path) -> None:
    stops: list[str] = []
    spec = SyntheticLesson(seconds=6, call_on=None)
    from recording.synthetic import _camera_frame, _encode_video, _video_encoder

    enc = _video_encoder("h264", (320, 180), 15, 30)
    packets = _encode_video(
        enc, ((i * 6000, _camera_frame(i, 15, (320, 180), 20, "x")) for i in range(90))
    )
    rec = LessonRecorder(tmp_path, spec.meta, max_bytes=60_000, on_stop=stops.append)
    w = rec.add_track("teacher_camera", "video", "h264", width=320, height=180)
    accepted = 0
    deadline = time.monotonic() + 30
    shift = 0
    while not rec.stopped and time.monotonic() < deadline:
        for p in packets:
            p.pts += shift
            p.dts = p.pts
            accepted += w.write(p)
        shift = 90 * 6000
    assert rec.stopped and "disk budget" in rec.stopped
    assert stops == [rec.stopped]
    assert w.write(packets[0]) is False
    rec.close()
    manifest = load_manifest(rec.directory)
    assert manifest.stopped == rec.stopped
    assert any(
        e.kind == "recording_stopped" for e in read_timeline(rec.directory / "timeline.jsonl")
    )
    # What was recorded before the stop is intact and bounded.
    track = manifest.tracks[0]
    assert track.closed and track.bytes is not None and track.bytes < 60_000 + 300_000
    assert len(_packets(rec.directory / track.file)) == track.packets > 0


def test_retention_deletes_oldest_uploaded_recordings_only(tmp_path: Path) -> None:
    dirs = []
    for i, lesson in enumerate(["old-uploaded", "old-not-uploaded", "new-uploaded"]):
        spec = SyntheticLesson(seconds=3, call_on=None, started_at=1_750_000_000 + i * 3600)
        spec.meta = LessonMeta(lesson, "s", "math", "7", "t", points={})
        dirs.append(make_recording(tmp_path, spec))
    (dirs[0] / ".uploaded").write_text("{}")
    (dirs[2] / ".uploaded").write_text("{}")
    deleted = enforce_retention(tmp_path, budget_bytes=1)
    # Everything uploaded goes, oldest first; the one never uploaded stays.
    assert deleted == [dirs[0], dirs[2]]
    assert dirs[1].exists()
