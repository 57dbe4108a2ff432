"""Turn a recording directory into a replay directory.

    replays/<lesson>/
      replay.json                 the catalog entry and everything the player needs
      views/<track>/index.m3u8    one fMP4 HLS per recorded track (codec copy)
      program/index.m3u8          composed program (H.264 + AAC), also program.mp4
      low/index.m3u8              low-bandwidth rendition (<= 300 kbit/s), also low.mp4
      audio/index.m3u8            audio only
      sprite.jpg poster.jpg       thumbnails

The replay is built in a hidden work directory next to its final place and renamed into
place only when complete: a failed or killed job leaves any earlier replay untouched, and
two workers racing on one lesson publish one replay.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from recording.chapters import build_chapters, chapters_json
from recording.errors import RecordingError
from recording.hls import remux_to_hls
from recording.manifest import MANIFEST_NAME, check_id, write_json_atomic
from recording.program import ProgramSettings, build_program
from recording.source import Recording, open_recording

log = logging.getLogger(__name__)

REPLAY_JSON = "replay.json"
HLS_CODECS = ("h264", "opus")
WORK_PREFIX = ".building-"
# Progress: (stage, fraction of that stage). Stages: views, program, renditions, done.
Progress = Callable[[str, float], None]


@dataclass
class PackageResult:
    directory: Path
    timings: dict[str, float] = field(default_factory=dict)
    reused: bool = False


def fingerprint(recording_dir: Path) -> str:
    """Identifies the recording's content: manifest plus track sizes."""
    h = hashlib.sha256((recording_dir / MANIFEST_NAME).read_bytes())
    for p in sorted((recording_dir / "tracks").glob("*")):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:32]


def _label(rec: Recording, source: str) -> str:
    if source == "teacher_camera":
        return "Teacher"
    if source == "courseware":
        return "Courseware"
    if source == "microphone":
        return "Classroom audio"
    if source.startswith("point:"):
        cid = source.split(":", 1)[1]
        return rec.manifest.meta.points.get(cid, cid)
    cid, _, own = source.partition(":")
    if own and cid in rec.manifest.meta.points:
        # Another track of a teaching point (its microphone): "小河教学点 · Point mic".
        return f"{rec.manifest.meta.points[cid]} · {_label(rec, own)}"
    return source.replace("_", " ").capitalize()


def build_replay(
    recording_dir: Path | str,
    replays_root: Path | str,
    *,
    settings: ProgramSettings | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> PackageResult:
    recording_dir, replays_root = Path(recording_dir), Path(replays_root)
    report: Progress = progress or (lambda stage, f: None)
    t0 = time.monotonic()
    rec = open_recording(recording_dir)  # every input check happens before any output
    lesson = check_id(rec.manifest.meta.lesson, "lesson")
    final = replays_root / lesson
    fp = fingerprint(recording_dir)
    existing = _read_entry(final)
    if existing and existing.get("fingerprint") == fp and not force:
        report("done", 1.0)
        return PackageResult(final, reused=True)

    replays_root.mkdir(parents=True, exist_ok=True)
    # The owner in the name lets a restarted worker on this machine remove what its
    # killed predecessor left (`clean_stale_work`).
    work = replays_root / f"{WORK_PREFIX}{lesson}@{_OWNER}@{uuid.uuid4().hex[:8]}"
    work.mkdir()
    timings: dict[str, float] = {}
    try:
        views = []
        skipped = []
        media = list(rec.manifest.tracks)
        for i, track in enumerate(media):
            if track.codec not in HLS_CODECS:
                # fMP4 cannot carry VP8 and views are never re-encoded: this camera is
                # seen in the composed program and the low rendition only.
                skipped.append(
                    {
                        "id": track.id,
                        "label": _label(rec, track.source),
                        "reason": f"{track.codec} cannot be carried in fMP4 HLS; "
                        "shown in the program only",
                    }
                )
                continue
            out = remux_to_hls(
                # Opus priming can put a track a few ms before zero; MSE wants t >= 0.
                rec.path(track),
                work / "views" / track.id,
                offset_s=max(0.0, track.offset_s or 0.0),
                rel_to=work,
                progress=lambda f, i=i: report("views", (i + f) / len(media)),
            )
            views.append(
                {
                    "id": track.id,
                    "source": track.source,
                    "kind": track.kind,
                    "label": _label(rec, track.source),
                    "origin": track.origin,
                    "width": track.width,
                    "height": track.height,
                    **asdict(out),
                }
            )
            report("views", (i + 1) / len(media))
        timings["views_ready_s"] = time.monotonic() - t0

        prog = build_program(rec, work, settings, progress=lambda f: report("program", f))
        timings["program_encoded_s"] = time.monotonic() - t0
        program = remux_to_hls(prog.program_mp4, work / "program", rel_to=work)
        timings["program_s"] = time.monotonic() - t0
        report("renditions", 0.3)
        low = remux_to_hls(prog.low_mp4, work / "low", rel_to=work)
        timings["low_s"] = time.monotonic() - t0
        report("renditions", 0.6)
        audio = None
        if any(t.kind == "audio" for t in rec.manifest.tracks):
            audio = remux_to_hls(prog.program_mp4, work / "audio", rel_to=work, kinds=("audio",))
        report("renditions", 1.0)

        chapters = build_chapters(
            rec.timeline, prog.slide_changes, rec.duration_s, rec.manifest.meta.points
        )
        m = rec.manifest
        entry = {
            "version": 1,
            "lesson": lesson,
            "school": m.meta.school,
            "school_name": m.meta.school_name or m.meta.school,
            "schools": m.meta.schools or ([m.meta.school] if m.meta.school else []),
            "master": m.meta.master,
            "subject": m.meta.subject,
            "grade": m.meta.grade,
            "teacher": m.meta.teacher,
            "title": m.meta.title or f"{m.meta.subject} {m.meta.grade}",
            "public": m.meta.public,
            "visibility": m.meta.visibility or ("public" if m.meta.public else "schools"),
            "points": m.meta.points,
            "started_at": m.started_at,
            "date": m.meta.date or time.strftime("%Y-%m-%d", time.localtime(m.started_at)),
            "duration_s": round(rec.duration_s, 3),
            "views": views,
            "views_skipped": skipped,
            "program": {**asdict(program), "mp4": "program.mp4"},
            "low": {**asdict(low), "mp4": "low.mp4"},
            "audio": asdict(audio) if audio else None,
            "chapters": chapters_json(chapters),
            "call_ons": [{"start": a, "end": b, "classroom": c} for a, b, c in prog.call_ons],
            "thumbnails": prog.sprite,
            "poster": prog.sprite["poster"],
            "recording_stopped": m.stopped,
            "fingerprint": fp,
            "packaged_at": time.time(),
        }
        write_json_atomic(work / REPLAY_JSON, entry)
        _publish(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    timings["total_s"] = time.monotonic() - t0
    report("done", 1.0)
    return PackageResult(final, timings)


def _read_entry(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / REPLAY_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _publish(work: Path, final: Path) -> None:
    """Swap the finished work directory into place with renames only."""
    old = None
    if final.exists():
        old = final.with_name(f"{WORK_PREFIX}{final.name}-old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    try:
        os.rename(work, final)
    except OSError:
        if old is not None and not final.exists():
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale_work(replays_root: Path, max_age_s: float = 6 * 3600) -> list[Path]:
    """Remove work directories left by killed jobs: any older than `max_age_s`, and at
    once those whose process on this machine is gone. Returns what was removed."""
    now = time.time()
    removed: list[Path] = []
    if not replays_root.is_dir():
        return removed
    for d in replays_root.glob(f"{WORK_PREFIX}*"):
        try:
            old = now - d.stat().st_mtime > max_age_s
        except FileNotFoundError:
            continue
        parts = d.name.split("@")
        dead = len(parts) == 3 and _dead_here(parts[1])
        if old or dead:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _dead_here(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


_OWNER = f"{socket.gethostname()}:{os.getpid()}"


__all__ = ["PackageResult", "RecordingError", "build_replay", "clean_stale_work"]
