"""Media workers start together over one data directory and create the same tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tongke.database import create_schema


def test_a_table_another_worker_created_first_is_not_an_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    ours, theirs = sa.create_engine(url), sa.create_engine(url)
    metadata = sa.MetaData()
    table = sa.Table("audit_events", metadata, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table("spent_codes", metadata, sa.Column("code", sa.String, primary_key=True))

    races = [True, True]  # the race is lost once by create_all, once by create_schema

    # The other worker creates the table after we looked and before we create it.
    @sa.event.listens_for(table, "before_create")
    def other_worker_first(target: sa.Table, connection: sa.Connection, **_: object) -> None:
        if races and races.pop():
            with theirs.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE audit_events (id INTEGER PRIMARY KEY)")

    with pytest.raises(sa.exc.OperationalError, match="already exists"):
        metadata.create_all(ours)  # what a worker did before: it died here

    for t in reversed(metadata.sorted_tables):
        t.drop(ours, checkfirst=True)
    create_schema(metadata, ours)
    assert set(sa.inspect(ours).get_table_names()) == {"audit_events", "spent_codes"}


def test_a_worker_that_loses_the_race_for_table_after_table_still_starts(
    tmp_path: Path,
) -> None:
    """Two workers starting together over the timetable's tables: the other created the
    first table as we looked, then the next one too (tests/test_relay_link.py's two
    workers: the second exited with "table sch_offer already exists")."""
    url = f"sqlite:///{tmp_path / 'server.db'}"
    ours, theirs = sa.create_engine(url), sa.create_engine(url)
    metadata = sa.MetaData()
    names = ["sch_class", "sch_teacher", "sch_offer"]
    tables = [sa.Table(n, metadata, sa.Column("id", sa.Integer, primary_key=True)) for n in names]
    lost: list[str] = []

    for table in tables:

        @sa.event.listens_for(table, "before_create")
        def other_worker_first(target: sa.Table, connection: sa.Connection, **_: object) -> None:
            if target.name not in lost:
                lost.append(target.name)
                with theirs.begin() as conn:
                    conn.exec_driver_sql(f"CREATE TABLE {target.name} (id INTEGER PRIMARY KEY)")

    create_schema(metadata, ours)
    assert lost == names  # lost the race three times in a row
    assert set(sa.inspect(ours).get_table_names()) == set(names)
