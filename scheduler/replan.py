"""Re-planning one or more dates after a teacher's absence or a point's degraded link.

Only the affected dates change. Each date is a small CP-SAT model over that day's master
lessons (as published), seeded with the published day and told to change as little as
possible; the result is written as one-off changes to that date's lesson instances and
listed change by change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass, field

from ortools.sat.python import cp_model
from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.bells import clock
from scheduler.lessons import (
    LessonInstance,
    current_term,
    instance_id,
    published_plan,
    series_id,
    term_days,
)
from scheduler.model import build
from scheduler.problem import BellRule, Candidate, Mode, Options, Problem, build_problem
from scheduler.school import Classroom, Teacher
from scheduler.timetable import WEEKDAY_NAMES_ZH, PlanLesson

REPLAN_TIME_S = 4.0


@dataclass
class Change:
    date: str
    lesson_id: str
    kind: str  # "lesson cancelled", "point removed", "point added", "lesson added"
    classroom_id: str
    class_id: str
    text: str
    text_zh: str = ""

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass
class ReplanReport:
    dates: list[str]
    served_before: int
    served_after: int
    changes: list[Change] = field(default_factory=list)
    solve_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "dates": self.dates,
            "served_before": self.served_before,
            "served_after": self.served_after,
            "solve_s": round(self.solve_s, 3),
            "changes": [c.as_dict() for c in self.changes],
        }


def replan(
    db: Session,
    dates: list[dt.date],
    *,
    absent_teacher: str | None = None,
    classroom_id: str | None = None,
    downlink_mbps: float | None = None,
) -> ReplanReport:
    started = time.monotonic()
    plan = published_plan(db)
    if plan is None:
        raise ValueError("nothing is published yet: publish a plan before re-planning")
    if absent_teacher is None and classroom_id is None:
        raise ValueError("say what happened: an absent teacher or a classroom's degraded link")
    if absent_teacher is not None and db.get(Teacher, absent_teacher) is None:
        raise ValueError(f"unknown teacher {absent_teacher!r}")
    if classroom_id is not None:
        if db.get(Classroom, classroom_id) is None:
            raise ValueError(f"unknown classroom {classroom_id!r}")
        if downlink_mbps is None:
            raise ValueError("give the degraded downlink in Mbit/s")
    term = current_term(db)
    weekday_of = dict(term_days(db, term))
    bad = [d for d in dates if d not in weekday_of]
    if bad:
        raise ValueError(f"{', '.join(map(str, bad))}: not a school day of the term")
    opts = Options(**{k: v for k, v in plan.options.items() if k in ("max_points", "cross_county")})
    opts.mode = Mode(plan.options.get("mode", "fixed"))
    opts.bells = BellRule(plan.options.get("bells", "hard"))
    opts.bell_tolerance_min = int(plan.options.get("bell_tolerance_min", 5))
    problem = build_problem(db, opts)
    report = ReplanReport([d.isoformat() for d in dates], 0, 0)
    for date in dates:
        _replan_day(
            db,
            problem,
            plan.id,
            date,
            weekday_of[date],
            absent_teacher,
            classroom_id,
            downlink_mbps,
            report,
        )
    report.solve_s = time.monotonic() - started
    return report


def _replan_day(
    db: Session,
    problem: Problem,
    plan_id: int,
    date: dt.date,
    weekday: int,
    absent: str | None,
    room: str | None,
    downlink: float | None,
    report: ReplanReport,
) -> None:
    lessons = [
        pl
        for pl in db.scalars(
            select(PlanLesson).where(PlanLesson.plan_id == plan_id, PlanLesson.weekday == weekday)
        )
    ]
    place = {(s.offer_id, s.weekday, s.start): s.idx for s in problem.sessions}
    active = {
        pl.offer_id: place[(pl.offer_id, pl.weekday, pl.start_min)]
        for pl in lessons
        if (pl.offer_id, pl.weekday, pl.start_min) in place
    }
    need_of = {(n.class_id, n.subject): n.id for n in problem.needs.values()}
    instances = {
        i.id: i for i in db.scalars(select(LessonInstance).where(LessonInstance.date == date))
    }
    # The day as it stands (earlier re-plans of this date included).
    baseline: set[tuple[int, int]] = set()  # (need id, session)
    for pl in lessons:
        sid = active.get(pl.offer_id)
        if sid is None:
            continue
        inst = instances.get(
            instance_id(series_id(pl.master_class_id, weekday, pl.start_min), date)
        )
        if inst is not None:
            classes = inst.point_classes if inst.status != "cancelled" else []
            for cid in classes:
                n = need_of.get((cid, pl.subject))
                if n is not None:
                    baseline.add((n, sid))
    per_need: dict[int, int] = {}
    for n, _ in baseline:
        per_need[n] = per_need.get(n, 0) + 1
    cands: list[Candidate] = []
    for c in problem.candidates:
        s = problem.sessions[c.session]
        if active.get(s.offer_id) != c.session or c.need_id not in per_need:
            continue
        if absent is not None and s.teacher_id == absent:
            continue
        need = problem.needs[c.need_id]
        if (
            room is not None
            and need.classroom_id == room
            and downlink is not None
            and (s.stream_mbps > downlink)
        ):
            continue
        cands.append(Candidate(len(cands), c.need_id, c.session, c.cross_county, c.off_bell))
    day_needs = {
        n: dataclasses.replace(problem.needs[n], periods_per_week=k) for n, k in per_need.items()
    }
    day = Problem(
        options=dataclasses.replace(problem.options, mode=Mode.FIXED),
        sessions=problem.sessions,
        offers={oid: [sid] for oid, sid in active.items()},
        needs=day_needs,
        candidates=cands,
        teacher_cap={},
        names=problem.names,
        funnel=problem.funnel,
        school_link=problem.school_link,
        school_of_room=problem.school_of_room,
        previous={
            (n, problem.sessions[s].offer_id, weekday, problem.sessions[s].start)
            for n, s in baseline
        },
    )
    # A teacher's weekly cap does not bind within one re-planned day.
    day.teacher_cap = {t: 10_000 for t in problem.teacher_cap}
    built = build(day, [c.idx for c in cands])
    for c in cands:
        built.model.AddHint(built.x[c.idx], (c.need_id, c.session) in baseline)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = REPLAN_TIME_S / 2
    solver.parameters.num_workers = 2
    status = solver.Solve(built.model)
    after: set[tuple[int, int]] = set()
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        after = {(c.need_id, c.session) for c in cands if solver.Value(built.x[c.idx])}
    report.served_before += len(baseline)
    report.served_after += len(after)
    _apply(db, problem, date, weekday, baseline, after, absent, room, downlink, instances, report)


def _apply(
    db: Session,
    problem: Problem,
    date: dt.date,
    weekday: int,
    before: set[tuple[int, int]],
    after: set[tuple[int, int]],
    absent: str | None,
    room: str | None,
    downlink: float | None,
    instances: dict[str, LessonInstance],
    report: ReplanReport,
) -> None:
    sessions = {s for _, s in before | after}
    if absent is not None:
        sessions |= {s for s in sessions if problem.sessions[s].teacher_id == absent}
    why = (
        f"{problem.names.get(absent, absent)}({absent}) absent"
        if absent
        else f"{problem.names.get(room or '', room)}({room}) link down to {downlink:g} Mbit/s"
    )
    why_zh = (
        f"{problem.names.get(absent, absent)}({absent}) 请假"
        if absent
        else f"{problem.names.get(room or '', room)}({room}) 下行降到 {downlink:g} Mbit/s"
    )
    for s in sorted(sessions):
        ses = problem.sessions[s]
        lid = instance_id(series_id(ses.master_class_id, weekday, ses.start), date)
        old = sorted(n for n, x in before if x == s)
        new = sorted(n for n, x in after if x == s)
        inst = instances.get(lid)
        teacher_out = absent is not None and ses.teacher_id == absent
        if old == new and not (teacher_out and inst is not None and inst.status != "cancelled"):
            continue
        title = (
            f"{weekday_name_short(weekday)} {clock(ses.start)} "
            f"{problem.names.get(ses.master_class_id)}({ses.master_class_id}) {ses.subject}"
        )
        title_zh = (
            f"{WEEKDAY_NAMES_ZH[weekday - 1]} {clock(ses.start)} "
            f"{problem.names.get(ses.master_class_id)}({ses.master_class_id}) {ses.subject}"
        )
        if inst is None:
            inst = LessonInstance(
                id=lid,
                series_id=series_id(ses.master_class_id, weekday, ses.start),
                date=date,
                start_at=dt.datetime.combine(date, dt.time(ses.start // 60, ses.start % 60)),
                end_at=dt.datetime.combine(date, dt.time(ses.end // 60, ses.end % 60)),
                title=(
                    f"{ses.subject} · {problem.names.get(ses.master_class_id)} · "
                    f"{problem.names.get(ses.teacher_id, ses.teacher_id)}"
                ),
                master_class_id=ses.master_class_id,
                master_classroom_id=ses.classroom_id,
                teacher_id=ses.teacher_id,
                subject=ses.subject,
                grade=ses.grade,
                points=[],
                point_classes=[],
                status="scheduled",
                sequence=0,
                override=True,
                note=why,
            )
            db.add(inst)
            instances[lid] = inst
            report.changes.append(
                Change(
                    date.isoformat(),
                    lid,
                    "lesson added",
                    ses.classroom_id,
                    ses.master_class_id,
                    f"{title}: now given as a remote lesson",
                    f"{title_zh}：改为远程课",
                )
            )
        removed = [n for n in old if n not in new]
        added = [n for n in new if n not in old]
        for n in removed:
            need = problem.needs[n]
            report.changes.append(
                Change(
                    date.isoformat(),
                    lid,
                    "point removed",
                    need.classroom_id,
                    need.class_id,
                    f"{title}: {need.class_label or need.label} no longer joins ({why})",
                    f"{title_zh}：{need.class_label or need.label} 不再加入（{why_zh}）",
                )
            )
        for n in added:
            need = problem.needs[n]
            report.changes.append(
                Change(
                    date.isoformat(),
                    lid,
                    "point added",
                    need.classroom_id,
                    need.class_id,
                    f"{title}: {need.class_label or need.label} joins instead",
                    f"{title_zh}：改由 {need.class_label or need.label} 加入",
                )
            )
        inst.point_classes = sorted(problem.needs[n].class_id for n in new)
        inst.points = sorted({problem.needs[n].classroom_id for n in new})
        if teacher_out or not new:
            if inst.status != "cancelled":
                report.changes.append(
                    Change(
                        date.isoformat(),
                        lid,
                        "lesson cancelled",
                        ses.classroom_id,
                        ses.master_class_id,
                        f"{title}: no remote lesson ({why})",
                        f"{title_zh}：本次不上远程课（{why_zh}）",
                    )
                )
            inst.status = "cancelled"
        else:
            inst.status = "scheduled"
        inst.override = True
        inst.note = why
        inst.sequence += 1
    db.flush()


def weekday_name_short(weekday: int) -> str:
    from scheduler.timetable import weekday_name

    return weekday_name(weekday)
