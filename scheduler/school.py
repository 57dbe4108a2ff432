"""Counties, schools, classrooms, teachers and classes."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import JSON, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.db import Base


class SchoolKind(StrEnum):
    CENTRAL = "central"  # a strong school whose teachers give master lessons
    ORDINARY = "ordinary"
    POINT = "point"  # a teaching point (教学点) without its own subject teachers


class ClassroomRole(StrEnum):
    MASTER = "master"  # a recording classroom that can give master lessons
    RECEIVING = "receiving"


class County(Base):
    __tablename__ = "sch_county"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))


class School(Base):
    __tablename__ = "sch_school"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    county_id: Mapped[str] = mapped_column(ForeignKey("sch_county.id"))
    kind: Mapped[str] = mapped_column(String(16))
    # The school's shared line to the county network; its classrooms' streams add up on
    # it. None: as fast as the school's fastest classroom link.
    downlink_mbps: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    uplink_mbps: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)


class Classroom(Base):
    __tablename__ = "sch_classroom"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    school_id: Mapped[str] = mapped_column(ForeignKey("sch_school.id"))
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    agent_id: Mapped[str] = mapped_column(String(64), default="")
    downlink_mbps: Mapped[float] = mapped_column(Float)
    uplink_mbps: Mapped[float] = mapped_column(Float)


class Teacher(Base):
    __tablename__ = "sch_teacher"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    school_id: Mapped[str] = mapped_column(ForeignKey("sch_school.id"))
    name: Mapped[str] = mapped_column(String(200))
    subjects: Mapped[list[str]] = mapped_column(JSON)
    grades: Mapped[list[int]] = mapped_column(JSON)
    # Most remote lessons (master lessons with at least one point) per week.
    weekly_cap: Mapped[int] = mapped_column(Integer)


class SchoolClass(Base):
    __tablename__ = "sch_class"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    school_id: Mapped[str] = mapped_column(ForeignKey("sch_school.id"))
    grade: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    students: Mapped[int] = mapped_column(Integer)
    # The classroom the class sits in: master lessons are given from it, remote lessons
    # are received in it.
    classroom_id: Mapped[str] = mapped_column(ForeignKey("sch_classroom.id"))
