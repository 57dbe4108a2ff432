"""Operations shared by the CLI and the REST API: solve and store, read a plan, export."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.bells import clock
from scheduler.explain import explain
from scheduler.lessons import published_plan, series_id
from scheduler.problem import Options, build_problem, load_previous
from scheduler.school import Classroom, School, SchoolClass, Teacher
from scheduler.solver import Progress, Solution, solve
from scheduler.timetable import MasterOffer, Need, Plan, PlanLesson, weekday_name

# Kept back from the solve for the explanations, storing and committing the plan, and the
# command's summary and exit (measured on 2 shared cores: explaining takes 0.1-0.3 ms per
# need, storing, committing and exiting 0.5-1 s for a tier M or X county).
EXPLAIN_RESERVE_S = 1.0
EXPLAIN_S_PER_NEED = 0.001


def check_solvable(db: Session) -> None:
    """Refuse a solve of a county that has nothing to pair, before any work starts."""
    if db.scalar(select(func.count()).select_from(MasterOffer)) == 0:
        raise ValueError("no master lessons: import offers.csv (and the county) first")
    if db.scalar(select(func.count()).select_from(Need)) == 0:
        raise ValueError("no needs: import needs.csv first")


def solve_and_store(
    db: Session,
    options: Options,
    progress: Progress | None = None,
    *,
    keep_published: bool = True,
    started: float | None = None,
) -> tuple[Plan, Solution]:
    """Solve the county and store the result as a draft plan with its explanations.

    `started` is when the whole call began (`time.monotonic()`: the process start for the
    command line, the request for the API); the time limit counts from there, so start-up
    and loading the county come off the solve too. Default: now.
    """
    started = time.monotonic() if started is None else started
    check_solvable(db)
    if options.bell_tolerance_min < 0:
        raise ValueError("the bell tolerance is minutes into a break: 0 or more")
    problem = build_problem(db, options)
    published = published_plan(db)
    if keep_published and published is not None:
        problem.previous = load_previous(db, published.id)
    # The time limit is the whole call's wall time: what building the model took comes
    # off the solve, and so does a reserve for the explanations and storing the plan.
    reserve = EXPLAIN_RESERVE_S + EXPLAIN_S_PER_NEED * len(problem.needs)
    budget = options.time_limit_s - (time.monotonic() - started) - reserve
    problem.options = dataclasses.replace(options, time_limit_s=max(0.2, budget))
    solution = solve(problem, progress)
    problem.options = options
    explained = time.monotonic()
    unserved = explain(problem, solution)
    explain_s = time.monotonic() - explained
    plan = Plan(
        created_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
        status="draft",
        options={
            "max_points": options.max_points,
            "mode": options.mode.value,
            "cross_county": options.cross_county,
            "time_limit_s": options.time_limit_s,
            "bells": options.bells.value,
            "bell_tolerance_min": options.bell_tolerance_min,
        },
        stats=stats_of(solution, published.id if published and keep_published else None)
        | {"explain_s": round(explain_s, 3)},
        unserved=[u.as_dict() for u in unserved],
    )
    db.add(plan)
    db.flush()
    points: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for i in sorted(solution.chosen):
        c = problem.candidates[i]
        need = problem.needs[c.need_id]
        points[c.session].append(
            {"need_id": need.id, "class_id": need.class_id, "classroom_id": need.classroom_id}
        )
    for _oid, s in solution.active.items():
        ses = problem.sessions[s]
        db.add(
            PlanLesson(
                plan_id=plan.id,
                offer_id=ses.offer_id,
                master_class_id=ses.master_class_id,
                master_classroom_id=ses.classroom_id,
                teacher_id=ses.teacher_id,
                subject=ses.subject,
                grade=ses.grade,
                weekday=ses.weekday,
                start_min=ses.start,
                end_min=ses.end,
                moved=not ses.original,
                points=points.get(s, []),
            )
        )
    db.flush()
    plan.stats = plan.stats | {"wall_s": round(time.monotonic() - started, 3)}
    db.flush()
    return plan, solution


def stats_of(sol: Solution, against: int | None) -> dict[str, Any]:
    return {
        "demand": sol.demand,
        "served": sol.served,
        "served_ratio": round(sol.served_ratio, 4),
        "upper_bound": sol.upper_bound,
        "gap": round(sol.gap, 5),
        "served_gap": round(sol.served_gap, 5),
        "soft_gap": round(sol.soft_gap, 5),
        "optimal": sol.optimal,
        "greedy_served": sol.greedy_served,
        "solve_s": round(sol.solve_s, 3),
        "first_feasible_s": round(sol.first_feasible_s, 3),
        "terms": sol.terms,
        "changes_against_plan": against,
    }


def latest_plan(db: Session, plan_id: int | None = None) -> Plan:
    if plan_id is not None:
        plan = db.get(Plan, plan_id)
        if plan is None:
            raise ValueError(f"unknown plan {plan_id}")
        return plan
    plan = db.scalars(select(Plan).order_by(Plan.id.desc())).first()
    if plan is None:
        raise ValueError("no plan yet: run a solve first")
    return plan


def plan_view(db: Session, plan: Plan) -> dict[str, Any]:
    """A plan as the page and the JSON API show it: lessons with names, grids, pairings."""
    classes = {c.id: c for c in db.scalars(select(SchoolClass))}
    schools = {s.id: s for s in db.scalars(select(School))}
    rooms = {r.id: r for r in db.scalars(select(Classroom))}
    teachers = {t.id: t for t in db.scalars(select(Teacher))}
    lessons = []
    pairings: dict[tuple[str, str], dict[str, Any]] = {}
    for pl in db.scalars(
        select(PlanLesson)
        .where(PlanLesson.plan_id == plan.id)
        .order_by(PlanLesson.weekday, PlanLesson.start_min, PlanLesson.master_class_id)
    ):
        mclass = classes[pl.master_class_id]
        lesson = {
            "lesson_id": series_id(pl.master_class_id, pl.weekday, pl.start_min),
            "weekday": pl.weekday,
            "weekday_name": weekday_name(pl.weekday),
            "start": clock(pl.start_min),
            "end": clock(pl.end_min),
            "subject": pl.subject,
            "grade": pl.grade,
            "moved": pl.moved,
            "master_class": pl.master_class_id,
            "master_class_name": f"{schools[mclass.school_id].name} {mclass.name}",
            "master_school": mclass.school_id,
            "master_classroom": pl.master_classroom_id,
            "teacher": pl.teacher_id,
            "teacher_name": teachers[pl.teacher_id].name if pl.teacher_id in teachers else "",
            "points": [
                {
                    "class_id": p["class_id"],
                    "classroom_id": p["classroom_id"],
                    "school": classes[p["class_id"]].school_id,
                    "name": f"{schools[classes[p['class_id']].school_id].name} "
                    f"{classes[p['class_id']].name}",
                }
                for p in pl.points
            ],
        }
        lessons.append(lesson)
        for p in lesson["points"]:
            key = (mclass.school_id, p["school"])
            pair = pairings.setdefault(
                key,
                {
                    "master_school": mclass.school_id,
                    "master_school_name": schools[mclass.school_id].name,
                    "point_school": p["school"],
                    "point_school_name": schools[p["school"]].name,
                    "lessons": 0,
                    "subjects": set(),
                },
            )
            pair["lessons"] += 1
            pair["subjects"].add(pl.subject)
    return {
        "plan": {
            "id": plan.id,
            "status": plan.status,
            "created_at": plan.created_at.isoformat(),
            "options": plan.options,
            "stats": plan.stats,
        },
        "lessons": lessons,
        "pairings": [
            dict(p, subjects=sorted(p["subjects"]))
            for p in sorted(
                pairings.values(), key=lambda p: (p["master_school"], p["point_school"])
            )
        ],
        "unserved": plan.unserved,
        "schools": [
            {"id": s.id, "name": s.name, "kind": s.kind, "county": s.county_id}
            for s in sorted(schools.values(), key=lambda s: s.id)
        ],
        "classrooms": [
            {"id": r.id, "name": r.name, "school": r.school_id, "role": r.role}
            for r in sorted(rooms.values(), key=lambda r: r.id)
        ],
    }


def export_rows(db: Session, plan: Plan) -> list[dict[str, Any]]:
    view = plan_view(db, plan)
    rows = []
    for lesson in view["lessons"]:
        if not lesson["points"]:
            continue
        rows.append(
            {
                "lesson_id": lesson["lesson_id"],
                "weekday": lesson["weekday"],
                "start": lesson["start"],
                "end": lesson["end"],
                "master_classroom": lesson["master_classroom"],
                "teacher": lesson["teacher"],
                "subject": lesson["subject"],
                "grade": lesson["grade"],
                "points": ";".join(sorted({p["classroom_id"] for p in lesson["points"]})),
                "master_class": lesson["master_class"],
                "point_classes": ";".join(p["class_id"] for p in lesson["points"]),
                "teacher_name": lesson["teacher_name"],
            }
        )
    return rows


def county_summary(db: Session) -> dict[str, Any]:
    from scheduler.lessons import LessonInstance
    from scheduler.school import County

    def count(model: Any) -> int:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)

    return {
        "counties": count(County),
        "schools": count(School),
        "classrooms": count(Classroom),
        "teachers": count(Teacher),
        "classes": count(SchoolClass),
        "needs": count(Need),
        "demand": int(db.scalar(select(func.coalesce(func.sum(Need.periods_per_week), 0)))),
        "offers": count(MasterOffer),
        "plans": count(Plan),
        "instances": count(LessonInstance),
    }
