"""How the media server learns of scheduled lessons: a published lesson instance is a room.

The scheduler and the SFU stay independent packages; this is the one place they meet.
A token for a scheduled lesson opens its room on first join, with no manual `tongke room`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from media_server.room import LessonInfo
from scheduler.db import Database
from scheduler.lessons import get_lesson

log = logging.getLogger(__name__)


def scheduled_lesson_resolver(db: Database) -> Callable[[str], LessonInfo | None]:
    def resolve(room_id: str) -> LessonInfo | None:
        try:
            with db.session() as session:
                lesson = get_lesson(session, room_id)
        except Exception:
            # No published term yet, or the database is unreachable: the room is unknown.
            log.debug("no scheduled lesson %s", room_id, exc_info=True)
            return None
        if lesson is None or lesson.status == "cancelled":
            return None
        return LessonInfo(
            room=lesson.room_id,
            title=lesson.title,
            master=lesson.master_classroom_id,
            points=list(lesson.point_classroom_ids),
            starts_at=lesson.start.timestamp(),
            ends_at=lesson.end.timestamp(),
        )

    return resolve
