"""How the media server learns of scheduled lessons: a published lesson instance is a room.

The scheduler and the SFU stay independent packages; this is the one place they meet.
A token for a scheduled lesson opens its room on first join, with no manual `tongke room`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from media_server.room import LessonInfo, Rooms
from recording.lesson import LessonFacts
from scheduler.db import Database
from scheduler.lessons import LessonInstance, get_lesson
from scheduler.school import Classroom, School, Teacher

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


def lesson_facts_resolver(db: Database, rooms: Rooms) -> Callable[[str], LessonFacts | None]:
    """What the archiver may trust about a lesson: the scheduler's lesson instance (with
    school, teacher and classroom names), else the open room (title and classrooms)."""

    def from_scheduler(lesson_id: str) -> LessonFacts | None:
        with db.session() as session:
            inst = session.get(LessonInstance, lesson_id)
            if inst is None:
                return None
            classrooms = {
                c.id: c
                for c in session.query(Classroom).filter(
                    Classroom.id.in_([inst.master_classroom_id, *inst.points])
                )
            }
            master = classrooms.get(inst.master_classroom_id)
            school = session.get(School, master.school_id) if master else None
            teacher = session.get(Teacher, inst.teacher_id)
            schools = [master.school_id] if master else []
            for cid in inst.points:
                room = classrooms.get(cid)
                if room is not None and room.school_id not in schools:
                    schools.append(room.school_id)
            return LessonFacts(
                lesson=inst.id,
                title=inst.title,
                school=master.school_id if master else "",
                school_name=school.name if school else "",
                subject=inst.subject,
                grade=str(inst.grade),
                teacher=teacher.name if teacher else inst.teacher_id,
                master=inst.master_classroom_id,
                points={
                    cid: classrooms[cid].name if cid in classrooms else cid for cid in inst.points
                },
                schools=schools,
                date=inst.date.isoformat(),
            )

    def resolve(lesson_id: str) -> LessonFacts | None:
        try:
            facts = from_scheduler(lesson_id)
        except Exception:
            log.debug("no scheduled lesson %s", lesson_id, exc_info=True)
            facts = None
        if facts is not None:
            return facts
        room = rooms.rooms.get(lesson_id)
        if room is None:
            return None
        names = {p.claims.classroom: p.name for p in room.participants.values()}
        info = room.info
        return LessonFacts(
            lesson=info.room,
            title=info.title or info.room,
            master=info.master,
            school=info.master,
            school_name=names.get(info.master, ""),
            points={p: names.get(p, p) for p in info.points},
            schools=[c for c in [info.master, *info.points] if c],
        )

    return resolve
