"""Solve the shared timetable with OR-Tools CP-SAT.

The county splits into independent parts (needs and master lessons that share no class,
classroom, teacher or lesson); each part is its own CP-SAT model, given a share of the
time limit in proportion to its size, so a city solves county by county.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ortools.sat.python import cp_model

from scheduler.greedy import greedy
from scheduler.model import (
    W_CHANGE,
    W_CROSS_COUNTY,
    W_EXTRA_TEACHER,
    W_MAX_LOAD,
    W_OFF_BELL,
    W_SERVED,
    Built,
    build,
)
from scheduler.problem import Options, Problem

# Full-problem subsolvers per stage when there are at least two workers (LNS helpers run
# alongside them): max_lp proves the bound on served periods within seconds.
STAGE1_SUBSOLVERS: tuple[str, ...] = ("max_lp", "core")
STAGE2_SUBSOLVERS: tuple[str, ...] = ("max_lp", "default_lp")

Progress = Callable[[dict[str, Any]], None]


@dataclass
class Solution:
    chosen: set[int]  # candidate indices
    active: dict[int, int]  # offer id -> session index where it is given
    demand: int
    served: int
    upper_bound: int  # proven most periods that can be served
    objective: float
    bound: float
    gap: float  # relative gap between the objective and CP-SAT's bound
    optimal: bool
    first_feasible_s: float
    solve_s: float
    greedy_served: int
    terms: dict[str, int] = field(default_factory=dict)
    penalty: float = 0.0  # the soft terms' weighted sum (stage 2's objective, minimised)
    penalty_bound: float = 0.0  # CP-SAT's lower bound on it, served held at its best
    soft_gap: float = 0.0  # (penalty - penalty_bound) / penalty

    @property
    def served_gap(self) -> float:
        return (self.upper_bound - self.served) / self.upper_bound if self.upper_bound else 0.0

    @property
    def served_ratio(self) -> float:
        return self.served / self.demand if self.demand else 1.0


class _Uf:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, a: Any) -> Any:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: Any, b: Any) -> None:
        self.parent[self.find(a)] = self.find(b)


def components(problem: Problem) -> list[list[int]]:
    """Candidate index lists of the independent parts, largest first."""
    uf = _Uf()
    for c in problem.candidates:
        s = problem.sessions[c.session]
        need = problem.needs[c.need_id]
        anchor = ("offer", s.offer_id)
        for other in (
            ("class", need.class_id),
            ("room", need.classroom_id),
            ("school", need.school_id),  # its classrooms share one line
            ("teacher", s.teacher_id),
            ("mclass", s.master_class_id),
            ("mroom", s.classroom_id),
        ):
            uf.union(anchor, other)
    parts: dict[Any, list[int]] = {}
    for c in problem.candidates:
        root = uf.find(("offer", problem.sessions[c.session].offer_id))
        parts.setdefault(root, []).append(c.idx)
    return sorted(parts.values(), key=len, reverse=True)


class _Watcher(cp_model.CpSolverSolutionCallback):
    def __init__(self, on_solution: Callable[[float, float, float], None]) -> None:
        super().__init__()
        self._on_solution = on_solution

    def on_solution_callback(self) -> None:
        self._on_solution(self.WallTime(), self.ObjectiveValue(), self.BestObjectiveBound())


def _solver(opts: Options, seconds: float, subsolvers: tuple[str, ...] = ()) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = seconds
    solver.parameters.num_workers = opts.workers
    solver.parameters.random_seed = opts.seed
    if opts.workers >= 2:
        # On few workers the default portfolio runs one full subsolver (default_lp), whose
        # LP bound on served periods stalls; max_lp (full linearisation with cuts) proves it.
        for name in subsolvers:
            solver.parameters.subsolvers.append(name)
    return solver


def _hint(built: Built, xs: dict[int, int], acts: dict[int, int]) -> None:
    for i, var in built.x.items():
        built.model.AddHint(var, xs.get(i, 0))
    for s, act in built.active.items():
        if not isinstance(act, int):
            built.model.AddHint(act, acts.get(s, 0))


def _full_hint(model: cp_model.CpModel, solver: cp_model.CpSolver) -> None:
    """Hint every variable with the solver's last solution (a complete, feasible hint)."""
    model.ClearHints()
    values = solver.ResponseProto().solution
    for k, v in enumerate(values):
        model.Proto().solution_hint.vars.append(k)
        model.Proto().solution_hint.values.append(v)


def _keep_greedy(
    problem: Problem, cand_ids: list[int], base: set[int], totals: dict[str, int]
) -> float:
    """Add the soft terms of the greedy plan on one part (its lessons stay in place) to
    the totals, counted from the plan itself; returns its penalty."""
    chosen = [i for i in cand_ids if i in base]
    teachers: dict[int, set[str]] = defaultdict(set)
    load: dict[str, int] = defaultdict(int)
    for i in chosen:
        c = problem.candidates[i]
        t = problem.sessions[c.session].teacher_id
        teachers[c.need_id].add(t)
        load[t] += 1
    terms = {
        "served": len(chosen),
        "extra_teachers": sum(len(ts) - 1 for ts in teachers.values()),
        "cross_county": sum(1 for i in chosen if problem.candidates[i].cross_county),
        "max_load": max(load.values(), default=0),
        "moved": 0,
        "changes": sum(
            (problem.key(problem.candidates[i]) in problem.previous) != (i in base)
            for i in cand_ids
        )
        if problem.previous
        else 0,
        "off_bells": sum(1 for i in chosen if problem.candidates[i].off_bell),
    }
    for name, value in terms.items():
        totals[name] = (
            max(totals.get(name, 0), value) if name == "max_load" else totals.get(name, 0) + value
        )
    return float(
        W_EXTRA_TEACHER * terms["extra_teachers"]
        + W_CROSS_COUNTY * terms["cross_county"]
        + W_MAX_LOAD * terms["max_load"]
        + W_CHANGE * terms["changes"]
        + W_OFF_BELL * terms["off_bells"]
    )


def _complete_hint(model: cp_model.CpModel, seconds: float) -> bool:
    """Hint every variable (the aux ones too) from the plan hinted on x and placements.

    CP-SAT may drop a partial hint it cannot complete quickly; stage 2 without stage 1
    starts from the greedy plan, so the plan it returns is never worse than greedy's."""
    probe = model.clone()
    hint = model.Proto().solution_hint
    for k, v in zip(hint.vars, hint.values, strict=True):
        probe.Add(probe.get_int_var_from_proto_index(k) == v)
    probe.ClearObjective()
    probe.ClearHints()
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.1, seconds)
    solver.parameters.num_workers = 1
    if solver.Solve(probe) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return False
    _full_hint(model, solver)
    return True


def solve(problem: Problem, progress: Progress | None = None) -> Solution:
    """Lexicographic solve, part by part.

    Stage 1 maximises served periods (at least the greedy plan's) and tries to prove the
    bound; stage 2 keeps served at stage 1's best and minimises the soft penalty
    (W_EXTRA_TEACHER x extra teachers + W_CROSS_COUNTY x cross-county pairings +
    W_MAX_LOAD x busiest teacher's load + W_MOVED x moved lessons + W_CHANGE x changes).
    The greedy plan is feasible, so it is the first plan (and the fallback of every part).
    """
    opts = problem.options
    started = time.monotonic()
    deadline = started + opts.time_limit_s
    base = greedy(problem)
    parts = components(problem)
    first_feasible = time.monotonic() - started
    total = sum(len(p) for p in parts) or 1
    remaining = total
    chosen: set[int] = set(base)
    active: dict[int, int] = {oid: sids[0] for oid, sids in problem.offers.items()}
    all_optimal = True
    terms_total: dict[str, int] = {}
    served_ub = 0
    penalty = penalty_lb = 0.0
    objective = bound = 0.0
    done_objective = done_bound = 0.0

    def report(part: int, obj: float, bnd: float, served: int | None) -> None:
        if progress is None:
            return
        progress(
            {
                "part": part + 1,
                "parts": len(parts),
                "elapsed_s": round(time.monotonic() - started, 2),
                "served": served,
                "objective": done_objective + obj,
                "bound": done_bound + bnd,
                "fraction": min(1.0, (total - remaining) / total),
            }
        )

    for k, cand_ids in enumerate(parts):
        built = build(problem, cand_ids)
        model = built.model
        floor = sum(1 for i in cand_ids if i in base)
        served_expr = built.terms["served"]
        # Never serve fewer periods than the greedy baseline does on this part.
        if floor:
            model.Add(served_expr >= floor)
        hint_a = {
            s: int(problem.sessions[s].original)
            for s, a in built.active.items()
            if not isinstance(a, int)
        }
        hint_x = {i: int(i in base) for i in built.x}
        _hint(built, hint_x, hint_a)
        share = len(cand_ids) / remaining
        part_deadline = time.monotonic() + max(0.3, (deadline - time.monotonic()) * share)

        # Each need serves at most min(its candidates, its periods): when the greedy plan
        # already reaches that, it is proven best on served and stage 1 is skipped.
        per_need: dict[int, int] = {}
        for i in cand_ids:
            n = problem.candidates[i].need_id
            per_need[n] = per_need.get(n, 0) + 1
        trivial = sum(min(c, problem.needs[n].periods_per_week) for n, c in per_need.items())
        solver: cp_model.CpSolver | None = None
        if floor >= trivial:
            status1, best1, ub1 = cp_model.OPTIMAL, floor, floor
        else:
            # Stage 1: served periods.
            model.Maximize(served_expr)
            solver = _solver(
                opts, max(0.1, (part_deadline - time.monotonic()) * 0.6), STAGE1_SUBSOLVERS
            )

            def seen1(wall: float, obj: float, bnd: float, k: int = k) -> None:
                report(k, obj * W_SERVED, bnd * W_SERVED, int(obj))

            status1 = solver.Solve(model, _Watcher(seen1))
            if status1 not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                status1 = -1
            else:
                best1 = round(solver.ObjectiveValue())
                ub1 = int(solver.BestObjectiveBound() + 1e-6)
        if status1 == -1:
            # Time ran out before any solution: keep the greedy plan of this part.
            remaining -= len(cand_ids)
            served_ub += trivial
            all_optimal = False
            pen = _keep_greedy(problem, cand_ids, base, terms_total)
            penalty += pen
            objective += floor * W_SERVED - pen
            bound += trivial * W_SERVED
            continue

        # Stage 2: the soft terms, served held at stage 1's best.
        soft = W_SERVED * served_expr - built.objective  # the penalty, >= 0
        model.Add(served_expr >= best1)
        model.ClearObjective()
        model.Minimize(soft)
        if solver is not None:
            _full_hint(model, solver)
        else:
            _complete_hint(model, 0.2 * (part_deadline - time.monotonic()))
        solver2 = _solver(opts, max(0.1, part_deadline - time.monotonic()), STAGE2_SUBSOLVERS)

        def seen2(
            wall: float, obj: float, bnd: float, k: int = k, b: int = best1, u: int = ub1
        ) -> None:
            report(k, b * W_SERVED - obj, u * W_SERVED - bnd, b)

        status2 = solver2.Solve(model, _Watcher(seen2))
        remaining -= len(cand_ids)
        if status2 in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            final, pen, pen_lb = solver2, solver2.ObjectiveValue(), solver2.BestObjectiveBound()
            all_optimal &= status1 == cp_model.OPTIMAL and status2 == cp_model.OPTIMAL
        elif solver is None:
            # Stage 2 found nothing in time and stage 1 was skipped: the greedy plan.
            served_ub += ub1
            all_optimal = False
            pen = _keep_greedy(problem, cand_ids, base, terms_total)
            penalty += pen
            objective += floor * W_SERVED - pen
            bound += ub1 * W_SERVED
            continue
        else:
            final = solver
            pen = float(W_SERVED * best1 - solver.Value(built.objective))
            pen_lb = 0.0
            all_optimal = False
        chosen.difference_update(cand_ids)
        for i, var in built.x.items():
            if final.Value(var):
                chosen.add(i)
        for s, act in built.active.items():
            if not isinstance(act, int) and final.Value(act):
                active[problem.sessions[s].offer_id] = s
        for name, expr in built.terms.items():
            value = int(final.Value(expr)) if not isinstance(expr, int) else expr
            if name == "max_load":
                terms_total[name] = max(terms_total.get(name, 0), value)
            else:
                terms_total[name] = terms_total.get(name, 0) + value
        served_ub += ub1
        penalty += pen
        penalty_lb += pen_lb
        objective += W_SERVED * best1 - pen
        # A plan serving >= best1 scores at most W*ub1 - pen_lb; one serving fewer at most
        # W*(best1 - 1), since the penalty is never negative.
        bound += max(W_SERVED * ub1 - pen_lb, W_SERVED * (best1 - 1))
        done_objective, done_bound = objective, bound
        report(k, 0.0, 0.0, None)
    demand = problem.demand
    served = len(chosen)
    upper = min(
        demand,
        sum(
            min(len(problem.by_need.get(n, [])), need.periods_per_week)
            for n, need in problem.needs.items()
        ),
        served_ub if parts else 0,
    )
    upper = max(upper, served)
    gap = 0.0 if abs(bound) < 1e-9 else max(0.0, (bound - objective) / abs(bound))
    soft_gap = 0.0 if penalty <= 1e-9 else max(0.0, (penalty - penalty_lb) / penalty)
    terms_total.setdefault("served", served)
    return Solution(
        chosen=chosen,
        active=active,
        demand=demand,
        served=served,
        upper_bound=upper,
        objective=objective,
        bound=bound,
        gap=gap,
        optimal=all_optimal,
        first_feasible_s=first_feasible,
        solve_s=time.monotonic() - started,
        greedy_served=len(base),
        terms=terms_total,
        penalty=penalty,
        penalty_bound=penalty_lb,
        soft_gap=soft_gap,
    )
