from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from scheduler.csvio import import_csv
from scheduler.db import Database
from tests.scheduler.county import files
from tongke.app import CTX, WEB_ROOT, AppContext
from tongke.config import Config
from tongke.tokens import Role, issue_token
from tongke.untrusted import json_body_guard

PG_URL = os.environ.get(
    "TONGKE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'sched.db'}")
    yield database
    database.dispose()


@pytest.fixture
def town(db: Database) -> Database:
    with db.session() as s:
        report = import_csv(s, files())
        assert report.ok, report.errors
    return db


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A freshly created PostgreSQL database, dropped afterwards."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"tongke_sched_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the server is part of the test environment
        pytest.fail(f"PostgreSQL at {PG_URL} is not usable: {exc}")
    base = PG_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class Server:
    def __init__(self, url: str, secret: str, db: Database, config: Config) -> None:
        self.url = url
        self.secret = secret
        self.db = db
        self.config = config

    def token(
        self, role: Role = Role.SCHEDULER, room: str = "*", classroom: str = "", ttl_s: int = 3600
    ) -> str:
        return issue_token(self.secret, room=room, classroom=classroom, role=role, ttl_s=ttl_s)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """The scheduler's routes on an aiohttp app bound to an ephemeral loopback port."""
    from scheduler.api import DB, setup

    config = Config(data_dir=tmp_path / "data", secret="test-secret-0123456789abcdef-0123456789")
    # The real server's JSON guard, which reads (and caches) every JSON body first.
    app = web.Application(
        client_max_size=config.max_message_bytes * 4, middlewares=[json_body_guard]
    )
    ctx = AppContext(config=config, secret=config.ensure_secret())
    app[CTX] = ctx
    setup(app, ctx)
    app.router.add_static("/static/", WEB_ROOT, show_index=False)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config.public_url = f"http://127.0.0.1:{port}"
    yield Server(config.public_url, ctx.secret, app[DB], config)
    await runner.cleanup()
