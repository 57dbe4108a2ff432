"""The greedy baseline: what a careful person with a spreadsheet would get.

Needs with the fewest options go first; each takes the first lesson that still fits.
It honours every hard constraint, keeps master lessons where the school put them, and
also seeds the solver (its solution is a hint and a floor on periods served).
"""

from __future__ import annotations

from collections import defaultdict

from scheduler.bells import overlaps
from scheduler.problem import Problem


def greedy(problem: Problem) -> set[int]:
    opts = problem.options
    chosen: set[int] = set()
    load: dict[int, int] = defaultdict(int)  # session -> points
    remote: dict[str, set[int]] = defaultdict(set)  # teacher -> sessions with points
    taken: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    originals = {sids[0] for sids in problem.offers.values()}
    lines: dict[tuple[str, int], list[tuple[int, int, float, float]]] = defaultdict(list)

    def order(n: int) -> tuple[int, int]:
        return (len(problem.by_need.get(n, [])), n)

    for n in sorted(problem.needs, key=order):
        need = problem.needs[n]
        got = 0
        teachers_used: set[str] = set()
        options = sorted(
            (i for i in problem.by_need.get(n, []) if problem.candidates[i].session in originals),
            key=lambda i: (
                problem.candidates[i].cross_county,
                problem.sessions[problem.candidates[i].session].idx,
            ),
        )
        for _pass in range(2):
            for i in options:
                if got >= need.periods_per_week:
                    break
                c = problem.candidates[i]
                if i in chosen:
                    continue
                s = problem.sessions[c.session]
                if _pass == 0 and teachers_used and s.teacher_id not in teachers_used:
                    continue  # prefer the teacher this class already has
                if load[c.session] >= opts.max_points:
                    continue
                if c.session not in remote[s.teacher_id] and not _cap_allows(
                    problem,
                    remote[s.teacher_id] | {c.session},
                    problem.teacher_cap.get(s.teacher_id, 0),
                ):
                    continue
                keys = [
                    ("class:" + need.class_id, s.weekday),
                    ("room:" + need.classroom_id, s.weekday),
                ]
                if any(overlaps(s.start, s.end, a, b) for k in keys for a, b in taken[k]):
                    continue
                line = lines[(need.school_id, s.weekday)]
                item = (s.start, s.end, s.stream_mbps, s.point_up_mbps)
                if not line_allows(
                    [*line, item], problem.school_link.get(need.school_id, (0.0, 0.0))
                ):
                    continue
                line.append(item)
                chosen.add(i)
                got += 1
                load[c.session] += 1
                remote[s.teacher_id].add(c.session)
                teachers_used.add(s.teacher_id)
                for k in keys:
                    taken[k].append((s.start, s.end))
    return chosen


def _cap_allows(problem: Problem, sessions: set[int], cap: int) -> bool:
    """Whether these remote lessons of one teacher keep the cap in every calendar week."""
    return all(
        sum(week.get(problem.sessions[s].weekday, 0) for s in sessions) <= cap
        for _, week in problem.weeks
    )


def line_allows(items: list[tuple[int, int, float, float]], link: tuple[float, float]) -> bool:
    """Whether lessons (start, end, down, up) on one school's line fit it at every instant."""
    for t in {it[0] for it in items}:
        live = [it for it in items if it[0] <= t < it[1]]
        if sum(it[2] for it in live) > link[0] + 1e-9 or sum(it[3] for it in live) > (
            link[1] + 1e-9
        ):
            return False
    return True
