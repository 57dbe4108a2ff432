"""An independent checker of every hard constraint, written against the stored inputs.

It shares no code with the solver: it recomputes clock times, school-day blocks, busy
times and counts from the database rows, so a solver bug cannot hide behind itself.
"""

from __future__ import annotations

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


def check_plan(db: Session, plan_id: int) -> list[str]:
    bad: list[str] = []
    schools = {r.id: r for r in _rows(db, "select id, county_id from sch_school")}
    classes = {
        r.id: r for r in _rows(db, "select id, school_id, grade, classroom_id from sch_class")
    }
    rooms = {r.id: r for r in _rows(db, "select id, downlink_mbps from sch_classroom")}
    caps = {r.id: r.weekly_cap for r in _rows(db, "select id, weekly_cap from sch_teacher")}
    offers = {
        r.id: r
        for r in _rows(
            db,
            "select id, class_id, subject, teacher_id, weekday, period, stream_mbps from sch_offer",
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
    for t, n in remote.items():
        if n > caps[t]:
            bad.append(f"teacher {t}: {n} remote lessons > cap {caps[t]}")
    for nid, n in per_need.items():
        if n > needs[nid].periods_per_week:
            bad.append(f"need {nid}: {n} periods > {needs[nid].periods_per_week}")
    return bad
