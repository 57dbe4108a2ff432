"""The manifest of a lesson recording: who taught what, when, and which tracks exist.

A recording is a directory:

    manifest.json      this file (rewritten atomically whenever a track starts or ends)
    timeline.jsonl     lesson events, one JSON object a line, with media timestamps
    tracks/<id>.<ext>  one file per published track, codec copy (MPEG-TS or WebM)

All media timestamps are seconds on the *lesson clock*: zero at `started_at` (wall-clock,
Unix seconds). A track's packet at pts `p` plays at `offset_s + (p - first_pts) * time_base`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recording.errors import RecordingError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TIMELINE_NAME = "timeline.jsonl"
TRACKS_DIR = "tracks"

# Lesson and track ids become directory and file names and parts of URLs.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

VIDEO_CODECS = ("h264", "vp8")
AUDIO_CODECS = ("opus",)
# Container per codec: MPEG-TS and WebM both stay readable up to the last flushed packet
# when the writer dies, because neither needs an index written at the end.
CONTAINER_FOR_CODEC = {"h264": "mpegts", "opus": "mpegts", "vp8": "webm"}
EXTENSION_FOR_CONTAINER = {"mpegts": "ts", "webm": "webm"}


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        raise RecordingError(
            "bad_id",
            f"{what} {value!r} is not a valid id (letters, digits, '.', '_', '-'; "
            "at most 128 characters)",
        )
    return value


@dataclass
class LessonMeta:
    lesson: str
    school: str
    subject: str
    grade: str
    teacher: str
    title: str = ""
    # Lessons marked public are visible to students of every school.
    public: bool = False
    # The teaching points taking part, {classroom id: display name}.
    points: dict[str, str] = field(default_factory=dict)
    # Set by the server for a lesson recording (never trusted from an upload): the
    # school's name, the schools whose students may watch, the master classroom, the date.
    school_name: str = ""
    schools: list[str] = field(default_factory=list)
    master: str = ""
    date: str = ""
    # Who may watch the replay (recording/catalog.py VISIBILITIES); "" means the lesson's
    # schools, or everyone when `public`.
    visibility: str = ""

    def __post_init__(self) -> None:
        check_id(self.lesson, "lesson")


@dataclass
class TrackInfo:
    id: str
    source: str  # teacher_camera, courseware, microphone, point:<classroom>...
    kind: str  # video | audio
    codec: str  # h264 | vp8 | opus
    origin: str  # agent | server
    file: str  # path relative to the recording directory
    time_base: str  # "1/90000"
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    # Lesson-clock seconds of the first packet, and that packet's pts in time_base units.
    offset_s: float | None = None
    first_pts: int | None = None
    # Filled in when the writer closes the file cleanly; absent after a crash.
    closed: bool = False
    bytes: int | None = None
    packets: int | None = None
    duration_s: float | None = None
    # Packets the writer had to drop because the disk could not keep up.
    dropped: int | None = None

    def validate(self) -> None:
        check_id(self.id, "track")
        if self.kind not in ("video", "audio"):
            raise RecordingError("bad_manifest", f"track {self.id}: kind {self.kind!r} unknown")
        allowed = VIDEO_CODECS if self.kind == "video" else AUDIO_CODECS
        if self.codec not in allowed:
            raise RecordingError(
                "bad_manifest",
                f"track {self.id}: codec {self.codec!r} is not a {self.kind} codec "
                f"({', '.join(allowed)})",
            )
        p = Path(self.file)
        if p.is_absolute() or ".." in p.parts or p.parts[:1] != (TRACKS_DIR,):
            raise RecordingError(
                "bad_manifest", f"track {self.id}: file {self.file!r} is not under {TRACKS_DIR}/"
            )


@dataclass
class Manifest:
    meta: LessonMeta
    started_at: float
    tracks: list[TrackInfo] = field(default_factory=list)
    ended_at: float | None = None
    version: int = FORMAT_VERSION
    # Why recording stopped early, if it did (e.g. the disk budget was reached).
    stopped: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            **asdict(self.meta),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "stopped": self.stopped,
            "tracks": [asdict(t) for t in self.tracks],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        try:
            meta = LessonMeta(
                lesson=data["lesson"],
                school=str(data["school"]),
                subject=str(data["subject"]),
                grade=str(data["grade"]),
                teacher=str(data["teacher"]),
                title=str(data.get("title", "")),
                public=bool(data.get("public", False)),
                points={str(k): str(v) for k, v in dict(data.get("points") or {}).items()},
                school_name=str(data.get("school_name", "")),
                schools=[str(x) for x in data.get("schools") or []],
                master=str(data.get("master", "")),
                date=str(data.get("date", "")),
                visibility=str(data.get("visibility", "")),
            )
            tracks = [TrackInfo(**t) for t in data.get("tracks", [])]
            manifest = cls(
                meta=meta,
                started_at=float(data["started_at"]),
                tracks=tracks,
                ended_at=data.get("ended_at"),
                version=int(data.get("version", FORMAT_VERSION)),
                stopped=data.get("stopped"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordingError(
                "bad_manifest", f"{MANIFEST_NAME}: missing or bad field: {exc}"
            ) from None
        if manifest.version > FORMAT_VERSION:
            raise RecordingError(
                "bad_manifest",
                f"{MANIFEST_NAME}: format version {manifest.version} is newer "
                f"than this software ({FORMAT_VERSION})",
            )
        seen: set[str] = set()
        for t in manifest.tracks:
            t.validate()
            if t.id in seen:
                raise RecordingError("bad_manifest", f"track id {t.id!r} appears twice")
            seen.add(t.id)
        return manifest

    def track(self, track_id: str) -> TrackInfo:
        for t in self.tracks:
            if t.id == track_id:
                return t
        raise KeyError(track_id)

    def save(self, directory: Path) -> None:
        write_json_atomic(directory / MANIFEST_NAME, self.to_json())


def load_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordingError("no_manifest", f"{directory} has no {MANIFEST_NAME}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordingError("bad_manifest", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordingError("bad_manifest", f"{path} must hold a JSON object")
    return Manifest.from_json(data)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write-then-rename so a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
