"""Packaging a recording into a replay: what a student gets to watch."""

from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path

import av
import cv2
import numpy as np

from recording.package import PackageResult, build_replay
from recording.synthetic import SyntheticLesson
from tongke.cli import main


def _decode_time_s(init: bytes, segment: bytes) -> float:
    """The fragment's baseMediaDecodeTime (tfdt) in seconds: where MSE places it."""
    i = init.find(b"mdhd")
    at = i + 24 if init[i + 4] == 1 else i + 16  # after version, flags and two times
    timescale = struct.unpack(">I", init[at : at + 4])[0]
    j = segment.find(b"tfdt")
    if segment[j + 4] == 1:
        return struct.unpack(">Q", segment[j + 8 : j + 16])[0] / timescale
    return struct.unpack(">I", segment[j + 8 : j + 12])[0] / timescale


def _segments(view_dir: Path) -> list[Path]:
    text = (view_dir / "index.m3u8").read_text()
    return [view_dir / name for name in re.findall(r"^(seg\d+\.m4s)$", text, re.M)]


def test_each_view_is_hls_cut_on_keyframes_and_starts_at_its_lesson_time(
    packaged: PackageResult,
) -> None:
    entry = json.loads((packaged.directory / "replay.json").read_text())
    views = {v["id"]: v for v in entry["views"]}
    assert set(views) == {"teacher_camera", "courseware", "point-p-xiaohe", "microphone"}
    offsets = SyntheticLesson().offsets
    for view in views.values():
        d = packaged.directory / Path(view["playlist"]).parent
        init = (d / "init.mp4").read_bytes()
        segs = _segments(d)
        assert len(segs) == view["segments"] >= 3
        for seg in segs:
            with av.open(io.BytesIO(init + seg.read_bytes())) as c:
                first = next(p for p in c.demux(c.streams[0]) if p.pts is not None)
                if view["kind"] == "video":
                    assert first.is_keyframe, f"{seg} does not start on a keyframe"
                if seg == segs[0]:
                    start = float(first.pts * first.time_base)
                    assert abs(start - offsets[view["source"]]) < 0.04, view["id"]
                    # Not only an edit list: the fragment's own decode time says it.
                    tfdt = _decode_time_s(init, seg.read_bytes())
                    assert abs(tfdt - offsets[view["source"]]) < 0.04, (view["id"], tfdt)


def test_the_program_playlist_starts_picture_and_sound_together(
    packaged: PackageResult,
) -> None:
    # Its encoder uses B-frames: the first picture is decoded before it is shown.
    d = packaged.directory / "program"
    data = (d / "init.mp4").read_bytes() + _segments(d)[0].read_bytes()
    first: dict[str, float] = {}
    with av.open(io.BytesIO(data)) as c:
        for p in c.demux():
            if p.pts is not None:
                first.setdefault(p.stream.type, float(p.pts * p.time_base))
    assert abs(first["video"] - first["audio"]) < 0.02, first


def test_program_shows_courseware_with_the_called_on_point_during_a_call_on(
    packaged: PackageResult,
) -> None:
    pip_colour = {}
    with av.open(str(packaged.directory / "program.mp4")) as c:
        assert [s.codec_context.name for s in c.streams] == ["h264", "aac"]
        assert abs(c.duration / 1e6 - 12) < 0.5
        for frame in c.decode(video=0):
            t = float(frame.pts * frame.time_base)
            for want in (2.0, 6.5, 10.0):
                if abs(t - want) < 0.034:
                    img = frame.to_ndarray(format="bgr24")
                    # The camera sits bottom right; its blue channel tells who it is
                    # (teacher hue 30, teaching point hue 110).
                    pip_colour[want] = int(np.median(img[440:500, 740:880, 0]))
                    slide = img[10:40, 300:900]
    assert abs(pip_colour[2.0] - 30) < 15
    assert abs(pip_colour[6.5] - 110) < 15, "the called-on point is not on screen"
    assert abs(pip_colour[10.0] - 30) < 15, "the program did not switch back"
    assert slide.mean() < 200, "no courseware title bar in the background"


def test_low_rendition_fits_300_kbits_and_audio_only_has_no_picture(
    packaged: PackageResult,
) -> None:
    entry = json.loads((packaged.directory / "replay.json").read_text())
    low = packaged.directory / "low"
    size = sum(p.stat().st_size for p in low.iterdir() if p.suffix in (".m4s", ".mp4"))
    assert size * 8 / entry["low"]["duration_s"] <= 300_000
    assert "mp4a" in entry["low"]["codecs"] and "avc1" in entry["low"]["codecs"]
    assert entry["audio"]["codecs"] == "mp4a.40.2"
    audio = packaged.directory / "audio"
    with av.open(io.BytesIO((audio / "init.mp4").read_bytes())) as c:
        assert [s.type for s in c.streams] == ["audio"]


def test_chapters_come_from_timeline_and_detected_slide_changes(
    packaged: PackageResult,
) -> None:
    entry = json.loads((packaged.directory / "replay.json").read_text())
    chapters = entry["chapters"]
    assert chapters[0] == {"t": 0.0, "title": "Start", "kind": "start"}
    calls = [c for c in chapters if c["kind"] == "call_on"]
    assert calls == [{"t": 5.0, "title": "Question: 小河教学点", "kind": "call_on"}]
    # The slide change at 8.2 s was never announced in the timeline; OpenCV found it.
    detected = [c for c in chapters if c["kind"] == "slide" and abs(c["t"] - 8.2) < 0.6]
    assert detected, chapters


def test_thumbnail_sprite_and_poster_are_pictures(packaged: PackageResult) -> None:
    entry = json.loads((packaged.directory / "replay.json").read_text())
    thumbs = entry["thumbnails"]
    sprite = cv2.imread(str(packaged.directory / thumbs["sprite"]))
    assert sprite is not None
    assert sprite.shape[1] == thumbs["columns"] * thumbs["width"]
    assert thumbs["count"] >= 2
    poster = cv2.imread(str(packaged.directory / entry["poster"]))
    assert poster is not None and poster.shape[:2] == (180, 320) and poster.std() > 10


def test_packaging_again_keeps_exactly_one_replay(master_recording: Path, tmp_path: Path) -> None:
    first = build_replay(master_recording, tmp_path)
    again = build_replay(master_recording, tmp_path)
    assert again.reused and again.directory == first.directory
    assert [p.name for p in tmp_path.iterdir()] == [first.directory.name]


def test_cli_package_shows_progress_and_builds_the_replay(
    master_recording: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    # Only this package's commands: the others live on other branches until merged.
    monkeypatch.setattr("tongke.cli.COMMAND_MODULES", ("recording.cli",))
    out = tmp_path / "replays"
    assert main(["replay", "package", str(master_recording), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "views" in captured.err and "program" in captured.err and "100%" in captured.err
    assert (out / master_recording.name / "replay.json").exists()
    assert main(["replay", "catalog", "--out", str(out)]) == 0
    assert "1 replay(s)" in capsys.readouterr().out


def test_vp8_recording_packages_with_cameras_in_the_program(tmp_path: Path) -> None:
    from recording.synthetic import make_recording

    rec = make_recording(
        tmp_path / "rec", SyntheticLesson(seconds=6, video_codec="vp8", call_on=None)
    )
    result = build_replay(rec, tmp_path / "replays")
    entry = json.loads((result.directory / "replay.json").read_text())
    assert [v["id"] for v in entry["views"]] == ["microphone"]
    assert {s["id"] for s in entry["views_skipped"]} == {
        "teacher_camera",
        "courseware",
        "point-p-xiaohe",
    }
    with av.open(str(result.directory / "program.mp4")) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(frames) >= 80 and frames[45][10:40, 300:900].mean() < 200
