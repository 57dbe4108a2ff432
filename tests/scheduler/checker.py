"""An independent checker of every hard constraint, written against the stored inputs.

It shares no code with the solver: it recomputes clock times, school-day blocks, busy
times and counts from the database rows, so a solver bug cannot hide behind itself.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections import defaultdict
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

SLACK = 5
LUNCH_GAP = 30


def _rows(db: Session, sql: str) -> list[Any]:
    return list(db.execute(text(sql)))


def _week_counts(db: Session) -> dict[str, dict[int, int]]:
    """Per real week of the term: how often each timetable weekday is taught."""
    terms = _rows(db, 'select id, start, "end" from sch_term order by id desc')
    if not terms:
        return {"any": {d: 1 for d in range(1, 8)}}
    term = terms[0]
    start, end = (dt.date.fromisoformat(str(v)) for v in (term.start, term.end))
    special = {
        dt.date.fromisoformat(str(r.date)): (r.kind, r.as_weekday)
        for r in _rows(
            db, f"select date, kind, as_weekday from sch_calendar_day where term_id = {term.id}"
        )
    }
    weeks: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    d = start
    while d <= end:
        kind, as_wd = special.get(d, ("", None))
        wd = as_wd if kind == "makeup" else (d.isoweekday() if d.isoweekday() <= 5 else None)
        if kind != "holiday" and wd:
            weeks[(d - dt.timedelta(days=d.weekday())).isoformat()][wd] += 1
        d += dt.timedelta(days=1)
    return weeks


def check_plan(db: Session, plan_id: int) -> list[str]:
    bad: list[str] = []
    schools = {r.id: r for r in _rows(db, "select id, county_id from sch_school")}
    classes = {
        r.id: r for r in _rows(db, "select id, school_id, grade, classroom_id from sch_class")
    }
    rooms = {
        r.id: r
        for r in _rows(db, "select id, school_id, downlink_mbps, uplink_mbps from sch_classroom")
    }
    lines = {r.id: r for r in _rows(db, "select id, downlink_mbps, uplink_mbps from sch_school")}
    caps = {r.id: r.weekly_cap for r in _rows(db, "select id, weekly_cap from sch_teacher")}
    offers = {
        r.id: r
        for r in _rows(
            db,
            "select id, class_id, subject, teacher_id, weekday, period, stream_mbps, "
            "point_uplink_mbps from sch_offer",
        )
    }
    needs = {
        r.id: r for r in _rows(db, "select id, class_id, subject, periods_per_week from sch_need")
    }
    bells: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
    for r in _rows(db, "select school_id, period, start_min, end_min from sch_bell"):
        bells[r.school_id][r.period] = (r.start_min, r.end_min)
    busy: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for r in _rows(db, "select class_id, weekday, period from sch_busy"):
        busy[(r.class_id, r.weekday)].append(bells[classes[r.class_id].school_id][r.period])
    plan = _rows(db, f"select options from sch_plan where id = {int(plan_id)}")[0]
    options = plan.options if isinstance(plan.options, dict) else json.loads(plan.options)
    lessons = _rows(
        db,
        "select offer_id, master_class_id, master_classroom_id, teacher_id, "
        "subject, grade, weekday, start_min, end_min, points from sch_plan_lesson "
        f"where plan_id = {int(plan_id)}",
    )

    def blocks(school: str) -> list[tuple[int, int]]:
        out: list[list[int]] = []
        for s, e in sorted(bells[school].values()):
            if out and s - out[-1][1] <= LUNCH_GAP:
                out[-1][1] = max(out[-1][1], e)
            else:
                out.append([s, e])
        return [(s - SLACK, e + SLACK) for s, e in out]

    def line_of(school: str) -> tuple[float, float]:
        own = [r for r in rooms.values() if r.school_id == school]
        down = lines[school].downlink_mbps
        up = lines[school].uplink_mbps
        return (
            down if down is not None else max(r.downlink_mbps for r in own),
            up if up is not None else max(r.uplink_mbps for r in own),
        )

    tolerance = int(options.get("bell_tolerance_min", 5))
    soft = options.get("bells", "hard") == "soft"
    on_line: dict[tuple[str, int], list[tuple[int, int, float, float]]] = defaultdict(list)
    remote_days: dict[str, list[int]] = defaultdict(list)
    seen_offers: dict[int, int] = defaultdict(int)
    timeline: dict[tuple[str, int], list[tuple[int, int, str]]] = defaultdict(list)
    remote: dict[str, int] = defaultdict(int)
    per_need: dict[int, int] = defaultdict(int)
    for ls in lessons:
        points = ls.points if isinstance(ls.points, list) else json.loads(ls.points)
        o = offers[ls.offer_id]
        seen_offers[o.id] += 1
        where = f"lesson of offer {o.id} ({ls.weekday} {ls.start_min})"
        mclass = classes[o.class_id]
        if ls.subject != o.subject or ls.grade != mclass.grade or ls.teacher_id != o.teacher_id:
            bad.append(f"{where}: subject/grade/teacher differ from the offer")
        if ls.master_classroom_id != mclass.classroom_id:
            bad.append(f"{where}: not in the master class's classroom")
        start, end = ls.start_min, ls.end_min
        if options.get("mode", "fixed") == "fixed":
            if (ls.weekday, (start, end)) != (o.weekday, bells[mclass.school_id][o.period]):
                bad.append(f"{where}: a fixed master lesson moved")
        else:
            if (start, end) not in bells[mclass.school_id].values():
                bad.append(f"{where}: not on a bell period of the master school")
            if any(s < end and start < e for s, e in busy[(o.class_id, ls.weekday)]):
                bad.append(f"{where}: moved onto a busy period of the master class")
        if len(points) > options.get("max_points", 4):
            bad.append(f"{where}: {len(points)} points > {options.get('max_points', 4)}")
        if points:
            remote[o.teacher_id] += 1
            remote_days[o.teacher_id].append(ls.weekday)
        for key in (
            ("mclass", o.class_id),
            ("teacher", o.teacher_id),
            ("mroom", ls.master_classroom_id),
        ):
            timeline[(key[0] + ":" + key[1], ls.weekday)].append((start, end, where))
        for p in points:
            need = needs.get(p["need_id"])
            if need is None or need.class_id != p["class_id"] or need.subject != o.subject:
                bad.append(f"{where}: point {p} does not match a need for {o.subject}")
                continue
            per_need[need.id] += 1
            pclass = classes[need.class_id]
            if pclass.grade != mclass.grade:
                bad.append(f"{where}: grade {pclass.grade} point in a grade {mclass.grade} lesson")
            if p["classroom_id"] != pclass.classroom_id:
                bad.append(f"{where}: point classroom is not the class's classroom")
            if rooms[pclass.classroom_id].downlink_mbps < o.stream_mbps:
                bad.append(f"{where}: {pclass.classroom_id} downlink below the stream")
            if not options.get("cross_county") and (
                schools[pclass.school_id].county_id != schools[mclass.school_id].county_id
            ):
                bad.append(f"{where}: cross-county pairing while not allowed")
            if not any(bs <= start and end <= be for bs, be in blocks(pclass.school_id)):
                bad.append(f"{where}: outside the school day of {need.class_id}")
            in_period = any(
                max(0, ps - start) + max(0, end - pe) <= tolerance
                for ps, pe in bells[pclass.school_id].values()
                if ps < end and start < pe
            )
            if not soft and not in_period:
                bad.append(f"{where}: not inside a bell period of {pclass.school_id}")
            down, up = (
                rooms[pclass.classroom_id].downlink_mbps,
                rooms[pclass.classroom_id].uplink_mbps,
            )
            if (o.point_uplink_mbps or 0) > up:
                bad.append(f"{where}: {pclass.classroom_id} uplink below the point's stream")
            on_line[(pclass.school_id, ls.weekday)].append(
                (start, end, o.stream_mbps, o.point_uplink_mbps or 0.0)
            )
            if any(s < end and start < e for s, e in busy[(need.class_id, ls.weekday)]):
                bad.append(f"{where}: overlaps a busy period of {need.class_id}")
            timeline[("class:" + need.class_id, ls.weekday)].append((start, end, where))
            timeline[("room:" + pclass.classroom_id, ls.weekday)].append((start, end, where))
    for oid in offers:
        if seen_offers[oid] != 1:
            bad.append(f"offer {oid} appears {seen_offers[oid]} times in the plan")
    for (who, wd), items in timeline.items():
        items.sort()
        # Sorted by start, any overlap shows up between neighbours.
        for (_s1, e1, w1), (s2, _e2, w2) in itertools.pairwise(items):
            if s2 < e1:
                bad.append(f"{who} on day {wd}: {w1} overlaps {w2}")
    for (school, wd), items in on_line.items():
        down, up = line_of(school)
        for t in {it[0] for it in items}:
            live = [it for it in items if it[0] <= t < it[1]]
            if sum(it[2] for it in live) > down + 1e-9 or sum(it[3] for it in live) > up + 1e-9:
                bad.append(f"school {school} on day {wd} at {t}: line over capacity")
    for t, days in remote_days.items():
        for week, count in _week_counts(db).items():
            n = sum(count.get(d, 0) for d in days)
            if n > caps[t]:
                bad.append(f"teacher {t}: {n} remote lessons in week {week} > cap {caps[t]}")
    for nid, n in per_need.items():
        if n > needs[nid].periods_per_week:
            bad.append(f"need {nid}: {n} periods > {needs[nid].periods_per_week}")
    return bad
