"""Why a need is not fully served, in the scheduler's words, derived from the model.

Two sources, both facts of the model rather than guesses:
- the candidate funnel: which filter (subject and grade, county, link, clock alignment)
  left the need with too few master lessons to join;
- CP-SAT assumptions: the need is asked for one more period while every other need keeps
  what it has; each hard constraint group carries an assumption literal, and the
  infeasible subset CP-SAT returns names the constraints that stand in the way.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from ortools.sat.python import cp_model

from scheduler.bells import clock
from scheduler.model import build
from scheduler.problem import NeedInfo, Problem
from scheduler.solver import Solution, components
from scheduler.timetable import weekday_name

EXPLAIN_TIME_S = 2.0


@dataclass
class Unserved:
    need_id: int
    class_id: str
    label: str
    subject: str
    grade: int
    required: int
    served: int
    reasons: list[str]

    def as_dict(self) -> dict[str, object]:
        return self.__dict__.copy()


def _what(need: NeedInfo) -> str:
    return f"grade {need.grade} {need.subject} master lesson"


def _funnel_reason(problem: Problem, need: NeedInfo) -> str | None:
    f = problem.funnel[need.id]
    what = _what(need)
    county = problem.names.get(need.county_id, need.county_id)
    if f.same_subject_grade == 0:
        return f"no {what} is offered by any central school"
    if f.allowed_county == 0:
        return (
            f"{what}s are offered only outside {county}, and cross-county pairing is switched off"
        )
    if f.link_ok == 0:
        return (
            f"the downlink of {need.label} ({need.downlink_mbps:g} Mbit/s) cannot carry "
            f"the stream of any {what} (the lightest needs {f.best_stream_mbps:g} Mbit/s)"
        )
    if f.aligned == 0:
        return f"no {what} overlaps a free period of {need.label} on any day"
    return None


def _session_text(problem: Problem, s: int) -> str:
    ses = problem.sessions[s]
    return (
        f"{weekday_name(ses.weekday)} {clock(ses.start)} "
        f"{problem.names.get(ses.master_class_id)}"
        f" ({problem.names.get(ses.teacher_id, ses.teacher_id)})"
    )


def explain(problem: Problem, solution: Solution) -> list[Unserved]:
    served: dict[int, int] = {n: 0 for n in problem.needs}
    for i in solution.chosen:
        served[problem.candidates[i].need_id] += 1
    part_of: dict[int, list[int]] = {}
    for part in components(problem):
        for i in part:
            part_of[problem.candidates[i].need_id] = part
    out = []
    for n, need in problem.needs.items():
        if served[n] >= need.periods_per_week:
            continue
        reasons = []
        funnel = _funnel_reason(problem, need)
        if funnel:
            reasons.append(funnel)
        else:
            reasons.extend(_core_reasons(problem, solution, need, served, part_of[n]))
        out.append(
            Unserved(
                n,
                need.class_id,
                need.label,
                need.subject,
                need.grade,
                need.periods_per_week,
                served[n],
                reasons,
            )
        )
    return out


def _core_reasons(
    problem: Problem, solution: Solution, need: NeedInfo, served: dict[int, int], part: list[int]
) -> list[str]:
    sessions = {problem.candidates[i].session for i in problem.by_need[need.id]}
    # Needs that could compete: they share a lesson with this need or its class/classroom.
    rivals = {need.id}
    for i in part:
        c = problem.candidates[i]
        other = problem.needs[c.need_id]
        if (
            c.session in sessions
            or other.class_id == need.class_id
            or (other.classroom_id == need.classroom_id)
        ):
            rivals.add(c.need_id)
    model = cp_model.CpModel()
    literals: dict[Hashable, cp_model.IntVar] = {}

    def guard(key: Hashable) -> cp_model.IntVar:
        if key not in literals:
            literals[key] = model.NewBoolVar(str(key))
        return literals[key]

    built = build(problem, part, guard=guard, with_objective=False, model=model)
    x = built.x
    by_need: dict[int, list[int]] = {}
    for i in part:
        by_need.setdefault(problem.candidates[i].need_id, []).append(i)
    model.Add(sum(x[i] for i in by_need[need.id]) >= served[need.id] + 1)
    for m, ids in by_need.items():
        if m == need.id:
            continue
        if m in rivals:
            keep = literals.setdefault(("keep", m), model.NewBoolVar(f"keep{m}"))
            model.Add(sum(x[i] for i in ids) >= served[m]).OnlyEnforceIf(keep)
        else:
            # Lessons of unrelated needs stay exactly as planned.
            for i in ids:
                model.Add(x[i] == int(i in solution.chosen))
    model.ClearAssumptions()
    model.AddAssumptions(list(literals.values()))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = EXPLAIN_TIME_S
    solver.parameters.num_workers = 1
    status = solver.Solve(model)
    what = _what(need)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return [
            "one more period could be served by solving again with more time (the solve "
            "stopped before proving the plan best)"
        ]
    aligned = len(sessions)
    if status != cp_model.INFEASIBLE:
        return [
            f"{aligned} {what}s align with free periods of {need.label}, but the "
            "explanation search ran out of time"
        ]
    names = {v.Index(): k for k, v in literals.items()}
    core = [names[i] for i in solver.SufficientAssumptionsForInfeasibility() if i in names]
    reasons: list[str] = []
    full = sorted(k[1] for k in core if k[0] == "cap")
    if not core:
        times = {(problem.sessions[s].weekday, problem.sessions[s].start) for s in sessions}
        return [
            f"only {len(times)} time(s) of {what}s align with free periods of {need.label}"
            f" ({need.periods_per_week} needed)"
        ]
    if full:
        shown = "; ".join(_session_text(problem, s) for s in full[:4])
        more = f" and {len(full) - 4} more" if len(full) > 4 else ""
        reasons.append(
            f"every {what} that fits {need.label}'s free periods already takes "
            f"{problem.options.max_points} points, the most per lesson: {shown}{more}"
        )
    for k in core:
        if k[0] == "tcap":
            reasons.append(
                f"{problem.names.get(k[1], k[1])} has reached the weekly cap of "
                f"{problem.teacher_cap.get(k[1], 0)} remote lessons"
            )
        elif k[0] == "class":
            reasons.append(
                f"{problem.names.get(k[1], k[1])} takes another remote lesson at "
                f"the times {what}s are given"
            )
        elif k[0] == "room" and k[1] == need.classroom_id:
            reasons.append(
                f"classroom {problem.names.get(k[1], k[1])} of {need.label} is "
                f"used by another class's remote lesson at those times"
            )
        elif k[0] in ("mclass", "teacher", "mroom"):
            reasons.append(
                f"{problem.names.get(k[1], k[1])} has no other free period to move a lesson into"
            )
    rivals_in_core = sorted(k[1] for k in core if k[0] == "keep")
    if rivals_in_core:
        labels = sorted(
            {f"{problem.needs[m].label} {problem.needs[m].subject}" for m in rivals_in_core}
        )
        shown = ", ".join(labels[:4]) + (f" and {len(labels) - 4} more" if len(labels) > 4 else "")
        reasons.append(f"serving it would take a period away from {shown}")
    return reasons
