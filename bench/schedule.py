"""Scheduler benchmark on generated counties.

    python bench/schedule.py --tier S|M|L|X --seed K [--time-limit S] [--json]

Prints served periods against the greedy baseline and CP-SAT's bound, the time to the
first feasible plan, the explanations' time (explain_s) and the whole call's wall time
(wall_s: loading the county, the model, the solve, the explanations, storing and
committing the plan, which the time limit bounds),
and the time to re-plan one teacher's absence on a published plan. X is a stress county:
one county of 330 teaching points and 3,300 demand periods.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.countygen import Tier, generate
from scheduler.csvio import import_csv
from scheduler.db import Database
from scheduler.lessons import current_term, publish
from scheduler.problem import Options, build_problem
from scheduler.replan import replan
from scheduler.service import solve_and_store
from scheduler.timetable import PlanLesson

LIMITS = {"S": 1.0, "M": 30.0, "L": 600.0, "X": 120.0}
STRESS = Tier(
    counties=1, masters_per_county=100, points_per_county=330, subjects=5, demand_per_county=3300
)
# The generated term runs around this date, so runs are comparable on any day.
TODAY = dt.date(2026, 3, 16)


def run(tier: str, seed: int, time_limit: float, workers: int) -> dict[str, object]:
    db = Database("sqlite://")
    with db.session() as s:
        report = import_csv(s, generate(STRESS if tier == "X" else tier, seed, today=TODAY))
        if not report.ok:
            raise SystemExit(f"generated county did not import: {report.errors[:3]}")
    with db.session() as s:
        problem = build_problem(s, Options())
        candidates = len(problem.candidates)
    t0 = time.monotonic()
    with db.session() as s:
        plan, sol = solve_and_store(
            s, Options(time_limit_s=time_limit, seed=seed, workers=workers), started=t0
        )
    # The whole call as the API sees it: loading, model, solve, explanations, storing and
    # committing the plan; the time limit bounds this.
    wall_s = round(time.monotonic() - t0, 3)
    with db.session() as s:
        plan = s.merge(plan)
        publish(s, plan.id)
        monday: dict[str, int] = {}
        for pl in s.query(PlanLesson).filter(
            PlanLesson.plan_id == plan.id, PlanLesson.weekday == 1
        ):
            monday[pl.teacher_id] = monday.get(pl.teacher_id, 0) + len(pl.points)
        busiest = max(sorted(monday), key=lambda t: monday[t])
        first_monday = current_term(s).start
        explain_s = plan.stats["explain_s"]
        unserved, reasons = (
            len(plan.unserved),
            Counter(r["lever"] or r["code"] for u in plan.unserved for r in u["reasons"]),
        )
    # Re-plan the absence of the teacher with the most point-lessons on the first Monday.
    with db.session() as s:
        r0 = time.monotonic()
        rep = replan(s, [first_monday], absent_teacher=busiest)
        replan_s = time.monotonic() - r0
    db.dispose()
    return {
        "tier": tier,
        "seed": seed,
        "demands": sol.demand,
        "served": sol.served,
        "served_ratio": round(sol.served_ratio, 4),
        "upper_bound": sol.upper_bound,
        "gap": round(sol.gap, 5),
        "served_gap": round(sol.served_gap, 5),
        "penalty": sol.penalty,
        "penalty_bound": sol.penalty_bound,
        "soft_gap": round(sol.soft_gap, 5),
        "terms": sol.terms,
        "optimal": sol.optimal,
        "first_feasible_s": round(sol.first_feasible_s, 3),
        "solve_s": round(sol.solve_s, 3),
        "greedy_served": sol.greedy_served,
        "candidates": candidates,
        "explain_s": explain_s,
        "wall_s": wall_s,
        "unserved_needs": unserved,
        "reasons": dict(reasons.most_common()),
        "replan_s": round(replan_s, 3),
        "replan_changes": len(rep.changes),
        "time_limit_s": time_limit,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tier", choices=sorted(LIMITS), default="S")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="whole-call seconds (default: the tier's target: S 1, M 30, L 600, X 120)",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = run(args.tier, args.seed, args.time_limit or LIMITS[args.tier], args.workers)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:20s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
