"""The weekly timetable inputs (busy periods, needs, master offers), the term calendar and
solved plans."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, Date, DateTime, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.db import Base

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
WEEKDAY_NAMES_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")


def weekday_name(weekday: int) -> str:
    """ISO weekday (1 = Monday) to 'Mon'."""
    return WEEKDAYS[weekday - 1]


class BusyPeriod(Base):
    """A period in which a class already has a lesson of its own."""

    __tablename__ = "sch_busy"
    class_id: Mapped[str] = mapped_column(ForeignKey("sch_class.id"), primary_key=True)
    weekday: Mapped[int] = mapped_column(Integer, primary_key=True)  # ISO, 1 = Monday
    period: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), default="")


class Need(Base):
    """A point class needs this many remote lessons of a subject per week."""

    __tablename__ = "sch_need"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    class_id: Mapped[str] = mapped_column(ForeignKey("sch_class.id"))
    subject: Mapped[str] = mapped_column(String(64))
    periods_per_week: Mapped[int] = mapped_column(Integer)


class MasterOffer(Base):
    """A master class's own lesson (subject, grade via the class) that points may join."""

    __tablename__ = "sch_offer"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    class_id: Mapped[str] = mapped_column(ForeignKey("sch_class.id"))
    subject: Mapped[str] = mapped_column(String(64))
    teacher_id: Mapped[str] = mapped_column(ForeignKey("sch_teacher.id"))
    weekday: Mapped[int] = mapped_column(Integer)
    period: Mapped[int] = mapped_column(Integer)
    # The bit rate of the lesson's stream profile; a point's downlink must carry it.
    stream_mbps: Mapped[float] = mapped_column(Float, default=2.0)
    # What each joining point sends back up (two-way lessons); 0 for one-way lessons.
    point_uplink_mbps: Mapped[float | None] = mapped_column(Float, nullable=True, default=0.0)
    # The stream profile the bit rates came from (see scheduler/streams.py).
    profile: Mapped[str | None] = mapped_column(String(16), nullable=True, default="")


class Term(Base):
    __tablename__ = "sch_term"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    start: Mapped[dt.date] = mapped_column(Date)
    end: Mapped[dt.date] = mapped_column(Date)
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai")


class CalendarDay(Base):
    """A holiday (no lessons) or a make-up day (调休: a weekend day that follows the
    timetable of `as_weekday`)."""

    __tablename__ = "sch_calendar_day"
    term_id: Mapped[int] = mapped_column(ForeignKey("sch_term.id"), primary_key=True)
    date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "holiday" or "makeup"
    as_weekday: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Plan(Base):
    """A solved weekly plan. At most one plan is published at a time."""

    __tablename__ = "sch_plan"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), default="draft")  # draft|published|old
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    stats: Mapped[dict] = mapped_column(JSON, default=dict)
    # Unserved needs with their reasons, computed from the model after the solve.
    unserved: Mapped[list] = mapped_column(JSON, default=list)


class PlanLesson(Base):
    """One weekly master lesson of a plan with the point classes that join it."""

    __tablename__ = "sch_plan_lesson"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("sch_plan.id", ondelete="CASCADE"))
    offer_id: Mapped[int] = mapped_column(ForeignKey("sch_offer.id"))
    master_class_id: Mapped[str] = mapped_column(String(64))
    master_classroom_id: Mapped[str] = mapped_column(String(64))
    teacher_id: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(64))
    grade: Mapped[int] = mapped_column(Integer)
    weekday: Mapped[int] = mapped_column(Integer)
    start_min: Mapped[int] = mapped_column(Integer)
    end_min: Mapped[int] = mapped_column(Integer)
    moved: Mapped[bool] = mapped_column(Boolean, default=False)
    # [{"need_id": 3, "class_id": "...", "classroom_id": "..."}]
    points: Mapped[list] = mapped_column(JSON, default=list)
