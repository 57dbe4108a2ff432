"""The CP-SAT model shared by the solver and the explainer.

Hard constraints can be guarded by assumption literals (`guard`), which is how the
explainer asks CP-SAT which constraints stop a need from being served.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from scheduler.problem import Mode, Problem

Guard = Callable[[Hashable], cp_model.IntVar | None]

# Objective weights. Served periods come first (开齐率): one more served period outweighs
# any realistic sum of the other terms, which only break ties among equally served plans.
W_SERVED = 1000
W_EXTRA_TEACHER = 20  # each extra master teacher a point class sees for one subject
W_CROSS_COUNTY = 10  # each point-lesson paired across a county border
W_MAX_LOAD = 2  # the busiest master teacher's point-lessons
W_MOVED = 3  # each master lesson moved out of its school's timetable slot
W_CHANGE = 30  # each point-lesson added to or removed from the previous plan
W_OFF_BELL = 5  # each point-lesson straddling a break of the point (soft bells only)


@dataclass
class Built:
    model: cp_model.CpModel
    x: dict[int, cp_model.IntVar]  # candidate -> joins
    active: dict[int, cp_model.IntVar | int]  # session -> given this week
    terms: dict[str, cp_model.LinearExpr | int] = field(default_factory=dict)
    objective: cp_model.LinearExpr | int = 0


def _at_most_one_in_time(
    model: cp_model.CpModel,
    items: Iterable[tuple[cp_model.IntVar | int, int, int]],
    guard: cp_model.IntVar | None,
) -> None:
    """At most one of the intervals [start, end) is on at any instant.

    For intervals, checking at every start point is exact: any overlap contains a start.
    """
    items = list(items)
    if len(items) < 2:
        return
    for t in sorted({s for _, s, _ in items}):
        live = [v for v, s, e in items if s <= t < e and not isinstance(v, int)]
        fixed_on = sum(1 for v, s, e in items if s <= t < e and isinstance(v, int) and v)
        if len(live) + fixed_on < 2:
            continue
        ct = model.Add(sum(live) <= 1 - fixed_on)
        if guard is not None:
            ct.OnlyEnforceIf(guard)


def kbps(mbps: float) -> int:
    return round(mbps * 1000)


def _capacity_in_time(
    model: cp_model.CpModel,
    items: list[tuple[cp_model.IntVar, int, int, int]],
    capacity: int,
    guard: cp_model.IntVar | None,
) -> None:
    """At every instant the loads of the intervals that are on add up to at most capacity."""
    items = [it for it in items if it[3] > 0]
    for t in sorted({s for _, s, _, _ in items}):
        live = [(v, load) for v, s, e, load in items if s <= t < e]
        if sum(load for _, load in live) <= capacity:
            continue
        ct = model.Add(sum(load * v for v, load in live) <= capacity)
        if guard is not None:
            ct.OnlyEnforceIf(guard)


def build(
    problem: Problem,
    cand_ids: list[int],
    *,
    guard: Guard | None = None,
    with_objective: bool = True,
    model: cp_model.CpModel | None = None,
) -> Built:
    opts = problem.options
    model = model if model is not None else cp_model.CpModel()
    g: Guard = guard or (lambda _key: None)
    cands = [problem.candidates[i] for i in cand_ids]
    x = {c.idx: model.NewBoolVar(f"x{c.idx}") for c in cands}

    session_ids = sorted({c.session for c in cands})
    offer_ids = sorted({problem.sessions[s].offer_id for s in session_ids})
    active: dict[int, cp_model.IntVar | int] = {}
    moved_terms = []
    for oid in offer_ids:
        sids = problem.offers[oid]
        if opts.mode == Mode.FIXED or len(sids) == 1:
            active[sids[0]] = 1
            continue
        for s in sids:
            active[s] = model.NewBoolVar(f"a{s}")
        model.AddExactlyOne(active[s] for s in sids)
        moved_terms.extend(active[s] for s in sids[1:])

    if opts.mode == Mode.MOVABLE:
        # Offers nobody can join stay in their slots, yet still block their teacher, class
        # and classroom for the lessons that move.
        keys = {
            (k, getattr(problem.sessions[s], k))
            for s in active
            for k in ("master_class_id", "teacher_id", "classroom_id")
        }
        for sids in problem.offers.values():
            ses = problem.sessions[sids[0]]
            if sids[0] not in active and any(
                (k, getattr(ses, k)) in keys
                for k in ("master_class_id", "teacher_id", "classroom_id")
            ):
                active[sids[0]] = 1

    by_session: dict[int, list[int]] = defaultdict(list)
    by_need: dict[int, list[int]] = defaultdict(list)
    for c in cands:
        by_session[c.session].append(c.idx)
        by_need[c.need_id].append(c.idx)

    for s, cs in by_session.items():
        act = active.get(s, 0)
        if isinstance(act, int):
            if not act:
                for i in cs:
                    model.Add(x[i] == 0)
                continue
            ct = model.Add(sum(x[i] for i in cs) <= opts.max_points)
        else:
            for i in cs:
                model.AddImplication(x[i], act)
            ct = model.Add(sum(x[i] for i in cs) <= opts.max_points * act)
        guard_lit = g(("cap", s))
        if guard_lit is not None:
            ct.OnlyEnforceIf(guard_lit)

    for n, cs in by_need.items():
        model.Add(sum(x[i] for i in cs) <= problem.needs[n].periods_per_week)

    # One lesson at a time per point class and per point classroom.
    per_class: dict[tuple[str, int], list] = defaultdict(list)
    per_room: dict[tuple[str, int], list] = defaultdict(list)
    for c in cands:
        s = problem.sessions[c.session]
        need = problem.needs[c.need_id]
        per_class[(need.class_id, s.weekday)].append((x[c.idx], s.start, s.end))
        per_room[(need.classroom_id, s.weekday)].append((x[c.idx], s.start, s.end))
    for (cid, _), items in per_class.items():
        _at_most_one_in_time(model, items, g(("class", cid)))
    for (rid, _), items in per_room.items():
        _at_most_one_in_time(model, items, g(("room", rid)))

    # One lesson at a time per master class, teacher and master classroom (only moving
    # lessons can collide: the schools' own timetables are checked at import).
    if opts.mode == Mode.MOVABLE:
        for attr, kind in (
            ("master_class_id", "mclass"),
            ("teacher_id", "teacher"),
            ("classroom_id", "mroom"),
        ):
            groups: dict[tuple[str, int], list] = defaultdict(list)
            for s, act in active.items():
                ses = problem.sessions[s]
                groups[(getattr(ses, attr), ses.weekday)].append((act, ses.start, ses.end))
            for (rid, _), items in groups.items():
                _at_most_one_in_time(model, items, g((kind, rid)))

    # A point school's classrooms share its line: at every instant the streams of the
    # lessons they take add up to at most the line (down; up for two-way lessons).
    per_school: dict[tuple[str, int], list] = defaultdict(list)
    for c in cands:
        s = problem.sessions[c.session]
        need = problem.needs[c.need_id]
        per_school[(need.school_id, s.weekday)].append(
            (x[c.idx], s.start, s.end, kbps(s.stream_mbps), kbps(s.point_up_mbps))
        )
    rooms_of: dict[str, set[str]] = defaultdict(set)
    for c in cands:
        need = problem.needs[c.need_id]
        rooms_of[need.school_id].add(need.classroom_id)
    for (sid, _), items in per_school.items():
        if len(rooms_of[sid]) < 2:
            # One classroom takes one lesson at a time, and a candidate's stream fits the
            # line (build_problem): the line cannot be exceeded, so no constraint.
            continue
        down, up = problem.school_link.get(sid, (0.0, 0.0))
        for k, cap in ((3, kbps(down)), (4, kbps(up))):
            _capacity_in_time(
                model, [(it[0], it[1], it[2], it[k]) for it in items], cap, g(("link", sid))
            )

    # Teacher weekly cap on remote lessons (master lessons that carry at least one point),
    # in every real calendar week: a make-up day repeats its weekday's lessons.
    per_teacher: dict[str, list[int]] = defaultdict(list)
    for s in by_session:
        per_teacher[problem.sessions[s].teacher_id].append(s)
    for t, sids in per_teacher.items():
        cap = problem.teacher_cap.get(t, 0)
        weights = [
            [week.get(problem.sessions[s].weekday, 0) for s in sids] for _, week in problem.weeks
        ]
        if all(sum(w) <= cap for w in weights):
            continue
        remote = []
        cap_free = g(("cap", sids[0])) is None
        for s in sids:
            r = model.NewBoolVar(f"r{s}")
            for i in by_session[s]:
                model.AddImplication(x[i], r)
            model.Add(r <= sum(x[i] for i in by_session[s]))
            if cap_free:
                # Redundant (implied by the points-per-lesson cap and x -> r), but it
                # tightens the LP: a fractional lesson cannot carry a full load of points.
                k = min(opts.max_points, len(by_session[s]))
                model.Add(sum(x[i] for i in by_session[s]) <= k * r)
            remote.append(r)
        guard_lit = g(("tcap", t))
        for w in {tuple(w) for w in weights if sum(w) > cap}:
            ct = model.Add(sum(wi * r for wi, r in zip(w, remote, strict=True) if wi) <= cap)
            if guard_lit is not None:
                ct.OnlyEnforceIf(guard_lit)

    built = Built(model=model, x=x, active=active)
    if not with_objective:
        return built

    served = sum(x.values())
    extra_teachers = []
    for n, cs in by_need.items():
        teachers: dict[str, list[int]] = defaultdict(list)
        for i in cs:
            teachers[problem.sessions[problem.candidates[i].session].teacher_id].append(i)
        if len(teachers) < 2:
            continue
        used = []
        for t, ids in teachers.items():
            z = model.NewBoolVar(f"z{n}_{t}")
            for i in ids:
                model.AddImplication(x[i], z)
            # Redundant, for the LP: one teacher gives this need at most k periods.
            k = min(problem.needs[n].periods_per_week, len(ids))
            if k < len(ids):
                model.Add(sum(x[i] for i in ids) <= k * z)
            used.append(z)
        # Seeing one teacher is free; each further one costs.
        e = model.NewIntVar(0, len(used), f"e{n}")
        model.Add(e >= sum(used) - 1)
        extra_teachers.append(e)
    cross = sum(x[c.idx] for c in cands if c.cross_county)
    max_load: cp_model.IntVar | int = 0
    if per_teacher:
        max_load = model.NewIntVar(0, len(cands), "maxload")
        for sids in per_teacher.values():
            model.Add(max_load >= sum(x[i] for s in sids for i in by_session[s]))
    moved = sum(moved_terms)
    changes: cp_model.LinearExpr | int = 0
    if problem.previous:
        change_terms = []
        for c in cands:
            if problem.key(c) in problem.previous:
                change_terms.append(1 - x[c.idx])
            else:
                change_terms.append(x[c.idx])
        changes = sum(change_terms)
    extra = sum(extra_teachers)
    off_bell = sum(x[c.idx] for c in cands if c.off_bell)
    built.terms = {
        "served": served,
        "extra_teachers": extra,
        "cross_county": cross,
        "max_load": max_load,
        "moved": moved,
        "changes": changes,
        "off_bells": off_bell,
    }
    built.objective = (
        W_SERVED * served
        - W_EXTRA_TEACHER * extra
        - W_CROSS_COUNTY * cross
        - W_MAX_LOAD * max_load
        - W_MOVED * moved
        - W_CHANGE * changes
        - W_OFF_BELL * off_bell
    )
    model.Maximize(built.objective)
    return built
