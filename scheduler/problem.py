"""The solver's view of a county: candidate master lessons, needs and who may join what.

Built from the database once per solve; plain dataclasses so that the solver, the greedy
baseline, the explainer and the re-planner share exactly one notion of "may join".
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from scheduler.bells import BellPeriod, Period, day_blocks, fits, fits_bells
from scheduler.school import Classroom, County, School, SchoolClass, Teacher
from scheduler.timetable import BusyPeriod, MasterOffer, Need, PlanLesson

SCHOOL_DAYS = (1, 2, 3, 4, 5)


class BellRule(StrEnum):
    HARD = "hard"  # a remote lesson must sit inside one of the point's bell periods
    SOFT = "soft"  # it may straddle a break, at a cost per lesson (W_OFF_BELL)


class Mode(StrEnum):
    FIXED = "fixed"  # master lessons stay where the master school put them
    MOVABLE = "movable"  # master lessons may move into free periods of the master class


@dataclass
class Options:
    max_points: int = 4
    mode: Mode = Mode.FIXED
    cross_county: bool = False
    time_limit_s: float = 30.0
    workers: int = 2
    seed: int = 0
    # Minutes a remote lesson may reach into a point's break (before and after together).
    bell_tolerance_min: int = 5
    bells: BellRule = BellRule.HARD


@dataclass(frozen=True)
class MasterSession:
    """One place in the week where a master offer may be given."""

    idx: int
    offer_id: int
    master_class_id: str
    classroom_id: str
    teacher_id: str
    subject: str
    grade: int
    county_id: str
    weekday: int
    start: int
    end: int
    stream_mbps: float
    original: bool  # the master school's own timetable slot
    point_up_mbps: float = 0.0  # what each point sends back (two-way lessons)


@dataclass(frozen=True)
class NeedInfo:
    id: int
    class_id: str
    classroom_id: str
    school_id: str
    label: str  # "小河教学点 grade 4"
    county_id: str
    grade: int
    subject: str
    periods_per_week: int
    downlink_mbps: float
    uplink_mbps: float = 0.0
    class_label: str = ""  # "小河教学点(p1) 4年级(p1-g4)": names with ids, since names repeat


@dataclass(frozen=True)
class Candidate:
    idx: int
    need_id: int
    session: int
    cross_county: bool
    off_bell: bool = False  # straddles a break of the point (allowed only with soft bells)


@dataclass
class Funnel:
    """How many master sessions survive each filter for one need (for explanations)."""

    same_subject_grade: int = 0
    allowed_county: int = 0
    link_ok: int = 0
    aligned: int = 0
    best_stream_mbps: float = 0.0
    no_bells: bool = False  # the point school has no bell schedule at all


@dataclass
class Problem:
    options: Options
    sessions: list[MasterSession]
    offers: dict[int, list[int]]  # offer id -> session indices (the first is the original)
    needs: dict[int, NeedInfo]
    candidates: list[Candidate]
    teacher_cap: dict[str, int]
    names: dict[str, str]  # ids of teachers, classrooms, classes, schools -> display names
    funnel: dict[int, Funnel]
    # Each point school's shared line (down, up) in Mbit/s, and each classroom's school.
    school_link: dict[str, tuple[float, float]] = field(default_factory=dict)
    school_of_room: dict[str, str] = field(default_factory=dict)
    # How often each timetable weekday occurs in the real calendar weeks that bind
    # (make-up days add a day, holidays remove some); the label is the week's Monday.
    weeks: list[tuple[str, dict[int, int]]] = field(
        default_factory=lambda: [("", {d: 1 for d in range(1, 8)})]
    )
    # The inputs the explainer reads again: bells and busy periods of point classes.
    bells: dict[str, list[Period]] = field(default_factory=dict)
    busy: dict[tuple[str, int], list[tuple[int, int, int, str]]] = field(default_factory=dict)
    # Previous plan as {(need_id, offer_id, weekday, start)}: re-solving keeps it if it can.
    previous: set[tuple[int, int, int, int]] = field(default_factory=set)
    by_need: dict[int, list[int]] = field(default_factory=dict)
    by_session: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index()

    def index(self) -> None:
        self.by_need = defaultdict(list)
        self.by_session = defaultdict(list)
        for c in self.candidates:
            self.by_need[c.need_id].append(c.idx)
            self.by_session[c.session].append(c.idx)

    @property
    def demand(self) -> int:
        return sum(n.periods_per_week for n in self.needs.values())

    def key(self, cand: Candidate) -> tuple[int, int, int, int]:
        s = self.sessions[cand.session]
        return (cand.need_id, s.offer_id, s.weekday, s.start)


def _periods(db: DbSession) -> dict[str, list[Period]]:
    bells: dict[str, list[Period]] = defaultdict(list)
    for b in db.scalars(select(BellPeriod)):
        bells[b.school_id].append(Period(b.period, b.start_min, b.end_min))
    for plist in bells.values():
        plist.sort(key=lambda p: p.number)
    return bells


def load_previous(db: DbSession, plan_id: int) -> set[tuple[int, int, int, int]]:
    prev: set[tuple[int, int, int, int]] = set()
    for lesson in db.scalars(select(PlanLesson).where(PlanLesson.plan_id == plan_id)):
        for p in lesson.points:
            prev.add((int(p["need_id"]), lesson.offer_id, lesson.weekday, lesson.start_min))
    return prev


def calendar_weeks(db: DbSession) -> list[tuple[str, dict[int, int]]]:
    """The real weeks of the term that bind a weekly cap: per ISO week, how often each
    timetable weekday is taught; weeks another week dominates are dropped."""
    from scheduler.lessons import term_days
    from scheduler.timetable import Term

    term = db.scalars(select(Term).order_by(Term.id.desc())).first()
    if term is None:
        return [("", {d: 1 for d in range(1, 8)})]
    weeks: dict[dt.date, dict[int, int]] = {}
    for date, weekday in term_days(db, term):
        monday = date - dt.timedelta(days=date.weekday())
        counts = weeks.setdefault(monday, {})
        counts[weekday] = counts.get(weekday, 0) + 1
    kept: list[tuple[str, dict[int, int]]] = []
    seen: set[tuple[tuple[int, int], ...]] = set()
    for monday, counts in sorted(weeks.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
        key = tuple(sorted(counts.items()))
        if key in seen or any(
            all(c <= other.get(d, 0) for d, c in counts.items()) for _, other in kept
        ):
            continue
        seen.add(key)
        kept.append((monday.isoformat(), counts))
    return sorted(kept) or [("", {d: 1 for d in range(1, 8)})]


def build_problem(db: DbSession, options: Options) -> Problem:
    schools = {s.id: s for s in db.scalars(select(School))}
    classes = {c.id: c for c in db.scalars(select(SchoolClass))}
    rooms = {r.id: r for r in db.scalars(select(Classroom))}
    teachers = {t.id: t for t in db.scalars(select(Teacher))}
    bells = _periods(db)
    names: dict[str, str] = {}
    for county in db.scalars(select(County)):
        names[county.id] = county.name
    for d in (schools, rooms, teachers):
        for k, v in d.items():
            names[k] = v.name
    for k, c in classes.items():
        names[k] = f"{schools[c.school_id].name} {c.name}"

    busy: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    busy_detail: dict[tuple[str, int], list[tuple[int, int, int, str]]] = defaultdict(list)
    busy_periods: dict[tuple[str, int], set[int]] = defaultdict(set)
    for b in db.scalars(select(BusyPeriod)):
        school_id = classes[b.class_id].school_id
        for p in bells.get(school_id, []):
            if p.number == b.period:
                busy[(b.class_id, b.weekday)].append((p.start, p.end))
                busy_detail[(b.class_id, b.weekday)].append(
                    (p.start, p.end, p.number, b.subject or "")
                )
        busy_periods[(b.class_id, b.weekday)].add(b.period)

    sessions: list[MasterSession] = []
    offers: dict[int, list[int]] = {}
    offer_rows = sorted(db.scalars(select(MasterOffer)), key=lambda o: o.id)
    # Every offer's own slot is taken by that offer: other offers of the class move only
    # into periods that no offer or local lesson holds in the original timetable.
    held: dict[tuple[str, int], set[int]] = defaultdict(set)
    for o in offer_rows:
        held[(o.class_id, o.weekday)].add(o.period)
    for o in offer_rows:
        mclass = classes[o.class_id]
        school = schools[mclass.school_id]
        periods = {p.number: p for p in bells.get(school.id, [])}
        if o.period not in periods:
            continue

        def add(weekday: int, p: Period, original: bool, o: MasterOffer = o) -> int:
            s = MasterSession(
                idx=len(sessions),
                offer_id=o.id,
                master_class_id=o.class_id,
                classroom_id=classes[o.class_id].classroom_id,
                teacher_id=o.teacher_id,
                subject=o.subject,
                grade=classes[o.class_id].grade,
                county_id=schools[classes[o.class_id].school_id].county_id,
                weekday=weekday,
                start=p.start,
                end=p.end,
                stream_mbps=o.stream_mbps,
                original=original,
                point_up_mbps=o.point_uplink_mbps or 0.0,
            )
            sessions.append(s)
            return s.idx

        idxs = [add(o.weekday, periods[o.period], True)]
        if options.mode == Mode.MOVABLE:
            for wd in SCHOOL_DAYS:
                taken = busy_periods[(o.class_id, wd)] | held[(o.class_id, wd)]
                for p in periods.values():
                    if p.number not in taken:
                        idxs.append(add(wd, p, False))
        offers[o.id] = idxs

    needs: dict[int, NeedInfo] = {}
    for n in sorted(db.scalars(select(Need)), key=lambda n: n.id):
        pclass = classes[n.class_id]
        school = schools[pclass.school_id]
        room = rooms[pclass.classroom_id]
        needs[n.id] = NeedInfo(
            id=n.id,
            class_id=n.class_id,
            classroom_id=pclass.classroom_id,
            school_id=school.id,
            label=names[n.class_id],
            county_id=school.county_id,
            grade=pclass.grade,
            subject=n.subject,
            periods_per_week=n.periods_per_week,
            downlink_mbps=room.downlink_mbps,
            uplink_mbps=room.uplink_mbps,
            class_label=f"{school.name}({school.id}) {pclass.name}({pclass.id})",
        )

    # A school's classrooms share its line: by default as fast as its fastest classroom.
    school_link: dict[str, tuple[float, float]] = {}
    school_of_room = {r.id: r.school_id for r in rooms.values()}
    for sid, school in schools.items():
        own = [r for r in rooms.values() if r.school_id == sid]
        down = (
            school.downlink_mbps
            if school.downlink_mbps is not None
            else max((r.downlink_mbps for r in own), default=0.0)
        )
        up = (
            school.uplink_mbps
            if school.uplink_mbps is not None
            else max((r.uplink_mbps for r in own), default=0.0)
        )
        school_link[sid] = (down, up)

    by_subject: dict[tuple[str, int], list[MasterSession]] = defaultdict(list)
    for s in sessions:
        by_subject[(s.subject, s.grade)].append(s)
    candidates: list[Candidate] = []
    funnel: dict[int, Funnel] = {}
    tol = options.bell_tolerance_min
    for n in needs.values():
        f = Funnel()
        periods = bells.get(n.school_id, [])
        f.no_bells = not periods
        blocks = day_blocks(periods)
        sdown, sup = school_link[n.school_id]
        for s in by_subject.get((n.subject, n.grade), []):
            f.same_subject_grade += 1
            cross = s.county_id != n.county_id
            if cross and not options.cross_county:
                continue
            f.allowed_county += 1
            f.best_stream_mbps = (
                min(f.best_stream_mbps, s.stream_mbps) if f.best_stream_mbps else s.stream_mbps
            )
            if min(n.downlink_mbps, sdown) < s.stream_mbps or (
                s.point_up_mbps > min(n.uplink_mbps, sup)
            ):
                continue
            f.link_ok += 1
            class_busy = busy.get((n.class_id, s.weekday), [])
            on_bell = fits_bells(s.start, s.end, periods, tol) and fits(
                s.start, s.end, blocks, class_busy
            )
            off_bell = False
            if not on_bell:
                if options.bells == BellRule.HARD or not fits(s.start, s.end, blocks, class_busy):
                    continue
                off_bell = True
            f.aligned += 1
            candidates.append(Candidate(len(candidates), n.id, s.idx, cross, off_bell))
        funnel[n.id] = f

    return Problem(
        options=options,
        sessions=sessions,
        offers=offers,
        needs=needs,
        candidates=candidates,
        teacher_cap={t.id: t.weekly_cap for t in teachers.values()},
        names=names,
        funnel=funnel,
        school_link=school_link,
        school_of_room=school_of_room,
        weeks=calendar_weeks(db),
        bells=dict(bells),
        busy=dict(busy_detail),
    )
