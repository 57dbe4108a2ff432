"""Database wiring: one declarative base, SQLite by default, PostgreSQL when given a URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from tongke.database import create_schema


class Base(DeclarativeBase):
    pass


def _import_models() -> None:
    # The tables live in domain modules; importing them registers them on Base.metadata.
    from scheduler import bells, lessons, school, timetable  # noqa: F401


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _fk_on(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_conn.execute("PRAGMA foreign_keys=ON")

        return engine
    if url.startswith("postgresql://"):
        # psycopg 3 is the driver the project installs; SQLAlchemy defaults to psycopg2.
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_pre_ping=True)


def _add_missing_columns(engine: Engine) -> None:
    """Add columns that newer versions introduced to tables an older version created.

    New columns are always nullable, so an existing database keeps working unchanged."""
    found = inspect(engine)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            if not found.has_table(table.name):
                continue
            have = {c["name"] for c in found.get_columns(table.name)}
            for col in table.columns:
                if col.name not in have:
                    kind = col.type.compile(dialect=engine.dialect)
                    conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {kind}'))


class Database:
    """An engine plus a session factory, with the schema created on first use."""

    def __init__(self, url: str) -> None:
        _import_models()
        self.url = url
        self.engine = make_engine(url)
        create_schema(Base.metadata, self.engine)
        _add_missing_columns(self.engine)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error."""
        session = self._factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
