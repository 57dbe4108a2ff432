"""The solver's view of a county: candidate master lessons, needs and who may join what.

Built from the database once per solve; plain dataclasses so that the solver, the greedy
baseline, the explainer and the re-planner share exactly one notion of "may join".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from scheduler.bells import BellPeriod, Period, day_blocks, fits
from scheduler.school import Classroom, County, School, SchoolClass, Teacher
from scheduler.timetable import BusyPeriod, MasterOffer, Need, PlanLesson

SCHOOL_DAYS = (1, 2, 3, 4, 5)


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


@dataclass(frozen=True)
class Candidate:
    idx: int
    need_id: int
    session: int
    cross_county: bool


@dataclass
class Funnel:
    """How many master sessions survive each filter for one need (for explanations)."""

    same_subject_grade: int = 0
    allowed_county: int = 0
    link_ok: int = 0
    aligned: int = 0
    best_stream_mbps: float = 0.0


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
    busy_periods: dict[tuple[str, int], set[int]] = defaultdict(set)
    for b in db.scalars(select(BusyPeriod)):
        school_id = classes[b.class_id].school_id
        for p in bells.get(school_id, []):
            if p.number == b.period:
                busy[(b.class_id, b.weekday)].append((p.start, p.end))
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
            downlink_mbps=rooms[pclass.classroom_id].downlink_mbps,
        )

    by_subject: dict[tuple[str, int], list[MasterSession]] = defaultdict(list)
    for s in sessions:
        by_subject[(s.subject, s.grade)].append(s)
    candidates: list[Candidate] = []
    funnel: dict[int, Funnel] = {}
    for n in needs.values():
        f = Funnel()
        blocks = day_blocks(bells.get(n.school_id, []))
        for s in by_subject.get((n.subject, n.grade), []):
            f.same_subject_grade += 1
            cross = s.county_id != n.county_id
            if cross and not options.cross_county:
                continue
            f.allowed_county += 1
            f.best_stream_mbps = (
                min(f.best_stream_mbps, s.stream_mbps) if f.best_stream_mbps else s.stream_mbps
            )
            if n.downlink_mbps < s.stream_mbps:
                continue
            f.link_ok += 1
            if not fits(s.start, s.end, blocks, busy.get((n.class_id, s.weekday), [])):
                continue
            f.aligned += 1
            candidates.append(Candidate(len(candidates), n.id, s.idx, cross))
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
    )
