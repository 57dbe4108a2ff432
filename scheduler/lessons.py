"""Lesson series (the published weekly plan) and dated lesson instances (the rooms).

A lesson instance is a room: its id is stable (series id plus date) so that links,
tokens and recordings keep pointing at the same lesson when the plan is re-published.
The media server and agents read instances through `lessons_between`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import JSON, Boolean, Date, DateTime, Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from scheduler.db import Base
from scheduler.school import Classroom, School, SchoolClass, Teacher
from scheduler.timetable import CalendarDay, Plan, PlanLesson, Term
from tongke.tokens import Role, issue_token


class LessonSeries(Base):
    """One weekly lesson of the published plan."""

    __tablename__ = "sch_series"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    master_class_id: Mapped[str] = mapped_column(String(64))
    master_classroom_id: Mapped[str] = mapped_column(String(64))
    teacher_id: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(64))
    grade: Mapped[int] = mapped_column(Integer)
    weekday: Mapped[int] = mapped_column(Integer)
    start_min: Mapped[int] = mapped_column(Integer)
    end_min: Mapped[int] = mapped_column(Integer)
    points: Mapped[list] = mapped_column(JSON)  # point classroom ids
    point_classes: Mapped[list] = mapped_column(JSON)
    # Bumped whenever the series changes, so calendar clients replace what they hold.
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class LessonInstance(Base):
    """One dated lesson: the room the media server opens."""

    __tablename__ = "sch_instance"
    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    series_id: Mapped[str] = mapped_column(String(32), index=True)
    date: Mapped[dt.date] = mapped_column(Date, index=True)
    start_at: Mapped[dt.datetime] = mapped_column(DateTime)  # local wall time of the term
    end_at: Mapped[dt.datetime] = mapped_column(DateTime)
    title: Mapped[str] = mapped_column(String(300))
    master_class_id: Mapped[str] = mapped_column(String(64))
    master_classroom_id: Mapped[str] = mapped_column(String(64), index=True)
    teacher_id: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(64))
    grade: Mapped[int] = mapped_column(Integer)
    points: Mapped[list] = mapped_column(JSON)
    point_classes: Mapped[list] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="scheduled")  # or "cancelled"
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    # True when a re-plan changed this one date away from its weekly series.
    override: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str] = mapped_column(String(500), default="")


@dataclass(frozen=True)
class LessonInfo:
    """What the media server and agents need to open and join a lesson's room."""

    room_id: str
    title: str
    master_classroom_id: str
    point_classroom_ids: tuple[str, ...]
    start: dt.datetime  # timezone-aware
    end: dt.datetime
    teacher_id: str
    subject: str
    grade: int
    status: str
    sequence: int
    series_id: str

    def as_dict(self) -> dict[str, object]:
        return {
            "room_id": self.room_id,
            "title": self.title,
            "master_classroom_id": self.master_classroom_id,
            "point_classroom_ids": list(self.point_classroom_ids),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "teacher_id": self.teacher_id,
            "subject": self.subject,
            "grade": self.grade,
            "status": self.status,
            "sequence": self.sequence,
            "series_id": self.series_id,
        }


def series_id(master_class_id: str, weekday: int, start_min: int) -> str:
    digest = hashlib.sha1(f"{master_class_id}|{weekday}|{start_min}".encode()).hexdigest()
    return "L" + digest[:11]


def instance_id(series: str, date: dt.date) -> str:
    return f"{series}-{date:%Y%m%d}"


def current_term(db: Session) -> Term:
    term = db.scalars(select(Term).order_by(Term.id.desc())).first()
    if term is None:
        raise ValueError("no term calendar: import calendar.csv first")
    return term


def term_days(db: Session, term: Term) -> list[tuple[dt.date, int]]:
    """School days of the term with the weekday whose timetable they follow."""
    special = {
        d.date: d for d in db.scalars(select(CalendarDay).where(CalendarDay.term_id == term.id))
    }
    days = []
    d = term.start
    while d <= term.end:
        cal = special.get(d)
        if cal is not None and cal.kind == "holiday":
            pass
        elif cal is not None and cal.kind == "makeup" and cal.as_weekday:
            days.append((d, cal.as_weekday))
        elif d.isoweekday() <= 5:
            days.append((d, d.isoweekday()))
        d += dt.timedelta(days=1)
    return days


def _at(date: dt.date, minutes: int) -> dt.datetime:
    return dt.datetime.combine(date, dt.time(minutes // 60, minutes % 60))


@dataclass
class PublishReport:
    plan_id: int
    series: int
    instances: int
    changed_series: list[str]
    removed_series: list[str]


def _check_weekly_caps(db: Session, term: Term, plan_id: int) -> None:
    """Refuse a plan whose remote lessons break a teacher's weekly cap in a real week of
    the term (a make-up day repeats a weekday; the plan may predate the calendar)."""
    caps = {t.id: (t.name, t.weekly_cap) for t in db.scalars(select(Teacher))}
    days: dict[str, list[int]] = {}
    for lesson in db.scalars(select(PlanLesson).where(PlanLesson.plan_id == plan_id)):
        if lesson.points:
            days.setdefault(lesson.teacher_id, []).append(lesson.weekday)
    weeks: dict[dt.date, dict[int, int]] = {}
    for date, weekday in term_days(db, term):
        week = weeks.setdefault(date - dt.timedelta(days=date.weekday()), {})
        week[weekday] = week.get(weekday, 0) + 1
    broken = []
    for teacher, wds in sorted(days.items()):
        name, cap = caps.get(teacher, (teacher, 0))
        over = [
            f"{monday} ({n})"
            for monday, counts in sorted(weeks.items())
            if (n := sum(counts.get(d, 0) for d in wds)) > cap
        ]
        if over:
            # Every week, so the scheduler sees whether it is one make-up week or all.
            broken.append(f"{name}({teacher}) cap {cap}, in the weeks of {', '.join(over)}")
    if broken:
        raise ValueError(
            "this plan breaks weekly caps in real calendar weeks (solve again "
            "with the current calendar): "
            + "; ".join(broken[:10])
            + (f" and {len(broken) - 10} more" if len(broken) > 10 else "")
        )


def publish(db: Session, plan_id: int) -> PublishReport:
    """Make a plan the published one: weekly series plus dated instances for the term."""
    plan = db.get(Plan, plan_id)
    if plan is None:
        raise ValueError(f"unknown plan {plan_id}")
    term = current_term(db)
    teachers = {t.id: t.name for t in db.scalars(select(Teacher))}
    classes = {c.id: c for c in db.scalars(select(SchoolClass))}
    schools = {s.id: s.name for s in db.scalars(select(School))}
    _check_weekly_caps(db, term, plan_id)
    existing = {s.id: s for s in db.scalars(select(LessonSeries))}
    seen: set[str] = set()
    changed: list[str] = []
    for lesson in db.scalars(select(PlanLesson).where(PlanLesson.plan_id == plan_id)):
        if not lesson.points:
            continue  # a master lesson nobody joins is not a remote lesson
        sid = series_id(lesson.master_class_id, lesson.weekday, lesson.start_min)
        seen.add(sid)
        mclass = classes[lesson.master_class_id]
        title = (
            f"{lesson.subject} · {schools[mclass.school_id]} {mclass.name} · "
            f"{teachers.get(lesson.teacher_id, lesson.teacher_id)}"
        )
        fields = dict(
            title=title,
            master_class_id=lesson.master_class_id,
            master_classroom_id=lesson.master_classroom_id,
            teacher_id=lesson.teacher_id,
            subject=lesson.subject,
            grade=lesson.grade,
            weekday=lesson.weekday,
            start_min=lesson.start_min,
            end_min=lesson.end_min,
            points=sorted({p["classroom_id"] for p in lesson.points}),
            point_classes=sorted(p["class_id"] for p in lesson.points),
            active=True,
        )
        old = existing.get(sid)
        if old is None:
            db.add(LessonSeries(id=sid, sequence=0, **fields))
            changed.append(sid)
        elif any(getattr(old, k) != v for k, v in fields.items()):
            for k, v in fields.items():
                setattr(old, k, v)
            old.sequence += 1
            changed.append(sid)
    removed = []
    for sid, old in existing.items():
        if sid not in seen and old.active:
            old.active = False
            old.sequence += 1
            removed.append(sid)
    db.flush()
    # Instances are rebuilt from the weekly series: publishing a plan supersedes one-off
    # changes made by re-plans of the previous plan.
    db.execute(delete(LessonInstance))
    series_by_day: dict[int, list[LessonSeries]] = {}
    for s in db.scalars(select(LessonSeries).where(LessonSeries.active.is_(True))):
        series_by_day.setdefault(s.weekday, []).append(s)
    count = 0
    for date, weekday in term_days(db, term):
        for s in series_by_day.get(weekday, []):
            db.add(
                LessonInstance(
                    id=instance_id(s.id, date),
                    series_id=s.id,
                    date=date,
                    start_at=_at(date, s.start_min),
                    end_at=_at(date, s.end_min),
                    title=s.title,
                    master_class_id=s.master_class_id,
                    master_classroom_id=s.master_classroom_id,
                    teacher_id=s.teacher_id,
                    subject=s.subject,
                    grade=s.grade,
                    points=s.points,
                    point_classes=s.point_classes,
                    status="scheduled",
                    sequence=s.sequence,
                    override=False,
                )
            )
            count += 1
    for other in db.scalars(select(Plan).where(Plan.status == "published")):
        other.status = "old"
    plan.status = "published"
    db.flush()
    return PublishReport(plan_id, len(seen), count, changed, removed)


def published_plan(db: Session) -> Plan | None:
    return db.scalars(select(Plan).where(Plan.status == "published")).first()


def _info(inst: LessonInstance, tz: ZoneInfo) -> LessonInfo:
    return LessonInfo(
        room_id=inst.id,
        title=inst.title,
        master_classroom_id=inst.master_classroom_id,
        point_classroom_ids=tuple(inst.points),
        start=inst.start_at.replace(tzinfo=tz),
        end=inst.end_at.replace(tzinfo=tz),
        teacher_id=inst.teacher_id,
        subject=inst.subject,
        grade=inst.grade,
        status=inst.status,
        sequence=inst.sequence,
        series_id=inst.series_id,
    )


def lessons_between(
    db: Session,
    start: dt.datetime,
    end: dt.datetime,
    *,
    classroom_id: str | None = None,
    include_cancelled: bool = False,
) -> list[LessonInfo]:
    """Lesson instances starting in [start, end), optionally those of one classroom.

    Naive datetimes are read in the term's time zone; results are timezone-aware."""
    term = current_term(db)
    tz = ZoneInfo(term.timezone)

    def local(t: dt.datetime) -> dt.datetime:
        return t.astimezone(tz).replace(tzinfo=None) if t.tzinfo else t

    q = select(LessonInstance).where(
        LessonInstance.start_at >= local(start), LessonInstance.start_at < local(end)
    )
    out = []
    for inst in db.scalars(q.order_by(LessonInstance.start_at, LessonInstance.id)):
        if not include_cancelled and inst.status == "cancelled":
            continue
        if (
            classroom_id is not None
            and classroom_id != inst.master_classroom_id
            and (classroom_id not in inst.points)
        ):
            continue
        out.append(_info(inst, tz))
    return out


def get_lesson(db: Session, room_id: str) -> LessonInfo | None:
    inst = db.get(LessonInstance, room_id)
    if inst is None:
        return None
    return _info(inst, ZoneInfo(current_term(db).timezone))


def role_of(lesson: LessonInfo, classroom_id: str) -> Role | None:
    """The role a classroom has in a lesson: master, point, or none."""
    if classroom_id == lesson.master_classroom_id:
        return Role.MASTER
    if classroom_id in lesson.point_classroom_ids:
        return Role.POINT
    return None


def room_token(
    secret: str,
    db: Session,
    lesson: LessonInfo,
    classroom_id: str,
    role: Role | str,
    *,
    now: float | None = None,
    subject: str | None = None,
) -> str:
    """A token for one lesson's room, valid until an hour after the lesson ends.

    Master and point tokens go only to the lesson's own classrooms; the classroom agent
    gets an agent token for a lesson its classroom takes part in."""
    role = Role(role)
    own = role_of(lesson, classroom_id)
    if role in (Role.MASTER, Role.POINT) and own != role:
        raise ValueError(
            f"classroom {classroom_id!r} is not the {role.value} of lesson {lesson.room_id}"
        )
    if role == Role.AGENT and own is None:
        raise ValueError(f"classroom {classroom_id!r} takes no part in lesson {lesson.room_id}")
    if role in (Role.ADMIN, Role.SCHEDULER):
        raise ValueError("admin and scheduler tokens are not lesson tokens")
    room = db.get(Classroom, classroom_id) if classroom_id else None
    issued = now if now is not None else dt.datetime.now(dt.UTC).timestamp()
    ttl = int(lesson.end.timestamp() + 3600 - issued)
    if ttl <= 0:
        raise ValueError(f"lesson {lesson.room_id} is over")
    return issue_token(
        secret,
        room=lesson.room_id,
        classroom=classroom_id,
        role=role,
        name=room.name if room else classroom_id,
        ttl_s=ttl,
        now=issued,
        subject=subject,
    )
