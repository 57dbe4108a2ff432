"""Calendar-true weekly caps, point bells, shared school lines and bad input."""

from __future__ import annotations

import pytest

from scheduler.csvio import import_csv
from scheduler.db import Database
from scheduler.lessons import publish
from scheduler.problem import BellRule, Options
from scheduler.service import solve_and_store
from tests.scheduler.checker import check_plan
from tests.scheduler.county import CALENDAR, files


def _town(db: Database, **changes: str) -> None:
    data = files() | changes
    with db.session() as s:
        report = import_csv(s, data)
        assert report.ok, report.errors


def _need(plan, class_id: str, subject: str) -> dict:  # type: ignore[no-untyped-def]
    return next(u for u in plan.unserved if u["class_id"] == class_id and u["subject"] == subject)


def test_a_make_up_day_week_keeps_the_teachers_cap(db: Database) -> None:
    # 王老师 gives English on Monday and Wednesday with a cap of 2; the make-up Sunday
    # 2025-09-28 follows Wednesday, so that week would have three remote lessons.
    teachers = files()["teachers"].replace(
        "t-wang,zx,王老师,English,3;4;5,6", "t-wang,zx,王老师,English,3;4;5,2"
    )
    _town(db, teachers=teachers)
    with db.session() as s:
        plan, _ = solve_and_store(s, Options(time_limit_s=5))
        assert check_plan(s, plan.id) == []
        publish(s, plan.id)
    english = [u for u in plan.unserved if u["subject"] == "English" and u["class_id"] != "ly-g4"]
    assert english, "the cap must cost an English lesson"
    reasons = [r for u in english for r in u["reasons"]]
    cap = next(r for r in reasons if r["lever"] == "teacher_cap")
    assert "王老师(t-wang) 2→3" in cap["zh"]


def test_publishing_refuses_a_plan_the_new_calendar_breaks(db: Database) -> None:
    teachers = files()["teachers"].replace(
        "t-wang,zx,王老师,English,3;4;5,6", "t-wang,zx,王老师,English,3;4;5,2"
    )
    no_makeup = "\n".join(line for line in CALENDAR.splitlines() if "makeup" not in line) + "\n"
    _town(db, teachers=teachers, calendar=no_makeup)
    with db.session() as s:
        plan, _ = solve_and_store(s, Options(time_limit_s=5))
        assert import_csv(s, {"calendar": CALENDAR}).ok
        # Only the make-up week breaks the cap, and the refusal names it.
        with pytest.raises(
            ValueError, match=r"王老师\(t-wang\) cap 2, in the weeks of 2025-09-22 \(3\)$"
        ):
            publish(s, plan.id)


def test_a_shared_school_line_limits_lessons_at_once(db: Database) -> None:
    # 大山 gets two more classrooms and grade 4 classes; its one line is 4 Mbit/s, and
    # English at 2 Mbit/s can reach only two of its classrooms at once.
    data = files()
    schools = data["schools"].replace(
        "ds,大山教学点,c1,清水县,point", "ds,大山教学点,c1,清水县,point,4,2"
    )
    schools = schools.replace("kind\n", "kind,downlink_mbps,uplink_mbps\n", 1)
    classrooms = (
        data["classrooms"]
        + "ds-r2,ds,大山教室2,receiving,agent-ds2,4,2\nds-r3,ds,大山教室3,receiving,agent-ds3,4,2\n"
    )
    classes = data["classes"] + "ds-g4b,ds,4,grade 4 b,8,ds-r2\nds-g4c,ds,4,grade 4 c,8,ds-r3\n"
    needs = data["needs"] + "ds-g4b,English,2\nds-g4c,English,2\n"
    _town(db, schools=schools, classrooms=classrooms, classes=classes, needs=needs)
    with db.session() as s:
        plan, _ = solve_and_store(s, Options(time_limit_s=5))
        assert check_plan(s, plan.id) == []
    ds = [
        u for u in plan.unserved if u["class_id"].startswith("ds-g4") and u["subject"] == "English"
    ]
    # Two English lessons x two classrooms at once: 4 of the 6 periods, whatever the order.
    assert sum(u["required"] - u["served"] for u in ds) == 2
    assert any(r["lever"] == "school_line" for u in ds for r in u["reasons"])


def test_point_bells_tolerance(db: Database) -> None:
    # 小河 rings five minutes after 城关: inside the default 5-minute tolerance only.
    _town(db)
    with db.session() as s:
        ok, _ = solve_and_store(s, Options(time_limit_s=5))
        strict, _ = solve_and_store(s, Options(time_limit_s=5, bell_tolerance_min=4))
        soft, _ = solve_and_store(
            s, Options(time_limit_s=5, bell_tolerance_min=4, bells=BellRule.SOFT)
        )
        assert check_plan(s, strict.id) == [] and check_plan(s, soft.id) == []
    assert ok.stats["served"] == 4 and strict.stats["served"] == 2
    assert soft.stats["served"] == 4 and soft.stats["terms"]["off_bells"] == 2
    english = _need(strict, "xh-g4", "English")
    (r,) = english["reasons"]
    assert r["lever"] == "bells" and r["gain"] == 2
    assert "小河教学点(xh)" in r["zh"]


def test_bad_input_is_refused_or_explained(db: Database) -> None:
    clash = CALENDAR + "makeup,2025-10-02,,4,调休,\n"
    with db.session() as s:
        report = import_csv(s, files() | {"calendar": clash})
    assert not report.ok
    assert str(report.errors[0]) == (
        "calendar.csv line 5, column start: the make-up day 2025-10-02 is also a holiday"
    )
    # A point without bells, a teacher with a cap of 0, a link of 0 Mbit/s.
    data = files()
    bells = (
        "\n".join(line for line in data["bells"].splitlines() if not line.startswith("ds,")) + "\n"
    )
    teachers = data["teachers"].replace(
        "t-li,zx,李老师,Music;Art,3;4;5,6", "t-li,zx,李老师,Music;Art,3;4;5,0"
    )
    classrooms = data["classrooms"].replace(
        "ly-r1,ly,柳林教室,receiving,agent-ly,1,1", "ly-r1,ly,柳林教室,receiving,agent-ly,0,0"
    )
    busy = "class_id,weekday,period,subject\n"
    _town(db, bells=bells, teachers=teachers, classrooms=classrooms, busy=busy)
    with db.session() as s:
        plan, _ = solve_and_store(s, Options(time_limit_s=5))
        assert check_plan(s, plan.id) == []
    assert _need(plan, "ds-g4", "English")["reasons"][0]["code"] == "no_bells"
    assert "大山教学点(ds) 没有作息时间表" in _need(plan, "ds-g4", "English")["reasons"][0]["zh"]
    # 小河 is free on Tuesday now: only 李老师's cap of 0 keeps it from Music.
    (music,) = _need(plan, "xh-g4", "Music")["reasons"]
    assert music["lever"] == "teacher_cap" and "李老师(t-li) 0→1" in music["zh"]
    ly = _need(plan, "ly-g4", "English")["reasons"][0]
    assert ly["lever"] == "link" and "2 Mbit/s" in ly["zh"]


def test_a_two_way_lesson_names_the_uplink_that_blocks_it(db: Database) -> None:
    # English is two-way (each point sends its class camera back, 0.6 Mbit/s up);
    # 小河's classroom has the downlink but only 0.5 Mbit/s up.
    offers = files()["offers"].replace("stream_mbps\n", "stream_mbps,profile\n", 1)
    offers = offers.replace("t-wang,1,1,2\n", "t-wang,1,1,2,program-two-way\n")
    offers = offers.replace("t-wang,3,2,2\n", "t-wang,3,2,2,program-two-way\n")
    classrooms = files()["classrooms"].replace(
        "xh-r1,xh,小河教室,receiving,agent-xh,4,2", "xh-r1,xh,小河教室,receiving,agent-xh,4,0.5"
    )
    _town(db, offers=offers, classrooms=classrooms)
    with db.session() as s:
        plan, _ = solve_and_store(s, Options(time_limit_s=5))
        assert check_plan(s, plan.id) == []
    (link,) = _need(plan, "xh-g4", "English")["reasons"]
    assert link["lever"] == "link" and link["gain"] == 2
    # Only the uplink falls short, and only it is named.
    assert "把 小河教学点(xh) 的上行带宽提高到 0.6 Mbit/s，可多开 2 节" in link["zh"]
    assert "a 0.6 Mbit/s uplink at 小河教学点(xh) would serve 2 more" in link["en"]
    # 大山 has 2 Mbit/s up: the same lessons reach it.
    assert not [u for u in plan.unserved if u["class_id"] == "ds-g4" and u["subject"] == "English"]
