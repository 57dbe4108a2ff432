from __future__ import annotations

import subprocess
import sys
import time

import pytest

from scheduler.countygen import generate
from scheduler.csvio import import_csv
from scheduler.db import Database
from scheduler.problem import Mode, Options, build_problem
from scheduler.service import solve_and_store
from tests.scheduler.checker import check_plan


def _reasons(plan, class_id: str, subject: str) -> list[dict]:  # type: ignore[no-untyped-def]
    for u in plan.unserved:
        if u["class_id"] == class_id and u["subject"] == subject:
            return u["reasons"]
    raise AssertionError(f"{class_id} {subject} is served")


def test_town_plan_is_valid_and_explains_every_unserved_need(town: Database) -> None:
    with town.session() as s:
        plan, sol = solve_and_store(s, Options(time_limit_s=5))
        assert check_plan(s, plan.id) == []
    assert sol.optimal and sol.served == 4 and sol.served >= sol.greedy_served
    # 小河 grade 4 is busy all Tuesday morning: only its own period 3 stands in the way.
    music, move = _reasons(plan, "xh-g4", "Music")
    assert move["lever"] == "move_lesson" and "周二 10:00-10:40 → 周一 08:50-09:30" in move["zh"]
    assert music["lever"] == "timetable" and music["gain"] == 1
    assert "小河教学点(xh) grade 4(xh-g4) 自己的课（周二第3节）调开，可多开 1 节" in music["zh"]
    assert "moving 小河教学点(xh) grade 4(xh-g4)'s own lesson(s) (Tue period 3)" in music["en"]
    (art,) = _reasons(plan, "ds-g4", "Art")
    assert art["code"] == "no_offer" and "4年级Art" in art["zh"]
    (link,) = _reasons(plan, "ly-g4", "English")
    assert link["lever"] == "link" and link["relax"]["mbps"] == 2.0
    assert "把 柳林教学点(ly) 的下行带宽提高到 2 Mbit/s，可多开 1 节" in link["zh"]
    assert "a 2 Mbit/s downlink at 柳林教学点(ly) would serve 1 more period(s)" in link["en"]
    (science,) = _reasons(plan, "xh-g4", "Science")
    assert science["lever"] == "cross_county" and "清水县" in science["zh"]


def test_full_lessons_name_the_points_per_lesson_lever(town: Database) -> None:
    with town.session() as s:
        plan, sol = solve_and_store(s, Options(time_limit_s=5, max_points=1))
        assert check_plan(s, plan.id) == []
    # Two English lessons with one point each: 小河 and 大山 want two periods each.
    assert sol.served == 2
    short = [
        u
        for u in plan.unserved
        if u["subject"] == "English" and u["grade"] == 4 and u["class_id"] in ("xh-g4", "ds-g4")
    ]
    assert short
    for u in short:
        (r,) = u["reasons"]
        assert r["lever"] == "points_per_lesson" and r["gain"] == 2, r
        assert "每节课允许 2 个教学点" in r["zh"] and "王老师(t-wang)" in r["zh"]


def test_cross_county_when_allowed(town: Database) -> None:
    with town.session() as s:
        plan, sol = solve_and_store(s, Options(time_limit_s=5, cross_county=True))
        assert check_plan(s, plan.id) == []
    assert sol.served == 5 and sol.terms["cross_county"] == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_towns_are_valid_optimal_and_beat_greedy(db: Database, seed: int) -> None:
    with db.session() as s:
        assert import_csv(s, generate("S", seed)).ok
        plan, sol = solve_and_store(s, Options(time_limit_s=10, seed=seed))
        assert check_plan(s, plan.id) == []
    assert sol.optimal and sol.served >= sol.greedy_served
    assert sol.served <= sol.upper_bound <= sol.demand
    assert all(u["reasons"] for u in plan.unserved)


def test_movable_master_lessons_serve_more_and_stay_valid(db: Database) -> None:
    with db.session() as s:
        assert import_csv(s, generate("S", 4)).ok
        fixed, f_sol = solve_and_store(s, Options(time_limit_s=10))
        moved, m_sol = solve_and_store(
            s, Options(time_limit_s=10, mode=Mode.MOVABLE), keep_published=False
        )
        assert check_plan(s, fixed.id) == [] and check_plan(s, moved.id) == []
        p = build_problem(s, Options(mode=Mode.MOVABLE))
    assert m_sol.served >= f_sol.served
    assert m_sol.served > f_sol.served or m_sol.terms["moved"] == 0
    assert len(p.sessions) > len(p.offers)


def test_points_per_lesson_limit_is_respected(db: Database) -> None:
    with db.session() as s:
        assert import_csv(s, generate("S", 5)).ok
        plan, _ = solve_and_store(s, Options(time_limit_s=10, max_points=2))
        assert check_plan(s, plan.id) == []
        from scheduler.service import plan_view

        assert max(len(lesson["points"]) for lesson in plan_view(s, plan)["lessons"]) <= 2


def test_the_time_limit_counts_from_the_start_of_the_call(
    town: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the call spent before the solve (start-up, loading) comes off CP-SAT's share,
    and so does the reserve for explaining and storing."""
    import scheduler.service
    from scheduler.service import EXPLAIN_RESERVE_S, EXPLAIN_S_PER_NEED

    given: list[float] = []
    real_solve = scheduler.service.solve

    def spy(problem, progress=None):  # type: ignore[no-untyped-def]
        given.append(problem.options.time_limit_s)
        return real_solve(problem, progress)

    monkeypatch.setattr(scheduler.service, "solve", spy)
    with town.session() as s:
        started = time.monotonic() - 3.0  # as if start-up had taken 3 s
        plan, _ = solve_and_store(s, Options(time_limit_s=10), started=started)
    reserve = EXPLAIN_RESERVE_S + EXPLAIN_S_PER_NEED * 6
    assert 0 < given[0] <= 10 - 3.0 - reserve
    assert plan.stats["wall_s"] >= 3.0  # the stored wall time counts from the call's start
    assert plan.options["time_limit_s"] == 10


def test_process_started_is_the_process_start() -> None:
    code = (
        "import time; time.sleep(0.6); from scheduler.cli import process_started; "
        "print(time.monotonic() - process_started())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0.6 <= float(out.stdout) < 30
