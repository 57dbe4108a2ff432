"""A lesson recording on the server: every classroom's copy of one lesson, joined.

    recordings/<lesson>/
      lesson.json                what the server knows: facts, parts, archiving state
      parts/<classroom>--<id>/   one uploaded recording (format v1) per upload, as received
      merged/                    one recording (format v1) built from all parts for packaging

The lesson's facts (title, school, subject, grade, teacher, classrooms, date, who may see
it) come from the server (the scheduler's lesson instance or the open room), never from
an uploader's manifest. Each classroom's tracks stay its own; two copies of the same
track (an agent restarted mid-lesson, or the server's and the agent's copy) are merged
packet by packet onto the lesson clock (`recording.merge`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from recording.errors import RecordingError
from recording.manifest import (
    CONTAINER_FOR_CODEC,
    EXTENSION_FOR_CONTAINER,
    TIMELINE_NAME,
    TRACKS_DIR,
    LessonMeta,
    Manifest,
    TrackInfo,
    check_id,
    write_json_atomic,
)
from recording.merge import TrackCopy, merge_track
from recording.source import Recording, open_recording
from recording.timeline import Event, read_timeline

log = logging.getLogger(__name__)

LESSON_JSON = "lesson.json"
PARTS_DIR = "parts"
MERGED_DIR = "merged"
# The room's own timeline (call-ons, hands, chat, mute, slides, start, end), copied from
# the media server; its events carry `wall` (Unix seconds).
SERVER_TIMELINE = "server-timeline.jsonl"


@dataclass
class LessonFacts:
    """What the server knows about a lesson, from the scheduler or the room."""

    lesson: str
    title: str = ""
    school: str = ""  # the master classroom's school id
    school_name: str = ""
    subject: str = ""
    grade: str = ""
    teacher: str = ""
    master: str = ""  # master classroom id
    points: dict[str, str] = field(default_factory=dict)  # point classroom id -> name
    # Schools whose students may watch the replay: the master's and the points'.
    schools: list[str] = field(default_factory=list)
    date: str = ""  # scheduled date, YYYY-MM-DD
    public: bool = False
    # Who may watch (recording/catalog.py VISIBILITIES), as the lesson's teacher or an
    # admin set it; "" until someone does.
    visibility: str = ""

    def classrooms(self) -> list[str]:
        return [c for c in [self.master, *self.points] if c]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LessonFacts:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# Looks a lesson up by id; None when the server knows no such lesson.
LessonResolver = Callable[[str], LessonFacts | None]


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", value).lstrip("._-") or "x"


class LessonRecord:
    """recordings/<lesson>/: read and change lesson.json (callers serialise the changes)."""

    def __init__(self, root: Path, lesson: str) -> None:
        self.lesson = check_id(lesson, "lesson")
        self.directory = root / lesson
        self.path = self.directory / LESSON_JSON

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"lesson": self.lesson, "facts": None, "parts": [], "state": "new"}
        if not isinstance(data, dict):
            raise RecordingError("bad_lesson", f"{self.path} must hold a JSON object")
        data.setdefault("parts", [])
        return data

    def save(self, data: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, data)

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read, change and write lesson.json under a lock shared with other processes
        (the server and packaging workers on shared storage). Blocking: call off the loop."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with _flock(self.directory / ".lesson.lock"):
            data = self.load()
            change(data)
            self.save(data)
            return data

    @contextlib.contextmanager
    def packaging(self) -> Iterator[None]:
        """Held while merged/ is built and packaged: one packaging of a lesson at a time."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with _flock(self.directory / ".package.lock"):
            yield

    def add_part(
        self,
        source_dir: Path,
        classroom: str,
        upload_id: str,
        facts: LessonFacts,
        *,
        origin: str = "agent",
    ) -> str:
        """Move a recording in as a part (one rename); returns the part's name.

        `origin` "agent" for a classroom's uploaded safety copy, "server" for the
        server's own recording of that classroom's tracks."""
        name = f"{_safe(classroom)}--{upload_id[:8]}"
        parts = self.directory / PARTS_DIR
        parts.mkdir(parents=True, exist_ok=True)
        target = parts / name
        if not target.exists():
            os.rename(source_dir, target)

        def change(data: dict[str, Any]) -> None:
            # Who may watch was set on the server (teacher or admin), not by the resolver.
            visibility = (data.get("facts") or {}).get("visibility", "")
            data["facts"] = asdict(facts)
            if visibility and not facts.visibility:
                data["facts"]["visibility"] = visibility
            if not any(p["name"] == name for p in data["parts"]):
                data["parts"].append(
                    {
                        "name": name,
                        "classroom": classroom,
                        "upload_id": upload_id,
                        "origin": origin,
                        "received_at": time.time(),
                    }
                )

        self.update(change)
        return name


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _role(facts: LessonFacts, classroom: str) -> str:
    if classroom == facts.master:
        return "master"
    if classroom in facts.points:
        return "point"
    return "other"


def _lesson_source(
    facts: LessonFacts, classroom: str, track: TrackInfo, first_video: bool
) -> tuple[str, str]:
    """(track id, source) of a classroom's track in the lesson recording."""
    role = _role(facts, classroom)
    if role == "master":
        return _safe(track.id), track.source
    if role == "point" and first_video:
        # The program switches to `point:<classroom>` during a call-on.
        return _safe(f"point-{classroom}"), f"point:{classroom}"
    return _safe(f"{classroom}-{track.source}"), f"{classroom}:{track.source}"


def assemble(lesson_dir: Path) -> Path:
    """Build merged/ from every part: one recording the packager reads as it is."""
    record = LessonRecord(lesson_dir.parent, lesson_dir.name)
    data = record.load()
    if not data.get("facts"):
        raise RecordingError("no_lesson", f"{lesson_dir}: no lesson.json with the lesson's facts")
    facts = LessonFacts.from_json(data["facts"])
    parts: list[tuple[str, Recording]] = []
    for part in data.get("parts", []):
        try:
            parts.append((part["classroom"], open_recording(lesson_dir / PARTS_DIR / part["name"])))
        except RecordingError as exc:
            # One damaged copy must not cost the lesson its replay.
            log.error("lesson %s: part %s left out: %s", facts.lesson, part["name"], exc.message)
    if not parts:
        raise RecordingError("no_tracks", f"lesson {facts.lesson}: no usable recording yet")
    started_at = min(r.manifest.started_at for _, r in parts)
    ended = [r.manifest.ended_at for _, r in parts if r.manifest.ended_at]

    # Group copies of the same track: same classroom, same source.
    order = {"master": 0, "point": 1, "other": 2}
    groups: dict[tuple[str, str], list[TrackCopy]] = {}
    names: dict[tuple[str, str], tuple[str, str]] = {}
    for classroom, rec in sorted(
        parts, key=lambda p: (order[_role(facts, p[0])], p[1].manifest.started_at)
    ):
        shift = rec.manifest.started_at - started_at
        first_video = next((t for t in rec.manifest.tracks if t.kind == "video"), None)
        for track in rec.manifest.tracks:
            if track.offset_s is None:
                continue  # never received a packet
            key = (classroom, track.source)
            if key not in names:
                is_first = first_video is not None and track.source == first_video.source
                names[key] = _lesson_source(facts, classroom, track, is_first)
            groups.setdefault(key, []).append(
                TrackCopy(rec.path(track), track.offset_s + shift, track)
            )

    work = lesson_dir / f".{MERGED_DIR}-{uuid.uuid4().hex[:8]}"
    (work / TRACKS_DIR).mkdir(parents=True)
    try:
        tracks: list[TrackInfo] = []
        used_ids: set[str] = set()
        for key, copies in groups.items():
            track_id, source = names[key]
            while track_id in used_ids:
                track_id += "_"
            used_ids.add(track_id)
            base = copies[0].info
            ext = EXTENSION_FOR_CONTAINER[CONTAINER_FOR_CODEC[base.codec]]
            rel = f"{TRACKS_DIR}/{track_id}.{ext}"
            named = replace(base, id=track_id, source=source, file=rel)
            if len(copies) == 1:
                os.link(copies[0].path, work / rel)
                tracks.append(replace(named, offset_s=round(copies[0].offset_s, 6)))
            else:
                kept = _same_picture(copies)
                named = replace(kept[0].info, id=track_id, source=source, file=rel)
                copies = [replace(c, info=named) for c in kept]
                result = merge_track(copies, work / rel)
                log.info(
                    "lesson %s: %s joined from %d copies (%s packets each)",
                    facts.lesson,
                    track_id,
                    len(copies),
                    result.used,
                )
                tracks.append(result.info)
        events = _joined_timeline(parts, started_at, lesson_dir / SERVER_TIMELINE)
        with open(work / TIMELINE_NAME, "w", encoding="utf-8") as fh:
            for e in events:
                fh.write(
                    json.dumps({"t": round(e.t, 3), "kind": e.kind, **e.fields}, ensure_ascii=False)
                    + "\n"
                )
        # The room saw every classroom join under its name: fill names we lack.
        joined = {e.get("classroom"): e.get("name") for e in events if e.kind == "join"}
        points = {c: n if n and n != c else joined.get(c) or c for c, n in facts.points.items()}
        meta = LessonMeta(
            lesson=facts.lesson,
            school=facts.school,
            subject=facts.subject,
            grade=facts.grade,
            teacher=facts.teacher,
            title=facts.title or facts.lesson,
            public=facts.public,
            points=points,
            school_name=facts.school_name,
            schools=list(facts.schools),
            master=facts.master,
            date=facts.date,
            visibility=facts.visibility,
        )
        stopped = [r.manifest.stopped for _, r in parts if r.manifest.stopped]
        Manifest(
            meta=meta,
            started_at=started_at,
            tracks=tracks,
            ended_at=max(ended) if ended else None,
            stopped="; ".join(stopped) or None,
        ).save(work)
        final = lesson_dir / MERGED_DIR
        old = None
        if final.exists():
            old = lesson_dir / f".{MERGED_DIR}-old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.rename(work, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def _same_picture(copies: list[TrackCopy]) -> list[TrackCopy]:
    """Copies of one camera that can be joined without re-encoding: those at the picture
    size most of its bytes have (a browser that scaled its camera down for a while
    leaves a stretch at another size, which is left out, not transcoded)."""
    if copies[0].info.kind != "video":
        return copies
    weight: dict[tuple[int, int], int] = {}
    for c in copies:
        size = (c.info.width, c.info.height)
        weight[size] = weight.get(size, 0) + (c.path.stat().st_size if c.path.exists() else 0)
    best = max(weight, key=lambda k: weight[k])
    kept = [c for c in copies if (c.info.width, c.info.height) == best]
    if len(kept) < len(copies):
        log.warning(
            "track %s: %d stretch(es) at another picture size than %dx%d left out",
            copies[0].info.id,
            len(copies) - len(kept),
            *best,
        )
    return kept


def _joined_timeline(
    parts: list[tuple[str, Recording]], started_at: float, server_timeline: Path
) -> list[Event]:
    """Every part's events and the room's own on the lesson clock; the same event noted
    by several classrooms (a join each agent saw) appears once."""
    out: list[Event] = []
    seen: dict[str, list[float]] = {}

    def add(t: float, kind: str, fields: dict[str, Any]) -> None:
        key = json.dumps([kind, fields], sort_keys=True, ensure_ascii=False)
        if any(abs(t - u) < 2.0 for u in seen.get(key, [])):
            return
        seen.setdefault(key, []).append(t)
        out.append(Event(t=t, kind=kind, fields=fields))

    server = read_timeline(server_timeline) if server_timeline.exists() else []
    for e in server:
        fields = dict(e.fields)
        wall = fields.pop("wall", None)
        if isinstance(wall, int | float):
            add(float(wall) - started_at, e.kind, fields)
    for _, rec in parts:
        shift = rec.manifest.started_at - started_at
        for e in rec.timeline:
            if server and e.kind in ("join", "leave"):
                continue  # the room saw every join and leave itself
            add(e.t + shift, e.kind, e.fields)
    out.sort(key=lambda e: e.t)
    return out
