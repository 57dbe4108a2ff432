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
from scheduler.model import W_SERVED, build
from scheduler.problem import Problem

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
    first_feasible: float | None = None
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

    for k, cand_ids in enumerate(parts):
        built = build(problem, cand_ids)
        model = built.model
        floor = [i for i in cand_ids if i in base]
        for i, var in built.x.items():
            model.AddHint(var, i in base)
        for s, act in built.active.items():
            if not isinstance(act, int):
                model.AddHint(act, problem.sessions[s].original)
        # Never serve fewer periods than the greedy baseline does on this part.
        if floor:
            model.Add(sum(built.x.values()) >= len(floor))
        solver = cp_model.CpSolver()
        share = len(cand_ids) / remaining
        budget = max(0.2, (deadline - time.monotonic()) * share)
        solver.parameters.max_time_in_seconds = budget
        solver.parameters.num_workers = opts.workers
        solver.parameters.random_seed = opts.seed
        part_start = time.monotonic()

        def seen(wall: float, obj: float, bnd: float, k: int = k,
                 part_start: float = part_start) -> None:
            nonlocal first_feasible
            if first_feasible is None and k == len(parts) - 1:
                first_feasible = time.monotonic() - started
            report(k, obj, bnd)

        status = solver.Solve(model, _Watcher(seen))
        remaining -= len(cand_ids)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            # Cannot happen with the greedy floor unless time ran out before any solution:
            # fall back to the greedy assignment, which is feasible by construction.
            chosen.update(floor)
            objective += len(floor) * W_SERVED
            bound += len(cand_ids) * W_SERVED
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
    if first_feasible is None:
        first_feasible = time.monotonic() - started
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
