"""Explanations checked against an independent derivation on generated counties.

Each lever an explanation names ("a 2.5 Mbit/s link would serve 2 more periods: ...") is
applied to the stored county, the need is added to the lessons it names, and the
independent checker (tests/scheduler/checker.py, which shares no code with the solver or
the explainer) must find the changed plan valid; without the relaxation it must not. So
a lever that would not help, or a blocker that is not real, fails the test.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from scheduler.countygen import generate
from scheduler.csvio import import_csv
from scheduler.db import Database
from scheduler.problem import Options
from scheduler.service import solve_and_store
from scheduler.timetable import PlanLesson
from tests.scheduler.checker import check_plan

CHECKED = (
    "link",
    "timetable",
    "points_per_lesson",
    "teacher_cap",
    "bells",
    "school_line",
    "move_lesson",
)
TODAY = dt.date(2026, 3, 16)


def _join(s: Session, plan_id: int, need: dict[str, Any], offers: list[int]) -> None:
    """Add the need's class to the named lessons of the plan."""
    room = s.execute(
        text("select classroom_id from sch_class where id = :c"), {"c": need["class_id"]}
    ).scalar_one()
    for pl in s.query(PlanLesson).filter_by(plan_id=plan_id):
        if pl.offer_id in offers:
            pl.points = [
                *pl.points,
                {"need_id": need["need_id"], "class_id": need["class_id"], "classroom_id": room},
            ]
    s.flush()


def _relax(s: Session, plan_id: int, need: dict[str, Any], lever: str, relax: dict) -> None:
    if lever == "link":
        s.execute(
            text(
                "update sch_classroom set downlink_mbps = :m, uplink_mbps = uplink_mbps + :u "
                "where id = :r"
            ),
            {"m": relax["mbps"], "u": relax["up_mbps"], "r": relax["classroom"]},
        )
        s.execute(
            text("update sch_school set downlink_mbps = null, uplink_mbps = null where id = :s"),
            {"s": relax["school"]},
        )
    elif lever == "school_line":
        s.execute(
            text("update sch_school set downlink_mbps = 10000, uplink_mbps = 10000 where id = :s"),
            {"s": relax["school"]},
        )
    elif lever == "timetable":
        for wd, period in relax["busy"]:
            s.execute(
                text("delete from sch_busy where class_id = :c and weekday = :w and period = :p"),
                {"c": relax["class"], "w": wd, "p": period},
            )
    elif lever == "move_lesson":
        for move in relax["moves"]:
            s.execute(
                text(
                    "update sch_plan_lesson set weekday = :w, start_min = :s, end_min = :e "
                    "where plan_id = :p and offer_id = :o"
                ),
                {
                    "w": move["weekday"],
                    "s": move["start"],
                    "e": move["end"],
                    "p": plan_id,
                    "o": move["offer"],
                },
            )
    if lever in ("points_per_lesson", "bells", "move_lesson"):
        plan = s.execute(text("select options from sch_plan where id = :p"), {"p": plan_id})
        raw = plan.scalar_one()
        options = dict(json.loads(raw) if isinstance(raw, str) else raw)
        if lever == "bells":
            options["bells"] = "soft"
        elif lever == "move_lesson":
            options["mode"] = "movable"
        else:
            options["max_points"] = relax["max_points"]
        s.execute(
            text("update sch_plan set options = :o where id = :p"),
            {"o": json.dumps(options), "p": plan_id},
        )
    if lever == "teacher_cap":
        for t, cap in relax["teachers"].items():
            s.execute(
                text("update sch_teacher set weekly_cap = :c where id = :t"), {"c": cap, "t": t}
            )
    s.flush()


@pytest.mark.parametrize(("seed", "max_points"), [(1, 4), (2, 2), (3, 4), (6, 1), (7, 3)])
def test_levers_hold_against_the_independent_checker(
    db: Database, seed: int, max_points: int
) -> None:
    with db.session() as s:
        assert import_csv(s, generate("S", seed, today=TODAY)).ok
        plan, _ = solve_and_store(s, Options(time_limit_s=10, seed=seed, max_points=max_points))
        plan_id, unserved = plan.id, plan.unserved
    seen: Counter[str] = Counter()
    with db.session() as s:
        offers = {
            r.id: (r.subject, r.grade)
            for r in s.execute(
                text(
                    "select o.id, o.subject, c.grade from sch_offer o join sch_class c on "
                    "c.id = o.class_id"
                )
            )
        }
        for need in unserved:
            assert need["reasons"], need
            for r in need["reasons"]:
                assert r["zh"] and r["en"] and r["zh"] != r["en"]
                # Only lessons of the need's grade and subject are ever named.
                assert all(offers[o] == (need["subject"], need["grade"]) for o in r["lessons"])
                seen[r["code"]] += 1
                if r["lever"] not in CHECKED:
                    continue
                assert 0 < r["gain"] <= need["required"] - need["served"]
                assert len(r["lessons"]) == r["gain"]
                _join(s, plan_id, need, r["lessons"])
                assert check_plan(s, plan_id), f"{r['en']}: valid without the relaxation"
                _relax(s, plan_id, need, r["lever"], r["relax"])
                assert check_plan(s, plan_id) == [], r["en"]
                s.rollback()
    assert sum(seen.values()) > 0
    print(dict(seen))


def _relax_kind(s: Session, plan_id: int, need: dict[str, Any], offer: int, kind: str) -> None:
    """Lift one whole kind of constraint for the need, more generously than any lever."""
    cls = s.execute(
        text("select school_id, classroom_id from sch_class where id = :c"),
        {"c": need["class_id"]},
    ).one()
    if kind == "link":  # the classroom and the school's line
        s.execute(
            text("update sch_classroom set downlink_mbps = 1e4, uplink_mbps = 1e4 where id = :r"),
            {"r": cls.classroom_id},
        )
        s.execute(
            text("update sch_school set downlink_mbps = null, uplink_mbps = null where id = :s"),
            {"s": cls.school_id},
        )
    elif kind == "timetable":  # the class has no lessons of its own at all
        s.execute(text("delete from sch_busy where class_id = :c"), {"c": need["class_id"]})
    elif kind == "teacher_cap":
        s.execute(text("update sch_teacher set weekly_cap = 60"))
    elif kind == "trade_off":  # the class's classroom gives up what it takes at that time
        lesson = s.execute(
            text(
                "select weekday, start_min, end_min from sch_plan_lesson "
                "where plan_id = :p and offer_id = :o"
            ),
            {"p": plan_id, "o": offer},
        ).one()
        for pl in s.query(PlanLesson).filter_by(plan_id=plan_id, weekday=lesson.weekday):
            if (
                pl.offer_id != offer
                and pl.start_min < lesson.end_min
                and lesson.start_min < (pl.end_min)
            ):
                pl.points = [p for p in pl.points if p["classroom_id"] != cls.classroom_id]
    else:  # plan options: bells, points per lesson
        raw = s.execute(
            text("select options from sch_plan where id = :p"), {"p": plan_id}
        ).scalar_one()
        options = dict(json.loads(raw) if isinstance(raw, str) else raw)
        options.update({"bells": "soft"} if kind == "bells" else {"max_points": 1000})
        s.execute(
            text("update sch_plan set options = :o where id = :p"),
            {"o": json.dumps(options), "p": plan_id},
        )
    s.flush()


KINDS = ("link", "timetable", "teacher_cap", "trade_off", "bells", "points_per_lesson")


@pytest.mark.parametrize("seed", [1, 3, 5, 8, 11, 13])
def test_no_single_change_when_the_explanation_says_so(db: Database, seed: int) -> None:
    """'No single change would serve another period' and 'the class takes every lesson'
    checked on their own: for every lesson such a reason names, joining it stays invalid
    under the independent checker whichever one kind of constraint is lifted, and a class
    told that it takes every lesson of its grade and subject does."""
    with db.session() as s:
        assert import_csv(s, generate("S", seed, today=TODAY)).ok
        plan, _ = solve_and_store(s, Options(time_limit_s=10, seed=seed, max_points=2))
        plan_id, unserved = plan.id, plan.unserved
    claims: Counter[str] = Counter()
    with db.session() as s:
        for need in unserved:
            for r in need["reasons"]:
                if r["code"] == "too_few_offers":
                    claims[r["code"]] += 1
                    taken = {
                        pl.offer_id
                        for pl in s.query(PlanLesson).filter_by(plan_id=plan_id)
                        if any(p["class_id"] == need["class_id"] for p in pl.points)
                    }
                    assert set(r["lessons"]) <= taken, r["en"]
                if r["code"] not in ("several", "trade_off"):
                    continue
                for offer in r["lessons"]:
                    for kind in KINDS:
                        claims[r["code"]] += 1
                        _join(s, plan_id, need, [offer])
                        _relax_kind(s, plan_id, need, offer, kind)
                        bad = check_plan(s, plan_id)
                        if r["code"] == "trade_off" and kind == "trade_off":
                            # Giving up the clashing lesson is exactly what it says.
                            assert bad == [], r["en"]
                        else:
                            assert bad, f"lifting {kind} alone serves it: {r['en']}"
                        s.rollback()
    print(dict(claims))
