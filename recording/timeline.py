"""The lesson timeline: one JSON object per line, `t` in lesson-clock seconds.

    {"t": 12.48, "kind": "join", "classroom": "p-xiaohe", "name": "小河教学点"}
    {"t": 300.0, "kind": "call_on", "classroom": "p-xiaohe"}
    {"t": 345.2, "kind": "call_off", "classroom": "p-xiaohe"}
    {"t": 410.0, "kind": "slide", "index": 4, "title": "Fractions"}

Each line is written and flushed on its own, so a killed writer leaves at most one partial
*last* line, which readers skip. A bad line anywhere else is an error.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from recording.errors import RecordingError

KINDS = (
    "join",
    "leave",
    "call_on",
    "call_off",
    "hand_raised",
    "hand_lowered",
    "slide",
    "chat",
    "chapter",
    "recording_stopped",
    # The classroom (media_server/classroom.py): lesson phase and microphone control.
    "lesson_started",
    "lesson_ended",
    "muted",
    "unmuted",
)


@dataclass(frozen=True)
class Event:
    t: float
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


class TimelineWriter:
    def __init__(self, path: Path) -> None:
        self._fh: IO[str] = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def append(self, t: float, kind: str, fields: dict[str, Any]) -> None:
        if "t" in fields or "kind" in fields:
            raise ValueError("event fields may not be named 't' or 'kind'")
        line = json.dumps({"t": round(t, 3), "kind": kind, **fields}, ensure_ascii=False)
        with self._lock:
            if self._fh.closed:
                return
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def read_timeline(path: Path) -> list[Event]:
    """Events sorted by time; a missing timeline is an empty lesson, not an error."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")
    events: list[Event] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_unterminated_tail = number == len(lines)
        try:
            obj = json.loads(line.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            t = obj.pop("t")
            kind = obj.pop("kind")
            if not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t):
                raise ValueError(f"'t' must be a number of seconds, got {t!r}")
            if not isinstance(kind, str) or not kind:
                raise ValueError(f"'kind' must be a string, got {kind!r}")
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            if is_unterminated_tail:
                # The writer was killed in the middle of this line.
                continue
            raise RecordingError(
                "bad_timeline", f"{path.name} line {number} is not a valid event: {exc}"
            ) from None
        events.append(Event(t=float(t), kind=kind, fields=obj))
    events.sort(key=lambda e: e.t)
    return events
