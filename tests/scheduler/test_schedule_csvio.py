from __future__ import annotations

import csv
import io

from sqlalchemy import func, select

from scheduler.csvio import EXPORT_COLUMNS, decode_csv, export_plan_csv, import_csv, neutralise
from scheduler.db import Database
from scheduler.problem import Options
from scheduler.school import School
from scheduler.service import export_rows, solve_and_store
from scheduler.timetable import Need
from tests.scheduler.county import files


def _count(db: Database, model: type) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def test_bad_rows_are_reported_row_by_row_and_nothing_is_imported(db: Database) -> None:
    data = files()
    data["classrooms"] += "bad-r,nowhere,坏教室,master,,50,20\n"
    data["bells"] += "zx,9,10:00,09:00\n"
    data["needs"] += "xh-g4,English,many\nno-class,Art,1\n"
    with db.session() as s:
        report = import_csv(s, data)
    errors = [(e.file, e.line, e.column) for e in report.errors]
    assert ("classrooms", 8, "school_id") in errors
    assert ("bells", 22, "end") in errors
    assert ("needs", 8, "periods_per_week") in errors
    assert ("needs", 9, "class_id") in errors
    assert any("unknown school 'nowhere'" in str(e) for e in report.errors)
    assert _count(db, School) == 0 and _count(db, Need) == 0


def test_a_bad_row_keeps_the_stored_county_unchanged(town: Database) -> None:
    before = _count(town, Need)
    with town.session() as s:
        report = import_csv(
            s, {"needs": "class_id,subject,periods_per_week\nxh-g4,English,3\nghost,Music,1\n"}
        )
    assert not report.ok and str(report.errors[0]).startswith("needs.csv line 3")
    assert _count(town, Need) == before
    with town.session() as s:
        assert (
            s.scalar(
                select(Need.periods_per_week).where(
                    Need.class_id == "xh-g4", Need.subject == "English"
                )
            )
            == 2
        )


def test_offer_conflicts_and_missing_columns_are_refused(db: Database) -> None:
    data = files()
    # 王老师 cannot give two master lessons at the same time.
    data["offers"] += "zx-g3,English,t-wang,1,1,2\n"
    data["busy"] = "class_id,weekday\nxh-g4,1\n"
    with db.session() as s:
        report = import_csv(s, data)
    messages = [str(e) for e in report.errors]
    assert any("busy.csv line 1, column period: missing column" in m for m in messages)
    assert any("offers.csv line 7" in m and "already" in m for m in messages)


def test_export_has_the_documented_columns(town: Database) -> None:
    with town.session() as s:
        plan, sol = solve_and_store(s, Options(time_limit_s=5))
        text = export_plan_csv(export_rows(s, plan))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0].keys()) == EXPORT_COLUMNS
    assert sum(len(r["points"].split(";")) for r in rows) == sol.served
    english = [r for r in rows if r["subject"] == "English"]
    assert english and all(r["master_classroom"] == "zx-r1" for r in english)
    assert {"xh-r1", "ds-r1"} <= {p for r in english for p in r["points"].split(";")}


def test_a_formula_cell_is_exported_as_text(db: Database) -> None:
    data = files()
    data["teachers"] = data["teachers"].replace("王老师", "=cmd|' /C calc'!A0")
    with db.session() as s:
        assert import_csv(s, data).ok
        plan, _ = solve_and_store(s, Options(time_limit_s=5))
        text = export_plan_csv(export_rows(s, plan))
    names = {r["teacher_name"] for r in csv.DictReader(io.StringIO(text))}
    assert "'=cmd|' /C calc'!A0" in names
    assert not any(n.startswith(("=", "+", "-", "@", "\t", "\r")) for n in names)
    assert neutralise("-2") == "'-2" and neutralise("\tx") == "'\tx" and neutralise("a=b") == "a=b"


def test_gbk_and_bom_files_are_read_and_garbled_text_is_refused(db: Database) -> None:
    schools = files()["schools"]
    assert decode_csv(schools.encode("gbk")) == (schools, "GB18030/GBK")
    assert decode_csv(b"\xef\xbb\xbf" + schools.encode()) == (schools, "UTF-8 (BOM)")
    assert decode_csv(schools.encode()) == (schools, "UTF-8")
    # What a GBK file becomes when something read it as UTF-8 first.
    garbled = schools.encode("gbk").decode("utf-8", errors="replace")
    with db.session() as s:
        report = import_csv(s, files() | {"schools": garbled})
    assert not report.ok and _count(db, School) == 0
    lines = [e.line for e in report.errors if e.file == "schools"]
    assert lines == [2, 3, 4, 5, 6]  # every row with Chinese names, the header is fine
    assert "could not be read" in str(report.errors[0])


def test_cli_reads_gbk_files(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tests.scheduler.test_schedule_cli import run

    county = tmp_path / "county"
    county.mkdir()
    for kind, text in files().items():
        (county / f"{kind}.csv").write_bytes(text.encode("gbk"))
    assert run("schedule", "import", str(county), "--data-dir", str(tmp_path / "d")) == 0
    out = capsys.readouterr().out
    assert "schools" in out and "GB18030/GBK" in out
    db = Database(f"sqlite:///{tmp_path / 'd' / 'tongke.db'}")
    with db.session() as s:
        assert s.get(School, "xh").name == "小河教学点"
    db.dispose()


def test_a_database_from_before_school_lines_gains_the_new_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "create table sch_school (id varchar(64) primary key, name varchar(200), "
            "county_id varchar(64), kind varchar(16))"
        )
        conn.execute("insert into sch_school values ('xh', '小河教学点', 'c1', 'point')")
    db = Database(f"sqlite:///{path}")
    with db.session() as s:
        school = s.get(School, "xh")
        assert school.name == "小河教学点" and school.downlink_mbps is None
    db.dispose()
