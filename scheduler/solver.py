"""Solve the shared timetable with OR-Tools CP-SAT.

The county splits into independent parts (needs and master lessons that share no class,
classroom, teacher or lesson); each part is its own CP-SAT model, given a share of the
time limit in proportion to its size, so a city solves county by county.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ortools.sat.python import cp_model

from scheduler.greedy import greedy
from scheduler.model import W_SERVED, Built, build
from scheduler.problem import Options, Problem

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


def _solver(opts: Options, seconds: float) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = seconds
    solver.parameters.num_workers = opts.workers
    solver.parameters.random_seed = opts.seed
    return solver


def _hint(built: Built, xs: dict[int, int], acts: dict[int, int]) -> None:
    for i, var in built.x.items():
        built.model.AddHint(var, xs.get(i, 0))
    for s, act in built.active.items():
        if not isinstance(act, int):
            built.model.AddHint(act, acts.get(s, 0))


def solve(problem: Problem, progress: Progress | None = None) -> Solution:
    opts = problem.options
    started = time.monotonic()
    deadline = started + opts.time_limit_s
    base = greedy(problem)
    parts = components(problem)
    total = sum(len(p) for p in parts) or 1
    remaining = total
    chosen: set[int] = set()
    active: dict[int, int] = {oid: sids[0] for oid, sids in problem.offers.items()}
    objective = bound = 0.0
    all_optimal = True
    terms_total: dict[str, int] = {}
    done_objective = done_bound = 0.0

    def report(part: int, obj: float, bnd: float) -> None:
        if progress is None:
            return
        progress(
            {
                "part": part + 1,
                "parts": len(parts),
                "elapsed_s": round(time.monotonic() - started, 2),
                "served": int(-(-(done_objective + obj) // W_SERVED)) if obj else None,
                "objective": done_objective + obj,
                "bound": done_bound + bnd,
                "fraction": min(1.0, (total - remaining) / total),
            }
        )

    # Phase 1: a first CP-SAT solution of every part (fast: the greedy plan is the hint),
    # so a complete plan exists early even when a city has many parts.
    builts = []
    first: list[tuple[dict[int, int], dict[int, int]]] = []
    first_bound: list[float] = []
    for cand_ids in parts:
        built = build(problem, cand_ids)
        floor = [i for i in cand_ids if i in base]
        # Never serve fewer periods than the greedy baseline does on this part.
        if floor:
            built.model.Add(sum(built.x.values()) >= len(floor))
        builts.append((built, floor))
        hint_x = {i: int(i in base) for i in built.x}
        hint_a = {s: int(problem.sessions[s].original) for s, a in built.active.items()
                  if not isinstance(a, int)}
        solver = _solver(opts, max(0.1, deadline - time.monotonic()))
        solver.parameters.stop_after_first_solution = True
        _hint(built, hint_x, hint_a)
        status = solver.Solve(built.model)
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            hint_x = {i: int(solver.Value(v)) for i, v in built.x.items()}
            hint_a = {s: int(solver.Value(a)) for s, a in built.active.items()
                      if not isinstance(a, int)}
        first.append((hint_x, hint_a))
        first_bound.append(solver.BestObjectiveBound() if status in (
            cp_model.OPTIMAL, cp_model.FEASIBLE) else len(cand_ids) * W_SERVED)
    first_feasible = time.monotonic() - started
    # Phase 2: improve each part within its share of the remaining time.
    for k, cand_ids in enumerate(parts):
        built, floor = builts[k]
        model = built.model
        model.ClearHints()
        _hint(built, *first[k])
        share = len(cand_ids) / remaining
        solver = _solver(opts, max(0.2, (deadline - time.monotonic()) * share))

        def seen(wall: float, obj: float, bnd: float, k: int = k) -> None:
            report(k, obj, bnd)

        status = solver.Solve(model, _Watcher(seen))
        remaining -= len(cand_ids)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            # Only when time ran out before any solution: keep the phase-1 (or greedy)
            # assignment, which is feasible by construction.
            chosen.update(i for i, v in first[k][0].items() if v)
            for s, v in first[k][1].items():
                if v:
                    active[problem.sessions[s].offer_id] = s
            objective += sum(first[k][0].values()) * W_SERVED
            bound += first_bound[k]
            all_optimal = False
            continue
        all_optimal &= status == cp_model.OPTIMAL
        for i, var in built.x.items():
            if solver.Value(var):
                chosen.add(i)
        for s, act in built.active.items():
            if not isinstance(act, int) and solver.Value(act):
                active[problem.sessions[s].offer_id] = s
        for name, expr in built.terms.items():
            value = int(solver.Value(expr)) if not isinstance(expr, int) else expr
            if name == "max_load":
                terms_total[name] = max(terms_total.get(name, 0), value)
            else:
                terms_total[name] = terms_total.get(name, 0) + value
        objective += solver.ObjectiveValue()
        bound += solver.BestObjectiveBound()
        done_objective, done_bound = objective, bound
        report(k, 0.0, 0.0)
    demand = problem.demand
    served = len(chosen)
    # Every other term only subtracts, so the bound on the objective bounds served too.
    upper = min(demand, sum(min(len(problem.by_need.get(n, [])), need.periods_per_week)
                            for n, need in problem.needs.items()),
                int(bound // W_SERVED) if parts else 0)
    upper = max(upper, served)
    gap = 0.0 if abs(bound) < 1e-9 else max(0.0, (bound - objective) / abs(bound))
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
    )
