"""Generated sample counties (for `tongke schedule demo-data`, tests and the benchmark).

A county has central schools whose master classrooms each hold one class with its own
weekly lessons in the remote subjects, and teaching points whose classes need those
subjects. Bell schedules differ by school, some links are poor and some point classes are
busy at awkward times, so not everything can be served: the same kind of county a
bureau really has.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from dataclasses import dataclass
from typing import Any

from scheduler.bells import clock
from scheduler.csvio import FORMATS, write_rows_csv

# Subjects as a county names them (the pages are Chinese first), with the code ids use.
SUBJECTS = ("英语", "音乐", "美术", "科学", "体育", "信息技术")
SUBJECT_CODES = {
    "英语": "en",
    "音乐": "music",
    "美术": "art",
    "科学": "sci",
    "体育": "pe",
    "信息技术": "it",
}
_SYL = (
    "小河",
    "大山",
    "石门",
    "青松",
    "柳林",
    "黄土",
    "白云",
    "清水",
    "杨家",
    "梨园",
    "桃花",
    "龙潭",
    "马坪",
    "高岭",
    "新田",
    "双河",
    "凤凰",
    "金沙",
    "红岩",
    "草坝",
    "古井",
    "茶园",
)
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"


@dataclass(frozen=True)
class Tier:
    counties: int
    masters_per_county: int  # master classrooms (one master class each)
    points_per_county: int  # teaching-point classrooms
    subjects: int
    demand_per_county: int  # target weekly demand periods


TIERS = {
    "S": Tier(
        counties=1, masters_per_county=3, points_per_county=6, subjects=4, demand_per_county=56
    ),
    "M": Tier(
        counties=1, masters_per_county=40, points_per_county=120, subjects=5, demand_per_county=1000
    ),
    "L": Tier(
        counties=10, masters_per_county=17, points_per_county=50, subjects=5, demand_per_county=500
    ),
}


def _bells(
    rng: random.Random, periods: int, length: int | None = None, shift: int | None = None
) -> list[tuple[int, int]]:
    """A school day: morning and afternoon runs with a long break, shifted per school."""
    length = length or rng.choice((40, 40, 40, 45))
    t = 8 * 60 + (shift if shift is not None else rng.choice((-5, 0, 0, 0, 5)))
    out = []
    morning = 4
    for i in range(periods):
        if i == morning:
            t = 14 * 60 + rng.choice((0, 0, 0, 10))
        out.append((t, t + length))
        t += length + (20 if i == 1 else 10)
    return out


def _point_bells(rng: random.Random, county: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Most points ring the county's bells (专递课堂 counties align them), some five
    minutes off, a few their own."""
    roll = rng.random()
    if roll < 0.6:
        return list(county)
    if roll < 0.85:
        d = rng.choice((-5, 5))
        return [(s + d, e + d) for s, e in county]
    return _bells(rng, len(county))


def term_calendar(today: dt.date) -> list[dict[str, Any]]:
    """A term around `today`: from the Monday three weeks back, 20 weeks long, with a
    three-day holiday in week 6 and its make-up Sunday (调休) the week before, and a
    one-day holiday in week 12."""
    start = today - dt.timedelta(days=today.weekday()) - dt.timedelta(weeks=3)
    end = start + dt.timedelta(weeks=20, days=-3)
    holiday = start + dt.timedelta(weeks=5)
    makeup = holiday - dt.timedelta(days=1)  # the Sunday before, follows Wednesday
    one_day = start + dt.timedelta(weeks=11, days=4)
    return [
        {
            "kind": "term",
            "start": start.isoformat(),
            "end": end.isoformat(),
            "weekday": "",
            "name": f"{start.year}学期",
            "timezone": "Asia/Shanghai",
        },
        {
            "kind": "holiday",
            "start": holiday.isoformat(),
            "end": (holiday + dt.timedelta(days=2)).isoformat(),
            "weekday": "",
            "name": "假期",
            "timezone": "",
        },
        {
            "kind": "makeup",
            "start": makeup.isoformat(),
            "end": "",
            "weekday": "3",
            "name": "调休",
            "timezone": "",
        },
        {
            "kind": "holiday",
            "start": one_day.isoformat(),
            "end": "",
            "weekday": "",
            "name": "校庆",
            "timezone": "",
        },
    ]


def generate(tier: str | Tier, seed: int, today: dt.date | None = None) -> dict[str, str]:
    """CSV texts keyed by file kind, ready for `csvio.import_csv`; the term runs around
    `today` (default: the real today) so that demo feeds show lessons."""
    spec = TIERS[tier] if isinstance(tier, str) else tier
    rng = random.Random(seed)
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in FORMATS}
    subjects = SUBJECTS[: spec.subjects]
    pairs = [a + b for a in _SYL for b in _SYL if a != b]
    rng.shuffle(pairs)
    # A city needs more place names than there are pairs: later rounds get a number.
    names = (f"{p}{'' if k == 0 else k + 1}" for k in itertools.count() for p in pairs)
    for ci in range(spec.counties):
        county = f"county{ci + 1}"
        cname = f"{next(names)}县"
        periods_per_day = rng.choice((7, 8))
        county_bells = _bells(rng, periods_per_day, length=40, shift=0)
        # (grade, subject) -> the times central schools give that lesson.
        offered: dict[tuple[int, str], set[tuple[int, int]]] = {}
        # Central schools: up to 20 master classrooms each.
        n_central = max(1, -(-spec.masters_per_county // 20))
        master_classes: list[tuple[str, int, str]] = []  # (class id, grade, school id)
        for si in range(n_central):
            sid = f"{county}-z{si + 1}"
            rows["schools"].append(
                {
                    "school_id": sid,
                    "name": f"{next(names)}中心校",
                    "county_id": county,
                    "county_name": cname,
                    "kind": "central",
                }
            )
            bells = county_bells if si == 0 else _point_bells(rng, county_bells)
            for p, (s, e) in enumerate(bells, start=1):
                rows["bells"].append(
                    {"school_id": sid, "period": p, "start": clock(s), "end": clock(e)}
                )
            share = spec.masters_per_county // n_central + (
                1 if si < spec.masters_per_county % n_central else 0
            )
            teachers: dict[str, list[str]] = {}
            for subj in subjects:
                count = max(1, share // 3)
                teachers[subj] = []
                for ti in range(count):
                    tid = f"{sid}-t-{SUBJECT_CODES[subj]}{ti + 1}"
                    teachers[subj].append(tid)
                    rows["teachers"].append(
                        {
                            "teacher_id": tid,
                            "school_id": sid,
                            "name": f"{rng.choice(_SURNAMES)}老师({subj})",
                            "subjects": subj,
                            "grades": "1;2;3;4;5;6",
                            "weekly_cap": rng.choice((8, 10, 12)),
                        }
                    )
            busy_teacher: set[tuple[str, int, int]] = set()
            # A recording classroom serves two classes in turn (grades 1-6 need covering).
            rooms = []
            for k in range(share):
                rid = f"{sid}-r{k + 1}"
                rooms.append(rid)
                rows["classrooms"].append(
                    {
                        "classroom_id": rid,
                        "school_id": sid,
                        "name": f"录播教室{k + 1}",
                        "role": "master",
                        "agent_id": f"agent-{rid}",
                        "downlink_mbps": 50,
                        "uplink_mbps": 20,
                    }
                )
            busy_room: set[tuple[str, int, int]] = set()
            for k in range(2 * share):
                grade = k % 6 + 1
                rid = rooms[k % share]
                cid = f"{sid}-g{grade}c{k // 6 + 1}"
                rows["classes"].append(
                    {
                        "class_id": cid,
                        "school_id": sid,
                        "grade": grade,
                        "name": f"{grade}年级{k // 6 + 1}班",
                        "students": 45,
                        "classroom_id": rid,
                    }
                )
                master_classes.append((cid, grade, sid))
                slots = [(d, p) for d in range(1, 6) for p in range(1, periods_per_day + 1)]
                rng.shuffle(slots)
                used: set[tuple[int, int]] = set()
                for subj in subjects:
                    for _ in range(rng.choice((1, 2, 2))):
                        for d, p in slots:
                            if (d, p) in used or (rid, d, p) in busy_room:
                                continue
                            free = [t for t in teachers[subj] if (t, d, p) not in busy_teacher]
                            if not free:
                                continue
                            tid = rng.choice(free)
                            used.add((d, p))
                            busy_room.add((rid, d, p))
                            busy_teacher.add((tid, d, p))
                            offered.setdefault((grade, subj), set()).add((d, bells[p - 1][0]))
                            rows["offers"].append(
                                {
                                    "class_id": cid,
                                    "subject": subj,
                                    "teacher_id": tid,
                                    "weekday": d,
                                    "period": p,
                                    "stream_mbps": rng.choice((1.5, 2.0, 2.0, 2.5)),
                                }
                            )
                            break
                # Most other periods are the class's own lessons; a few are self-study
                # (自习) into which a movable master lesson may go.
                for d, p in slots:
                    if (d, p) not in used and rng.random() < 0.85:
                        rows["busy"].append(
                            {
                                "class_id": cid,
                                "weekday": d,
                                "period": p,
                                "subject": "语文" if p % 2 else "数学",
                            }
                        )
        # Teaching points: one classroom each, one or two classes (two share the room).
        need_rows: list[dict[str, Any]] = []
        for pi in range(spec.points_per_county):
            sid = f"{county}-p{pi + 1}"
            rows["schools"].append(
                {
                    "school_id": sid,
                    "name": f"{next(names)}教学点",
                    "county_id": county,
                    "county_name": cname,
                    "kind": "point",
                }
            )
            bells = _point_bells(rng, county_bells)
            for p, (s, e) in enumerate(bells, start=1):
                rows["bells"].append(
                    {"school_id": sid, "period": p, "start": clock(s), "end": clock(e)}
                )
            rid = f"{sid}-r1"
            rows["classrooms"].append(
                {
                    "classroom_id": rid,
                    "school_id": sid,
                    "name": "教室",
                    "role": "receiving",
                    "agent_id": f"agent-{rid}",
                    "downlink_mbps": rng.choice((1.0, 2.0, 3.0, 4.0, 4.0, 6.0, 8.0)),
                    "uplink_mbps": rng.choice((1.0, 2.0, 4.0)),
                }
            )
            for grade in sorted(rng.sample(range(1, 7), k=rng.choice((1, 2, 2)))):
                cid = f"{sid}-g{grade}"
                rows["classes"].append(
                    {
                        "class_id": cid,
                        "school_id": sid,
                        "grade": grade,
                        "name": f"{grade}年级",
                        "students": rng.randint(4, 25),
                        "classroom_id": rid,
                    }
                )
                wanted = rng.sample(subjects, k=min(len(subjects), rng.choice((2, 3, 4))))
                # The point's timetable mostly keeps the central lessons' times free for
                # the subjects it lacks teachers for; other periods are its own lessons.
                keep: set[tuple[int, int]] = set()
                for subj in wanted:
                    for d, start in offered.get((grade, subj), ()):
                        if rng.random() < 0.7:
                            keep.add((d, start))
                for d in range(1, 6):
                    for p, (ps, _pe) in enumerate(bells, start=1):
                        near = any(d == kd and abs(ps - ks) <= 10 for kd, ks in keep)
                        if not near and rng.random() < 0.55:
                            rows["busy"].append(
                                {
                                    "class_id": cid,
                                    "weekday": d,
                                    "period": p,
                                    "subject": "语文" if p % 2 else "数学",
                                }
                            )
                for subj in wanted:
                    # A county asks mostly for what its central schools give; one need
                    # in five asks for more than is offered (a reason to explain).
                    offered_n = len(offered.get((grade, subj), ()))
                    want = rng.choice((1, 2, 2, 3))
                    if rng.random() < 0.8:
                        want = max(1, min(want, offered_n))
                    need_rows.append({"class_id": cid, "subject": subj, "periods_per_week": want})
        # Trim to the tier's demand so figures are comparable across seeds.
        rng.shuffle(need_rows)
        total = 0
        for n in need_rows:
            if total + n["periods_per_week"] > spec.demand_per_county:
                continue
            total += n["periods_per_week"]
            rows["needs"].append(n)
    rows["calendar"] = term_calendar(today or dt.date.today())
    out = {}
    for kind, data in rows.items():
        columns: list[str] = list(FORMATS[kind])
        for r in data:
            for k in r:
                if k not in columns:
                    columns.append(k)
        out[kind] = write_rows_csv(data, columns)
    return out
