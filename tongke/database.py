"""Schema creation that several processes may run at once.

Media workers start together over one data directory: each opens the same SQLite
databases (audit log, lesson codes, feed keys, accounts, timetable) and creates the
tables it finds missing. Between SQLAlchemy's "is it there?" and its CREATE TABLE another
worker can create the table first; that is not an error for us, the table is there.
"""

from __future__ import annotations

import sqlalchemy as sa


def create_schema(metadata: sa.MetaData, engine: sa.Engine) -> None:
    """Create the tables of `metadata` that do not exist yet."""
    # Each lost race means another process created one more of the tables, so this
    # ends within one try per table. Retried once only, a worker lost twice in a row
    # (the timetable's eight tables, two workers starting together) and exited.
    for _ in range(len(metadata.tables) + 1):
        try:
            metadata.create_all(engine)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            if "already exists" not in str(exc).lower():
                raise
    metadata.create_all(engine)
