from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from scheduler.csvio import import_csv
from scheduler.db import Database
from scheduler.lessons import lessons_between, publish
from scheduler.problem import Options
from scheduler.replan import replan
from scheduler.service import solve_and_store
from tests.scheduler.checker import check_plan
from tests.scheduler.county import files


@pytest.mark.postgres
def test_full_cycle_on_postgresql(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        with db.session() as s:
            bad = files()
            bad["needs"] += "ghost,Art,1\n"
            assert not import_csv(s, bad).ok
        with db.session() as s:
            assert import_csv(s, files()).ok
        with db.session() as s:
            plan, sol = solve_and_store(s, Options(time_limit_s=5))
            assert check_plan(s, plan.id) == []
            publish(s, plan.id)
        with db.session() as s:
            report = replan(s, [dt.date(2025, 9, 8)], absent_teacher="t-wang")
        assert report.changes
        tz = ZoneInfo("Asia/Shanghai")
        with db.session() as s:
            lessons = lessons_between(
                s,
                dt.datetime(2025, 9, 1, tzinfo=tz),
                dt.datetime(2025, 9, 13, tzinfo=tz),
                classroom_id="xh-r1",
            )
        assert sol.served == 4
        assert [i.start.date().isoformat() for i in lessons] == [
            "2025-09-01",
            "2025-09-03",
            "2025-09-10",
        ]
    finally:
        db.dispose()
