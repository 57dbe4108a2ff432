"""CSV import of a county and CSV export of the plan.

Import is all or nothing: every row of every file is checked against the data already
stored plus the rest of the import, and one bad row means nothing is written. Errors
name the file, the line and the column.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from scheduler.bells import BellPeriod, clock, overlaps, parse_clock
from scheduler.school import (
    Classroom,
    ClassroomRole,
    County,
    School,
    SchoolClass,
    SchoolKind,
    Teacher,
)
from scheduler.streams import DEFAULT_PROFILE, PROFILES
from scheduler.timetable import (
    WEEKDAY_NAMES_ZH,
    WEEKDAYS,
    BusyPeriod,
    CalendarDay,
    MasterOffer,
    Need,
    Term,
)

# File kind -> required columns (optional columns are listed in docs/scheduler.md).
FORMATS: dict[str, tuple[str, ...]] = {
    "schools": ("school_id", "name", "county_id", "kind"),
    "classrooms": ("classroom_id", "school_id", "name", "role", "downlink_mbps", "uplink_mbps"),
    "teachers": ("teacher_id", "school_id", "name", "subjects", "grades", "weekly_cap"),
    "classes": ("class_id", "school_id", "grade", "name", "students", "classroom_id"),
    "bells": ("school_id", "period", "start", "end"),
    "busy": ("class_id", "weekday", "period"),
    "needs": ("class_id", "subject", "periods_per_week"),
    "offers": ("class_id", "subject", "teacher_id", "weekday", "period"),
    "calendar": ("kind", "start"),
}
ORDER = tuple(FORMATS)


@dataclass(frozen=True)
class RowError:
    file: str
    line: int  # 1-based line in the file, the header being line 1
    column: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}.csv line {self.line}"
        return (
            f"{where}, column {self.column}: {self.message}"
            if self.column
            else (f"{where}: {self.message}")
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


@dataclass
class ImportReport:
    counts: dict[str, int]
    errors: list[RowError]
    encodings: dict[str, str] = field(default_factory=dict)  # file kind -> how it was read

    @property
    def ok(self) -> bool:
        return not self.errors


class _Bad(Exception):
    def __init__(self, column: str, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.column = column
        self.message = message
        self.line = line  # for checks across rows (the calendar), the row at fault


def parse_weekday(text: str) -> int:
    t = text.strip()
    if t.isdigit() and 1 <= int(t) <= 7:
        return int(t)
    for names in (WEEKDAYS, WEEKDAY_NAMES_ZH):
        for i, name in enumerate(names):
            if t.lower() == name.lower():
                return i + 1
    raise ValueError(f"weekday must be 1-7 (1 = Monday) or Mon..Sun, not {text!r}")


# Excel on a Chinese Windows saves "CSV" in the ANSI code page, GBK; GB18030 is its superset.
ENCODINGS = ("utf-8-sig", "gb18030")
REPLACEMENT = "\ufffd"


def decode_csv(data: bytes) -> tuple[str, str]:
    """Text and the encoding it was read in: UTF-8 (with or without BOM), else GB18030.

    Raises UnicodeDecodeError when neither reads the bytes."""
    for encoding in ENCODINGS:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        name = (
            "UTF-8 (BOM)"
            if encoding == "utf-8-sig" and data.startswith(b"\xef\xbb\xbf")
            else ("UTF-8" if encoding == "utf-8-sig" else "GB18030/GBK")
        )
        return text, name
    data.decode(ENCODINGS[-1])  # raises, naming the first bad byte
    raise AssertionError("unreachable")


def replacement_errors(kind: str, text: str) -> list[RowError]:
    """One error per line holding U+FFFD: text that was decoded in the wrong encoding."""
    return [
        RowError(
            kind,
            line,
            "",
            "holds characters that could not be read (�): the file "
            "was decoded in the wrong encoding; save it as UTF-8 or GBK and import "
            "the file itself",
        )
        for line, row in enumerate(text.splitlines(), start=1)
        if REPLACEMENT in row
    ]


def read_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    text = text.lstrip("\ufeff")  # spreadsheets save UTF-8 with a BOM
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows = [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    return header, rows


class _State:
    """The stored county plus everything imported so far, keyed by id."""

    def __init__(self, db: Session) -> None:
        self.counties = {c.id for c in db.scalars(select(County))}
        self.schools = {s.id: s.kind for s in db.scalars(select(School))}
        self.rooms = {r.id: (r.school_id, r.role) for r in db.scalars(select(Classroom))}
        self.teachers = {
            t.id: (set(t.subjects), set(t.grades)) for t in db.scalars(select(Teacher))
        }
        self.classes = {
            c.id: (c.school_id, c.grade, c.classroom_id) for c in db.scalars(select(SchoolClass))
        }
        self.bells: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
        for b in db.scalars(select(BellPeriod)):
            self.bells[b.school_id][b.period] = (b.start_min, b.end_min)
        self.busy: set[tuple[str, int, int]] = {
            (b.class_id, b.weekday, b.period) for b in db.scalars(select(BusyPeriod))
        }
        self.busy_of: dict[str, set[tuple[str, int, int]]] = defaultdict(set)
        for b in self.busy:
            self.busy_of[b[0]].add(b)
        self.offers: list[tuple[str, str, int, int, str]] = [
            (o.class_id, o.teacher_id, o.weekday, o.period, "")
            for o in db.scalars(select(MasterOffer))
        ]
        self.offers_by_day: dict[int, list[tuple[str, str, int, int, str]]] = defaultdict(list)
        for o in self.offers:
            self.offers_by_day[o[2]].append(o)


def _num(row: Mapping[str, str], col: str, kind: type, lo: float, hi: float) -> Any:
    raw = row.get(col, "")
    try:
        value = kind(raw)
    except ValueError:
        raise _Bad(col, f"{raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise _Bad(col, f"{raw} is out of range ({lo:g} to {hi:g})")
    return value


def _need(row: Mapping[str, str], col: str) -> str:
    value = row.get(col, "")
    if not value:
        raise _Bad(col, "is empty")
    return value


def _date(row: Mapping[str, str], col: str) -> dt.date:
    raw = row.get(col, "")
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise _Bad(col, f"{raw!r} is not a date YYYY-MM-DD") from None


def import_csv(db: Session, files: Mapping[str, str], *, replace: bool = False) -> ImportReport:
    """Check and import CSV texts keyed by kind ("schools", "bells"...); all or nothing.

    `replace` clears the stored county first (plans and published lessons stay)."""
    unknown = set(files) - set(FORMATS)
    errors: list[RowError] = [
        RowError(k, 1, "", f"unknown file kind (expected one of {', '.join(ORDER)})")
        for k in sorted(unknown)
    ]
    if replace:
        state = _State.__new__(_State)
        state.counties, state.schools, state.rooms, state.teachers = set(), {}, {}, {}
        state.classes, state.bells, state.busy, state.offers = {}, defaultdict(dict), set(), []
        state.busy_of = defaultdict(set)
        state.offers_by_day = defaultdict(list)
    else:
        state = _State(db)
    objects: dict[str, list[Any]] = defaultdict(list)
    replaced: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = {}
    term_rows: list[tuple[int, dict[str, str]]] = []
    for kind in ORDER:
        if kind not in files:
            continue
        garbled = replacement_errors(kind, files[kind])
        if garbled:
            errors.extend(garbled)
            continue
        header, rows = read_csv(files[kind])
        missing = [c for c in FORMATS[kind] if c not in header]
        if missing:
            errors.append(RowError(kind, 1, ", ".join(missing), "missing column(s)"))
            continue
        counts[kind] = len(rows)
        for line, row in enumerate(rows, start=2):
            try:
                if kind == "calendar":
                    term_rows.append((line, row))
                    _check_calendar_row(row)
                else:
                    _import_row(kind, row, state, objects, replaced)
            except _Bad as bad:
                errors.append(RowError(kind, line, bad.column, bad.message))
            except ValueError as exc:
                errors.append(RowError(kind, line, "", str(exc)))
    if term_rows:
        try:
            term, days = _calendar(term_rows)
            objects["term"].append(term)
            objects["calendar_days"].extend(days)
        except _Bad as bad:
            # A check across rows names the row at fault, else the term row's line.
            term_line = next((n for n, r in term_rows if r.get("kind") == "term"), term_rows[0][0])
            errors.append(RowError("calendar", bad.line or term_line, bad.column, bad.message))
    if errors:
        db.rollback()
        return ImportReport(counts, errors)
    _write(db, objects, replaced, replace)
    return ImportReport(counts, [])


def _import_row(
    kind: str,
    row: Mapping[str, str],
    st: _State,
    objects: dict[str, list[Any]],
    replaced: dict[str, set[str]],
) -> None:
    if kind == "schools":
        sid, county = _need(row, "school_id"), _need(row, "county_id")
        skind = row.get("kind", "")
        if skind not in SchoolKind.__members__.values():
            raise _Bad("kind", f"{skind!r} is not one of central, ordinary, point")
        if county not in st.counties:
            st.counties.add(county)
            objects["counties"].append(County(id=county, name=row.get("county_name") or county))
        st.schools[sid] = skind
        down = _num(row, "downlink_mbps", float, 0, 100000) if row.get("downlink_mbps") else None
        up = _num(row, "uplink_mbps", float, 0, 100000) if row.get("uplink_mbps") else None
        objects["schools"].append(
            School(
                id=sid,
                name=_need(row, "name"),
                county_id=county,
                kind=skind,
                downlink_mbps=down,
                uplink_mbps=up,
            )
        )
    elif kind == "classrooms":
        rid, school = _need(row, "classroom_id"), _need(row, "school_id")
        if school not in st.schools:
            raise _Bad("school_id", f"unknown school {school!r}")
        role = row.get("role", "")
        if role not in ClassroomRole.__members__.values():
            raise _Bad("role", f"{role!r} is not one of master, receiving")
        down = _num(row, "downlink_mbps", float, 0, 10000)
        up = _num(row, "uplink_mbps", float, 0, 10000)
        st.rooms[rid] = (school, role)
        objects["classrooms"].append(
            Classroom(
                id=rid,
                school_id=school,
                name=_need(row, "name"),
                role=role,
                agent_id=row.get("agent_id", "") or rid,
                downlink_mbps=down,
                uplink_mbps=up,
            )
        )
    elif kind == "teachers":
        tid, school = _need(row, "teacher_id"), _need(row, "school_id")
        if school not in st.schools:
            raise _Bad("school_id", f"unknown school {school!r}")
        subjects = [s.strip() for s in _need(row, "subjects").split(";") if s.strip()]
        try:
            grades = sorted({int(g) for g in _need(row, "grades").split(";") if g.strip()})
        except ValueError:
            raise _Bad("grades", "grades must be numbers separated by ';'") from None
        cap = _num(row, "weekly_cap", int, 0, 60)
        st.teachers[tid] = (set(subjects), set(grades))
        objects["teachers"].append(
            Teacher(
                id=tid,
                school_id=school,
                name=_need(row, "name"),
                subjects=subjects,
                grades=grades,
                weekly_cap=cap,
            )
        )
    elif kind == "classes":
        cid, school = _need(row, "class_id"), _need(row, "school_id")
        if school not in st.schools:
            raise _Bad("school_id", f"unknown school {school!r}")
        room = _need(row, "classroom_id")
        if room not in st.rooms:
            raise _Bad("classroom_id", f"unknown classroom {room!r}")
        if st.rooms[room][0] != school:
            raise _Bad("classroom_id", f"classroom {room!r} belongs to another school")
        grade = _num(row, "grade", int, 1, 12)
        students = _num(row, "students", int, 0, 200)
        st.classes[cid] = (school, grade, room)
        objects["classes"].append(
            SchoolClass(
                id=cid,
                school_id=school,
                grade=grade,
                name=_need(row, "name"),
                students=students,
                classroom_id=room,
            )
        )
    elif kind == "bells":
        school = _need(row, "school_id")
        if school not in st.schools:
            raise _Bad("school_id", f"unknown school {school!r}")
        period = _num(row, "period", int, 1, 20)
        try:
            start = parse_clock(row.get("start", ""))
        except ValueError as exc:
            raise _Bad("start", str(exc)) from None
        try:
            end = parse_clock(row.get("end", ""))
        except ValueError as exc:
            raise _Bad("end", str(exc)) from None
        if end <= start:
            raise _Bad("end", f"the period ends ({clock(end)}) before it starts ({clock(start)})")
        if school not in replaced["bells"]:
            replaced["bells"].add(school)
            st.bells[school] = {}
        if period in st.bells[school]:
            raise _Bad("period", f"period {period} is listed twice for {school}")
        for other, (s, e) in st.bells[school].items():
            if overlaps(start, end, s, e):
                raise _Bad("start", f"period {period} overlaps period {other}")
        st.bells[school][period] = (start, end)
        objects["bells"].append(
            BellPeriod(school_id=school, period=period, start_min=start, end_min=end)
        )
    elif kind == "busy":
        cid = _need(row, "class_id")
        if cid not in st.classes:
            raise _Bad("class_id", f"unknown class {cid!r}")
        try:
            wd = parse_weekday(row.get("weekday", ""))
        except ValueError as exc:
            raise _Bad("weekday", str(exc)) from None
        period = _num(row, "period", int, 1, 20)
        if period not in st.bells.get(st.classes[cid][0], {}):
            raise _Bad(
                "period",
                f"school {st.classes[cid][0]!r} has no period {period} in its bell schedule",
            )
        if cid not in replaced["busy"]:
            replaced["busy"].add(cid)
            st.busy.difference_update([b for b in st.busy_of.pop(cid, ())])
        st.busy_of[cid].add((cid, wd, period))
        st.busy.add((cid, wd, period))
        objects["busy"].append(
            BusyPeriod(class_id=cid, weekday=wd, period=period, subject=row.get("subject", ""))
        )
    elif kind == "needs":
        cid = _need(row, "class_id")
        if cid not in st.classes:
            raise _Bad("class_id", f"unknown class {cid!r}")
        ppw = _num(row, "periods_per_week", int, 1, 20)
        replaced["needs"].add(cid)
        objects["needs"].append(
            Need(class_id=cid, subject=_need(row, "subject"), periods_per_week=ppw)
        )
    elif kind == "offers":
        cid, tid = _need(row, "class_id"), _need(row, "teacher_id")
        if cid not in st.classes:
            raise _Bad("class_id", f"unknown class {cid!r}")
        if tid not in st.teachers:
            raise _Bad("teacher_id", f"unknown teacher {tid!r}")
        subject = _need(row, "subject")
        school, grade, room = st.classes[cid]
        subjects, grades = st.teachers[tid]
        if subject not in subjects:
            raise _Bad("subject", f"teacher {tid!r} does not teach {subject}")
        if grade not in grades:
            raise _Bad("teacher_id", f"teacher {tid!r} does not teach grade {grade}")
        if st.rooms[room][1] != ClassroomRole.MASTER:
            raise _Bad(
                "class_id",
                f"class {cid!r} sits in {room!r}, which is not a master (recording) classroom",
            )
        try:
            wd = parse_weekday(row.get("weekday", ""))
        except ValueError as exc:
            raise _Bad("weekday", str(exc)) from None
        period = _num(row, "period", int, 1, 20)
        if period not in st.bells.get(school, {}):
            raise _Bad("period", f"school {school!r} has no period {period}")
        if (cid, wd, period) in st.busy:
            raise _Bad("period", f"class {cid!r} is busy with another lesson then")
        pname = row.get("profile") or DEFAULT_PROFILE
        if pname not in PROFILES:
            raise _Bad("profile", f"{pname!r} is not one of {', '.join(PROFILES)}")
        profile = PROFILES[pname]
        stream = (
            _num(row, "stream_mbps", float, 0.1, 100)
            if row.get("stream_mbps")
            else profile.down_mbps
        )
        point_up = (
            _num(row, "point_uplink_mbps", float, 0, 100)
            if row.get("point_uplink_mbps")
            else profile.up_mbps
        )
        if cid not in replaced["offers"]:
            replaced["offers"].add(cid)
            st.offers = [o for o in st.offers if o[0] != cid]
            st.offers_by_day = defaultdict(list)
            for o in st.offers:
                st.offers_by_day[o[2]].append(o)
        start, end = st.bells[school][period]
        for ocid, otid, _owd, oper, _room in st.offers_by_day[wd]:
            if ocid != cid and otid != tid and st.classes[ocid][2] != room:
                continue
            os_, oe = st.bells[st.classes[ocid][0]][oper]
            if not overlaps(start, end, os_, oe):
                continue
            if ocid == cid:
                raise _Bad("period", f"class {cid!r} already has a master lesson then")
            if otid == tid:
                raise _Bad(
                    "teacher_id",
                    f"teacher {tid!r} already gives a master lesson then (class {ocid})",
                )
            if st.classes[ocid][2] == room:
                raise _Bad("class_id", f"classroom {room!r} is already used then by {ocid}")
        st.offers.append((cid, tid, wd, period, room))
        st.offers_by_day[wd].append(st.offers[-1])
        objects["offers"].append(
            MasterOffer(
                class_id=cid,
                subject=subject,
                teacher_id=tid,
                weekday=wd,
                period=period,
                stream_mbps=stream,
                point_uplink_mbps=point_up,
                profile=pname,
            )
        )


def _check_calendar_row(row: Mapping[str, str]) -> None:
    kind = row.get("kind", "")
    if kind not in ("term", "holiday", "makeup"):
        raise _Bad("kind", f"{kind!r} is not one of term, holiday, makeup")
    start = _date(row, "start")
    if kind in ("term", "holiday") and row.get("end"):
        if _date(row, "end") < start:
            raise _Bad("end", "ends before it starts")
    if kind == "term" and not row.get("end"):
        raise _Bad("end", "a term needs an end date")
    if kind == "makeup":
        try:
            parse_weekday(row.get("weekday", ""))
        except ValueError as exc:
            raise _Bad("weekday", str(exc)) from None
    if kind == "term" and row.get("timezone"):
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(row["timezone"])
        except (KeyError, ValueError):
            raise _Bad("timezone", f"unknown time zone {row['timezone']!r}") from None


def _calendar(rows: Iterable[tuple[int, dict[str, str]]]) -> tuple[Term, list[CalendarDay]]:
    terms = [r for _, r in rows if r.get("kind") == "term"]
    if len(terms) != 1:
        raise _Bad("kind", f"the calendar needs exactly one 'term' row, found {len(terms)}")
    t = terms[0]
    term = Term(
        name=t.get("name") or "term",
        start=_date(t, "start"),
        end=_date(t, "end"),
        timezone=t.get("timezone") or "Asia/Shanghai",
    )
    days: dict[dt.date, CalendarDay] = {}
    rows = list(rows)
    for line, r in rows:
        if r.get("kind") == "holiday":
            try:
                d = _date(r, "start")
                end = _date(r, "end") if r.get("end") else d
            except _Bad as bad:
                raise _Bad(bad.column, bad.message, line) from None
            while d <= end:
                days[d] = CalendarDay(date=d, kind="holiday", as_weekday=None)
                d += dt.timedelta(days=1)
    for line, r in rows:
        if r.get("kind") == "makeup":
            d = _date(r, "start")
            if d in days and days[d].kind == "holiday":
                raise _Bad("start", f"the make-up day {d} is also a holiday", line)
            if d in days:
                raise _Bad("start", f"{d} is listed as a make-up day twice", line)
            if not term.start <= d <= term.end:
                raise _Bad(
                    "start",
                    f"the make-up day {d} lies outside the term {term.start}..{term.end}",
                    line,
                )
            days[d] = CalendarDay(date=d, kind="makeup", as_weekday=parse_weekday(r["weekday"]))
    return term, list(days.values())


def _write(
    db: Session, objects: dict[str, list[Any]], replaced: dict[str, set[str]], replace: bool
) -> None:
    if replace:
        for model in (
            MasterOffer,
            Need,
            BusyPeriod,
            BellPeriod,
            SchoolClass,
            Teacher,
            Classroom,
            School,
            County,
        ):
            if model is MasterOffer:
                # Plans keep referring to offers; a replaced county starts with no plans.
                from scheduler.timetable import Plan, PlanLesson

                db.execute(delete(PlanLesson))
                db.execute(delete(Plan))
            db.execute(delete(model))
        db.flush()
    if replaced["bells"]:
        db.execute(delete(BellPeriod).where(BellPeriod.school_id.in_(replaced["bells"])))
    if replaced["busy"]:
        db.execute(delete(BusyPeriod).where(BusyPeriod.class_id.in_(replaced["busy"])))
    if replaced["needs"]:
        db.execute(delete(Need).where(Need.class_id.in_(replaced["needs"])))
    if replaced["offers"]:
        from scheduler.timetable import PlanLesson

        old = select(MasterOffer.id).where(MasterOffer.class_id.in_(replaced["offers"]))
        if db.scalars(select(PlanLesson.id).where(PlanLesson.offer_id.in_(old))).first():
            raise ValueError(
                "these master classes' lessons belong to a stored plan; import "
                "with replace to start the county over"
            )
        db.execute(delete(MasterOffer).where(MasterOffer.class_id.in_(replaced["offers"])))
    for kind in ("counties", "schools", "classrooms", "teachers", "classes"):
        items = objects.get(kind, [])
        if not items:
            continue
        model = type(items[0])
        ids = [o.id for o in items]
        existing: set[str] = set()
        for k in range(0, len(ids), 500):
            existing.update(db.scalars(select(model.id).where(model.id.in_(ids[k : k + 500]))))
        with db.no_autoflush:
            for obj in items:
                if obj.id in existing:
                    db.merge(obj)
                else:
                    db.add(obj)
        db.flush()
    for kind in ("bells", "busy", "needs", "offers"):
        db.add_all(objects.get(kind, []))
        db.flush()
    if objects.get("term"):
        db.execute(delete(CalendarDay))
        db.execute(delete(Term))
        term = objects["term"][0]
        db.add(term)
        db.flush()
        for day in objects["calendar_days"]:
            day.term_id = term.id
        db.add_all(objects["calendar_days"])
    db.flush()


EXPORT_COLUMNS = (
    "lesson_id",
    "weekday",
    "start",
    "end",
    "master_classroom",
    "teacher",
    "subject",
    "grade",
    "points",
    "master_class",
    "point_classes",
    "teacher_name",
)


# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, quoted so it stays text."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def export_plan_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: neutralise(r.get(k, "")) for k in EXPORT_COLUMNS})
    return out.getvalue()


def write_rows_csv(rows: list[dict[str, Any]], columns: Iterable[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
