"""Per-classroom schedule feeds: iCalendar (RFC 5545) and JSON.

Each weekly series is one VEVENT with a weekly RRULE over the term, EXDATE for holidays,
RDATE for make-up days that follow its weekday, and a RECURRENCE-ID override for every
date a re-plan changed. The UID is the series id, so a calendar keeps its events across
re-publishing, and SEQUENCE rises with every change. The room of an occurrence is
`<series id>-<YYYYMMDD>`, which is also what the JSON feed lists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event
from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.lessons import (
    LessonInstance,
    LessonSeries,
    current_term,
    lessons_between,
    published_plan,
    role_of,
    room_token,
    term_days,
)
from scheduler.school import Classroom

UID_DOMAIN = "tongke"


def etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _takes_part(classroom_id: str, master: str, points: list[str]) -> bool:
    return classroom_id == master or classroom_id in points


def _describe(room: str, master: str, points: list[str], note: str = "") -> str:
    lines = [f"room: {room}", f"master classroom: {master}", f"points: {', '.join(points)}"]
    if note:
        lines.append(f"change: {note}")
    return "\n".join(lines)


def classrooms_of_agent(db: Session, agent_id: str) -> list[str]:
    return sorted(db.scalars(select(Classroom.id).where(Classroom.agent_id == agent_id)))


def ical_feed(db: Session, classroom_ids: list[str], base_url: str, name: str) -> bytes:
    term = current_term(db)
    tz = ZoneInfo(term.timezone)
    plan = published_plan(db)
    stamp = (plan.created_at if plan else dt.datetime(2000, 1, 1)).replace(tzinfo=dt.UTC)
    days = term_days(db, term)
    school_days = {d for d, _ in days}
    cal = Calendar()
    cal.add("prodid", "-//Tongke//scheduler//EN")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "PUBLISH")
    cal.add("x-wr-calname", f"Tongke · {name}")
    cal.add("x-wr-timezone", term.timezone)
    until = dt.datetime.combine(term.end, dt.time(23, 59, 59), tz).astimezone(dt.UTC)
    rooms = set(classroom_ids)

    def at(date: dt.date, minutes: int) -> dt.datetime:
        return dt.datetime.combine(date, dt.time(minutes // 60, minutes % 60), tz)

    series = [
        s
        for s in db.scalars(
            select(LessonSeries).where(LessonSeries.active.is_(True)).order_by(LessonSeries.id)
        )
        if any(_takes_part(r, s.master_classroom_id, s.points) for r in rooms)
    ]
    covered: set[str] = set()
    for s in series:
        first = term.start + dt.timedelta(days=(s.weekday - term.start.isoweekday()) % 7)
        ev = Event()
        ev.add("uid", f"{s.id}@{UID_DOMAIN}")
        ev.add("dtstamp", stamp)
        ev.add("sequence", s.sequence)
        ev.add("summary", s.title)
        ev.add("dtstart", at(first, s.start_min))
        ev.add("dtend", at(first, s.end_min))
        ev.add("rrule", {"freq": "weekly", "until": until})
        ev.add("categories", [s.subject])
        ev.add("description", _describe(f"{s.id}-<date>", s.master_classroom_id, s.points))
        ev.add("url", f"{base_url}/api/schedule/lessons?series={s.id}")
        pattern = []
        d = first
        while d <= term.end:
            pattern.append(d)
            d += dt.timedelta(days=7)
        exdates = [
            at(d, s.start_min)
            for d in pattern
            if d not in school_days or dict(days).get(d) != s.weekday
        ]
        if exdates:
            ev.add("exdate", exdates)
        rdates = [
            at(d, s.start_min) for d, wd in days if wd == s.weekday and d.isoweekday() != s.weekday
        ]
        if rdates:
            ev.add("rdate", rdates)
        cal.add_component(ev)
        covered.add(s.id)
        for inst in db.scalars(
            select(LessonInstance)
            .where(LessonInstance.series_id == s.id, LessonInstance.override.is_(True))
            .order_by(LessonInstance.date)
        ):
            part = any(_takes_part(r, inst.master_classroom_id, inst.points) for r in rooms)
            ov = Event()
            ov.add("uid", f"{s.id}@{UID_DOMAIN}")
            ov.add("recurrence-id", at(inst.date, s.start_min))
            ov.add("dtstamp", stamp)
            ov.add("sequence", max(inst.sequence, s.sequence + 1))
            ov.add("summary", inst.title)
            ov.add("dtstart", inst.start_at.replace(tzinfo=tz))
            ov.add("dtend", inst.end_at.replace(tzinfo=tz))
            ov.add("status", "CONFIRMED" if part and inst.status == "scheduled" else "CANCELLED")
            ov.add(
                "description", _describe(inst.id, inst.master_classroom_id, inst.points, inst.note)
            )
            cal.add_component(ov)
    # One-off lessons a re-plan added for these classrooms outside their weekly series.
    q = select(LessonInstance).where(
        LessonInstance.override.is_(True), LessonInstance.status == "scheduled"
    )
    for inst in db.scalars(q.order_by(LessonInstance.start_at, LessonInstance.id)):
        if inst.series_id in covered or not any(
            _takes_part(r, inst.master_classroom_id, inst.points) for r in rooms
        ):
            continue
        ev = Event()
        ev.add("uid", f"{inst.id}@{UID_DOMAIN}")
        ev.add("dtstamp", stamp)
        ev.add("sequence", inst.sequence)
        ev.add("summary", inst.title)
        ev.add("dtstart", inst.start_at.replace(tzinfo=tz))
        ev.add("dtend", inst.end_at.replace(tzinfo=tz))
        ev.add("status", "CONFIRMED")
        ev.add("categories", [inst.subject])
        ev.add("description", _describe(inst.id, inst.master_classroom_id, inst.points, inst.note))
        cal.add_component(ev)
    cal.add_missing_timezones()
    return cal.to_ical()


def json_feed(
    db: Session,
    classroom_ids: list[str],
    secret: str,
    *,
    days: int = 14,
    now: dt.datetime | None = None,
    base_url: str = "",
) -> dict[str, Any]:
    """Lessons of the classrooms from today on; the next `days` days carry room tokens so an
    agent can start them even while the scheduler is unreachable. `server` is the public
    address the lessons are held at."""
    term = current_term(db)
    tz = ZoneInfo(term.timezone)
    now = (now or dt.datetime.now(dt.UTC)).astimezone(tz)
    start = dt.datetime.combine(now.date(), dt.time(0), tz)
    horizon = start + dt.timedelta(days=days)
    end = dt.datetime.combine(term.end + dt.timedelta(days=1), dt.time(0), tz)
    # Tokens are issued at the top of the hour so the feed (and its ETag) stays stable
    # between polls within the hour.
    issued = now.replace(minute=0, second=0, microsecond=0).timestamp()
    lessons = []
    for rid in classroom_ids:
        for info in lessons_between(
            db, start, max(end, horizon), classroom_id=rid, include_cancelled=True
        ):
            item = info.as_dict()
            role = role_of(info, rid)
            item["classroom_id"] = rid
            item["role"] = role.value if role else None
            if info.status == "scheduled" and info.start < horizon and info.end > now and role:
                item["token"] = room_token(
                    secret, db, info, rid, role, now=issued, subject=f"{rid}:{info.room_id}"
                )
            lessons.append(item)
    lessons.sort(key=lambda x: (x["start"], x["room_id"], x["classroom_id"]))
    return {
        "classrooms": classroom_ids,
        "timezone": term.timezone,
        "server": base_url,
        "lessons": lessons,
    }


def json_bytes(feed: dict[str, Any]) -> bytes:
    return json.dumps(feed, ensure_ascii=False, sort_keys=True).encode()


def classroom_exists(db: Session, classroom_id: str) -> bool:
    return db.get(Classroom, classroom_id) is not None
