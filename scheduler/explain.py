"""Why a need is not fully served, and what would serve it, read off the model and plan.

For each need short of its periods, every master lesson of the need's grade and subject
(where the plan gives it) is checked against each hard constraint the need would break
by joining it, with the rest of the plan kept as it is:

- static: the lesson's stream is above the point's link, it does not sit inside one of
  the point's bell periods, it clashes with the class's own lesson;
- in the plan: the lesson already takes the most points, the class or its classroom
  already takes another remote lesson then, the school's shared line is full then, the
  teacher's weekly cap is reached in some calendar week.

A lesson blocked by exactly one of these is a lever: relaxing that one constraint lets
the need join it without touching anything else. The explainer adds such lessons one by
one (checking them against each other too) and states the relaxation with the number of
periods it would serve; lessons blocked by more than one constraint are listed with all
their blockers. Only lessons of the need's grade and subject are ever named, and points,
classes and teachers are named with their ids. Every reason carries Chinese and English
text. This is arithmetic over the plan, so every need gets its reasons in milliseconds.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from scheduler.bells import bell_spill, clock, day_blocks, fits, fits_bells, overlaps
from scheduler.greedy import line_allows
from scheduler.problem import BellRule, MasterSession, Mode, NeedInfo, Problem
from scheduler.solver import Solution
from scheduler.timetable import WEEKDAY_NAMES_ZH, weekday_name

# Levers, in the order a county scheduler would reach for them.
LEVERS = (
    "link",
    "school_line",
    "timetable",
    "bells",
    "points_per_lesson",
    "teacher_cap",
    "trade_off",
    "offer",
    "cross_county",
    "bells_data",
    "more_time",
)


@dataclass
class Reason:
    code: str  # what blocks: no_offer, other_county, no_bells, link, ... or lever_<lever>
    zh: str
    en: str
    lever: str = ""  # which relaxation helps (one of LEVERS), "" for a plain fact
    gain: int = 0  # periods the lever would serve with the rest of the plan unchanged
    lessons: list[int] = field(default_factory=list)  # offer ids named (grade and subject)
    relax: dict[str, Any] = field(default_factory=dict)  # the relaxation, for checking

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Unserved:
    need_id: int
    class_id: str
    label: str
    subject: str
    grade: int
    required: int
    served: int
    reasons: list[Reason]

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["reasons"] = [r.as_dict() for r in self.reasons]
        return d


def _who(problem: Problem, ident: str) -> str:
    name = problem.names.get(ident, ident)
    return f"{name}({ident})"


def _when(s: MasterSession, zh: bool) -> str:
    day = WEEKDAY_NAMES_ZH[s.weekday - 1] if zh else weekday_name(s.weekday)
    return f"{day} {clock(s.start)}-{clock(s.end)}"


def _lesson(problem: Problem, s: MasterSession, zh: bool) -> str:
    return (
        f"{_when(s, zh)} {_who(problem, s.master_class_id)} "
        f"{problem.names.get(s.teacher_id, s.teacher_id)}({s.teacher_id})"
    )


def _lessons(problem: Problem, sessions: list[MasterSession], zh: bool, limit: int = 4) -> str:
    sep = "；" if zh else "; "
    shown = sep.join(_lesson(problem, s, zh) for s in sessions[:limit])
    more = len(sessions) - limit
    if more > 0:
        shown += f"{sep}另 {more} 节" if zh else f"{sep}and {more} more"
    return shown


class _Plan:
    """The plan as sets the checks read: who takes what, when, on which line."""

    def __init__(self, problem: Problem, solution: Solution) -> None:
        self.problem = problem
        self.points: dict[int, list[int]] = defaultdict(list)  # session -> need ids
        self.served: dict[int, int] = defaultdict(int)
        self.taken: dict[tuple[str, int], list[tuple[int, int, int]]] = defaultdict(list)
        # (school, weekday) -> the point classroom and (start, end, down, up) of each stream
        self.line: dict[tuple[str, int], list[tuple[str, tuple[int, int, float, float]]]] = (
            defaultdict(list)
        )
        self.remote: dict[str, set[int]] = defaultdict(set)
        self.need_sessions: dict[int, set[int]] = defaultdict(set)
        for i in solution.chosen:
            c = problem.candidates[i]
            s = problem.sessions[c.session]
            need = problem.needs[c.need_id]
            self.points[c.session].append(c.need_id)
            self.served[c.need_id] += 1
            self.need_sessions[c.need_id].add(c.session)
            self.taken[("class:" + need.class_id, s.weekday)].append((s.start, s.end, c.session))
            self.taken[("room:" + need.classroom_id, s.weekday)].append((s.start, s.end, c.session))
            self.line[(need.school_id, s.weekday)].append(
                (need.classroom_id, (s.start, s.end, s.stream_mbps, s.point_up_mbps))
            )
            self.remote[s.teacher_id].add(c.session)
        # When each master class, teacher and recording classroom is busy with a master
        # lesson in the plan (for moving a lesson elsewhere).
        self.master_at: dict[tuple[str, str, int], list[tuple[int, int, int]]] = defaultdict(list)
        for sid in solution.active.values():
            ses = problem.sessions[sid]
            for k in (
                ("mclass", ses.master_class_id, ses.weekday),
                ("teacher", ses.teacher_id, ses.weekday),
                ("mroom", ses.classroom_id, ses.weekday),
            ):
                self.master_at[k].append((ses.start, ses.end, ses.offer_id))
        # Where each master lesson is given in the plan, by subject and grade.
        self.given: dict[tuple[str, int], list[MasterSession]] = defaultdict(list)
        for sid in sorted(solution.active.values()):
            ses = problem.sessions[sid]
            self.given[(ses.subject, ses.grade)].append(ses)

    def cap_week(self, teacher: str, sessions: set[int]) -> str | None:
        """The first calendar week in which these remote lessons break the cap, if any."""
        cap = self.problem.teacher_cap.get(teacher, 0)
        for label, week in self.problem.weeks:
            if sum(week.get(self.problem.sessions[s].weekday, 0) for s in sessions) > cap:
                return label or "every week"
        return None


def _blockers(
    problem: Problem, plan: _Plan, need: NeedInfo, s: MasterSession, extra: list[MasterSession]
) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(code, zh, en, detail) for every constraint that keeps the need out of lesson s,
    given the plan plus the lessons in `extra` that the need would also take."""
    out: list[tuple[str, str, str, dict[str, Any]]] = []
    sdown, sup = problem.school_link.get(need.school_id, (0.0, 0.0))
    down = min(need.downlink_mbps, sdown)
    up = min(need.uplink_mbps, sup)
    if s.stream_mbps > down + 1e-9 or s.point_up_mbps > up + 1e-9:
        zh = f"链路不足（需下行 {s.stream_mbps:g} Mbit/s，教学点有 {down:g}"
        en = f"link too slow (needs {s.stream_mbps:g} Mbit/s down, the point has {down:g}"
        if s.point_up_mbps > 0:  # a two-way lesson: the point's camera goes up
            zh += f"；上行需 {s.point_up_mbps:g}，有 {up:g}"
            en += f"; {s.point_up_mbps:g} up, the point has {up:g}"
        out.append(
            ("link", zh + "）", en + ")", {"mbps": s.stream_mbps, "up_mbps": s.point_up_mbps})
        )
    periods = problem.bells.get(need.school_id, [])
    tol = problem.options.bell_tolerance_min
    if not fits(s.start, s.end, day_blocks(periods), []):
        out.append(("school_day", "不在教学点的在校时间内", "outside the point's school day", {}))
    elif problem.options.bells == BellRule.HARD and not fits_bells(s.start, s.end, periods, tol):
        spill = bell_spill(s.start, s.end, periods) or s.end - s.start
        out.append(
            (
                "bells",
                f"跨入教学点课间 {spill} 分钟（最多 {tol}）",
                f"reaches {spill} min into the point's breaks (at most {tol})",
                {"spill": spill},
            )
        )
    own = [
        b
        for b in problem.busy.get((need.class_id, s.weekday), [])
        if overlaps(s.start, s.end, b[0], b[1])
    ]
    if own:
        zh = "、".join(f"第{b[2]}节{b[3]}" for b in own)
        en = ", ".join(f"period {b[2]} {b[3]}".strip() for b in own)
        out.append(
            (
                "timetable",
                f"与本班自己的课冲突（{zh}）",
                f"clashes with the class's own lesson ({en})",
                {"busy": [(s.weekday, b[2]) for b in own]},
            )
        )
    load = len(plan.points.get(s.idx, []))
    if load >= problem.options.max_points:
        names = "、".join(_who(problem, problem.needs[m].class_id) for m in plan.points[s.idx])
        out.append(
            (
                "points_per_lesson",
                f"已有 {load} 个教学点（每节最多 {problem.options.max_points}）：{names}",
                f"already takes {load} points (the most per lesson is "
                f"{problem.options.max_points}): {names}",
                {"points": load},
            )
        )
    for kind, key in (("class", "class:" + need.class_id), ("room", "room:" + need.classroom_id)):
        clash = [
            problem.sessions[sid]
            for a, b, sid in plan.taken.get((key, s.weekday), [])
            if overlaps(s.start, s.end, a, b)
        ]
        clash += [
            e
            for e in extra
            if e.weekday == s.weekday
            and e.idx != s.idx
            and overlaps(s.start, s.end, e.start, e.end)
        ]
        if clash and not (kind == "room" and out and out[-1][0] == "trade_off"):
            # (A clash of the class is also one of its classroom: said once.)
            what = "、".join(f"{c.subject} {clock(c.start)}" for c in clash)
            if kind == "class":
                out.append(
                    (
                        "trade_off",
                        f"本班此时已上远程课（{what}）",
                        f"the class already takes a remote lesson then ({what})",
                        {},
                    )
                )
            else:
                out.append(
                    (
                        "trade_off",
                        f"教室 {_who(problem, need.classroom_id)} 此时已有别班的远程课（{what}）",
                        f"classroom "
                        f"{_who(problem, need.classroom_id)} holds another class's remote "
                        f"lesson then ({what})",
                        {},
                    )
                )
    # The other classrooms' streams only: a lesson of this classroom at the same time is
    # the clash above (it has to give way anyway), and the need's own extra lessons sit in
    # this classroom too.
    line = [
        item
        for room, item in plan.line.get((need.school_id, s.weekday), [])
        if room != need.classroom_id
    ]
    alone = (s.start, s.end, s.stream_mbps, s.point_up_mbps)
    # Full only because of the other classrooms' lessons; a line too slow for the lesson
    # alone is the "link" blocker above.
    if line_allows([alone], (sdown, sup)) and not line_allows([*line, alone], (sdown, sup)):
        out.append(
            (
                "school_line",
                f"学校总线路 {sdown:g} Mbit/s 此时已被其他教室占满",
                f"the school's shared {sdown:g} Mbit/s line is full then",
                {},
            )
        )
    teacher_sessions = plan.remote.get(s.teacher_id, set()) | {
        e.idx for e in extra if e.teacher_id == s.teacher_id
    }
    if s.idx not in teacher_sessions:
        week = plan.cap_week(s.teacher_id, teacher_sessions | {s.idx})
        if week is not None:
            cap = problem.teacher_cap.get(s.teacher_id, 0)
            who = _who(problem, s.teacher_id)
            when_zh = "每周" if week == "every week" else f"{week} 那周"
            when_en = week if week == "every week" else f"the week of {week}"
            if cap == 0:  # not a full week: this teacher gives no remote lessons at all
                zh, en = (
                    f"{who} 的每周远程课上限为 0（不上远程课）",
                    f"{who} has a weekly cap of 0 remote lessons",
                )
            else:
                zh = f"{who} {when_zh}已达远程课上限 {cap} 节"
                en = f"{who} has reached the cap of {cap} remote lessons in {when_en}"
            out.append(("teacher_cap", zh, en, {"teacher": s.teacher_id, "cap": cap}))
    return out


def _funnel(problem: Problem, need: NeedInfo) -> Reason | None:
    f = problem.funnel[need.id]
    what_zh = f"{need.grade}年级{need.subject}"
    what_en = f"grade {need.grade} {need.subject}"
    if f.same_subject_grade == 0:
        return Reason(
            "no_offer",
            f"没有中心校开设{what_zh}主讲课",
            f"no central school offers a {what_en} master lesson",
            lever="offer",
        )
    if f.allowed_county == 0:
        county = problem.names.get(need.county_id, need.county_id)
        return Reason(
            "other_county",
            f"{what_zh}主讲课只在{county}以外开设，且未允许跨县",
            f"{what_en} master lessons are offered only outside {county}, and "
            "cross-county pairing is off",
            lever="cross_county",
        )
    if f.no_bells:
        school = _who(problem, need.school_id)
        return Reason(
            "no_bells",
            f"{school} 没有作息时间表：请导入它的 bells.csv",
            f"{school} has no bell schedule: import its bells.csv",
            lever="bells_data",
        )
    return None


def explain_need(problem: Problem, plan: _Plan, need: NeedInfo) -> list[Reason]:
    funnel = _funnel(problem, need)
    if funnel is not None:
        return [funnel]
    short = need.periods_per_week - plan.served[need.id]
    mine = plan.need_sessions[need.id]
    given = [
        s
        for s in plan.given.get((need.subject, need.grade), [])
        if problem.options.cross_county or s.county_id == need.county_id
    ]
    open_ = [s for s in given if s.idx not in mine]
    what_zh, what_en = f"{need.grade}年级{need.subject}", f"grade {need.grade} {need.subject}"
    if not open_:
        return [
            Reason(
                "too_few_offers",
                f"全县只开设 {len(given)} 节{what_zh}主讲课，本班已全部加入，还差 "
                f"{short} 节：需要中心校多开",
                f"only {len(given)} {what_en} master lesson(s) are given and the class "
                f"takes all of them, {short} short: a central school must offer more",
                lever="offer",
                lessons=[s.offer_id for s in given],
            )
        ]
    blocked = {s.idx: _blockers(problem, plan, need, s, []) for s in open_}
    reasons: list[Reason] = []
    free = [s for s in open_ if not blocked[s.idx]][:short]
    if free:
        # The solve stopped before it proved the plan best: nothing blocks these.
        reasons.append(
            Reason(
                "more_time",
                f"求解时间不够：再求解更久可多开 {len(free)} 节：{_lessons(problem, free, True)}",
                f"the solve ran out of time: solving longer "
                f"would serve {len(free)} more period(s): {_lessons(problem, free, False)}",
                lever="more_time",
                gain=len(free),
                lessons=[s.offer_id for s in free],
            )
        )
    for lever in LEVERS:
        single = [s for s in open_ if [b[0] for b in blocked[s.idx]] == [lever]]
        if not single or lever == "trade_off":
            continue
        picked: list[MasterSession] = []
        for s in sorted(single, key=lambda s: (s.stream_mbps, s.weekday, s.start)):
            if len(picked) >= short:
                break
            codes = [b[0] for b in _blockers(problem, plan, need, s, picked)]
            if codes == [lever] and not (
                lever == "teacher_cap" and any(p.teacher_id == s.teacher_id for p in picked)
            ):
                picked.append(s)
        if picked:
            reasons.append(_lever_reason(problem, need, lever, picked, blocked))
    if problem.options.mode == Mode.FIXED:
        moved = _moves(problem, plan, need, open_, blocked, short)
        if moved:
            reasons.append(_move_reason(problem, moved))
    if reasons:
        return reasons
    # No single change serves a period. Lessons that clash only with a remote lesson the
    # class already takes are a trade (no gain); the others need two or more changes.
    trades = [s for s in open_ if [b[0] for b in blocked[s.idx]] == ["trade_off"]]
    rest = [s for s in open_ if s not in trades]
    out: list[Reason] = []
    if trades:
        out.append(
            _listed(
                problem,
                trades,
                blocked,
                "trade_off",
                f"这些{what_zh}主讲课只与本班已排的远程课冲突，加入就要换掉那一节（总节数不变）",
                f"these {what_en} master lessons clash only with a remote lesson the class "
                "already takes: joining one means giving that one up (no gain overall)",
            )
        )
    if rest:
        out.append(
            _listed(
                problem,
                rest,
                blocked,
                "several",
                f"没有哪一项单独的调整能多开一节{what_zh}；各节课的障碍",
                f"no single change would serve another {what_en} period; what blocks each lesson",
            )
        )
    return out


def _listed(
    problem: Problem,
    sessions: list[MasterSession],
    blocked: dict[int, list[tuple[str, str, str, dict[str, Any]]]],
    code: str,
    head_zh: str,
    head_en: str,
) -> Reason:
    """A reason that lists lessons with all their blockers (at most four shown)."""
    counts = sorted(sessions, key=lambda s: (len(blocked[s.idx]), s.weekday, s.start))
    lines_zh = [
        f"{_lesson(problem, s, True)}：" + "；".join(b[1] for b in blocked[s.idx])
        for s in counts[:4]
    ]
    lines_en = [
        f"{_lesson(problem, s, False)}: " + "; ".join(b[2] for b in blocked[s.idx])
        for s in counts[:4]
    ]
    more = len(counts) - 4
    tail_zh = f"；另 {more} 节" if more > 0 else ""
    tail_en = f"; and {more} more" if more > 0 else ""
    return Reason(
        code,
        head_zh + "：" + "｜".join(lines_zh) + tail_zh,
        head_en + ": " + " | ".join(lines_en) + tail_en,
        lever="trade_off" if code == "trade_off" else "",
        lessons=[s.offer_id for s in counts],
    )


def _lever_reason(
    problem: Problem,
    need: NeedInfo,
    lever: str,
    picked: list[MasterSession],
    blocked: dict[int, list[tuple[str, str, str, dict[str, Any]]]],
) -> Reason:
    k = len(picked)
    shown_zh, shown_en = _lessons(problem, picked, True), _lessons(problem, picked, False)
    who = need.class_label or need.label
    school = _who(problem, need.school_id)
    relax: dict[str, Any] = {}
    if lever == "link":
        mbps = max(s.stream_mbps for s in picked)
        up = max(s.point_up_mbps for s in picked)
        relax = {
            "classroom": need.classroom_id,
            "school": need.school_id,
            "mbps": mbps,
            "up_mbps": up,
        }
        line = problem.school_link.get(need.school_id, (0.0, 0.0))
        has_down, has_up = min(need.downlink_mbps, line[0]), min(need.uplink_mbps, line[1])
        # Name only the direction that falls short (two-way lessons send the point's camera up).
        parts_zh, parts_en = [], []
        if mbps > has_down + 1e-9:
            parts_zh.append(f"下行带宽提高到 {mbps:g} Mbit/s")
            parts_en.append(f"a {mbps:g} Mbit/s downlink")
        if up > has_up + 1e-9:
            parts_zh.append(f"上行带宽提高到 {up:g} Mbit/s")
            parts_en.append(f"a {up:g} Mbit/s uplink")
        zh = f"把 {school} 的{'、'.join(parts_zh)}，可多开 {k} 节：{shown_zh}"
        en = f"{' and '.join(parts_en)} at {school} would serve {k} more period(s): {shown_en}"
    elif lever == "school_line":
        relax = {"school": need.school_id}
        zh = f"{school} 的学校总线路更快（同时多一路），可多开 {k} 节：{shown_zh}"
        en = (
            f"a faster shared line at {school} (one more stream at once) would serve {k} "
            f"more period(s): {shown_en}"
        )
    elif lever == "timetable":
        busy = sorted(
            {
                b
                for s in picked
                for code, _, _, d in blocked[s.idx]
                if code == "timetable"
                for b in d["busy"]
            }
        )
        relax = {"busy": busy, "class": need.class_id}
        own_zh = "、".join(f"{WEEKDAY_NAMES_ZH[d - 1]}第{p}节" for d, p in busy)
        own_en = ", ".join(f"{weekday_name(d)} period {p}" for d, p in busy)
        zh = f"把 {who} 自己的课（{own_zh}）调开，可多开 {k} 节：{shown_zh}"
        en = f"moving {who}'s own lesson(s) ({own_en}) would serve {k} more period(s): {shown_en}"
    elif lever == "bells":
        relax = {"bells": "soft"}
        zh = (
            f"这些课跨入 {school} 的课间：把它的作息与中心校对齐（或允许跨课间），可多开 "
            f"{k} 节：{shown_zh}"
        )
        en = (
            f"these lessons straddle {school}'s breaks: aligning its bells with the central "
            f"school's (or soft bells) would serve {k} more period(s): {shown_en}"
        )
    elif lever == "points_per_lesson":
        n = problem.options.max_points + 1
        relax = {"max_points": n}
        zh = f"每节课允许 {n} 个教学点，可多开 {k} 节（这些课已满）：{shown_zh}"
        en = (
            f"allowing {n} points per lesson would serve {k} more period(s) (these lessons "
            f"are full): {shown_en}"
        )
    else:  # teacher_cap
        teachers = sorted({s.teacher_id for s in picked})
        relax = {"teachers": {t: problem.teacher_cap.get(t, 0) + 1 for t in teachers}}
        names = "、".join(
            f"{_who(problem, t)} {problem.teacher_cap.get(t, 0)}→"
            f"{problem.teacher_cap.get(t, 0) + 1}"
            for t in teachers
        )
        zh = f"提高教师每周远程课上限（{names}），可多开 {k} 节：{shown_zh}"
        en = f"raising the teachers' weekly caps ({names}) would serve {k} more period(s): {shown_en}"
    return Reason(
        "lever_" + lever,
        zh,
        en,
        lever=lever,
        gain=k,
        lessons=[s.offer_id for s in picked],
        relax=relax,
    )


# Blockers that moving the master lesson to another time can remove.
_TIME_BOUND = {"timetable", "bells", "school_day", "trade_off", "school_line"}


def _moves(
    problem: Problem,
    plan: _Plan,
    need: NeedInfo,
    open_: list[MasterSession],
    blocked: dict[int, list[tuple[str, str, str, dict[str, Any]]]],
    short: int,
) -> list[tuple[MasterSession, MasterSession]]:
    """Master lessons nobody joins yet that, moved into a free period of their master
    class (the teacher and the recording classroom free too), the need could join."""
    out: list[tuple[MasterSession, MasterSession]] = []
    taken: dict[tuple[str, str, int], list[tuple[int, int, int]]] = defaultdict(list)
    for s in open_:
        if len(out) >= short:
            break
        if plan.points.get(s.idx) or not {b[0] for b in blocked[s.idx]} <= _TIME_BOUND:
            continue
        school = problem.school_of_room.get(s.classroom_id, "")
        for wd in range(1, 6):
            for p in problem.bells.get(school, []):
                if (wd, p.start) == (s.weekday, s.start):
                    continue
                keys = (
                    ("mclass", s.master_class_id, wd),
                    ("teacher", s.teacher_id, wd),
                    ("mroom", s.classroom_id, wd),
                )
                if any(
                    overlaps(p.start, p.end, b[0], b[1])
                    for b in problem.busy.get((s.master_class_id, wd), [])
                ) or any(
                    oid != s.offer_id and overlaps(p.start, p.end, a, b)
                    for k in keys
                    for a, b, oid in plan.master_at.get(k, []) + taken.get(k, [])
                ):
                    continue
                cand = dataclasses.replace(s, weekday=wd, start=p.start, end=p.end, original=False)
                week_ok = all(
                    sum(week.get(problem.sessions[x].weekday, 0) for x in plan.remote[s.teacher_id])
                    + week.get(wd, 0)
                    <= problem.teacher_cap.get(s.teacher_id, 0)
                    for _, week in problem.weeks
                )
                rest = [
                    b
                    for b in _blockers(problem, plan, need, cand, [m for _, m in out])
                    if b[0] != "teacher_cap"
                ]
                if week_ok and not rest:
                    out.append((s, cand))
                    for k in keys:
                        taken[k].append((cand.start, cand.end, -1))
                    break
            else:
                continue
            break
    return out


def _move_reason(problem: Problem, moved: list[tuple[MasterSession, MasterSession]]) -> Reason:
    parts_zh = "；".join(
        f"{_who(problem, a.master_class_id)} 的{a.subject}课 {_when(a, True)} → {_when(b, True)}"
        for a, b in moved
    )
    parts_en = "; ".join(
        f"{_who(problem, a.master_class_id)}'s {a.subject} lesson {_when(a, False)} → "
        f"{_when(b, False)}"
        for a, b in moved
    )
    k = len(moved)
    return Reason(
        "lever_move_lesson",
        f"把主讲课调到主讲班的空闲节次（无人加入的课，中心校改课表），可多开 {k} 节：{parts_zh}",
        f"moving master lessons nobody joins yet into free periods of their master class "
        f"(the central school's timetable changes) would serve {k} more period(s): {parts_en}",
        lever="move_lesson",
        gain=k,
        lessons=[a.offer_id for a, _ in moved],
        relax={
            "moves": [
                {"offer": a.offer_id, "weekday": b.weekday, "start": b.start, "end": b.end}
                for a, b in moved
            ]
        },
    )


def explain(problem: Problem, solution: Solution) -> list[Unserved]:
    plan = _Plan(problem, solution)
    out = []
    for n, need in problem.needs.items():
        if plan.served[n] >= need.periods_per_week:
            continue
        out.append(
            Unserved(
                n,
                need.class_id,
                need.class_label or need.label,
                need.subject,
                need.grade,
                need.periods_per_week,
                plan.served[n],
                explain_need(problem, plan, need),
            )
        )
    return out
