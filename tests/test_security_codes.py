"""A used lesson link stays used: across a server restart, and between two servers on one
PostgreSQL database (issue 7: spent one-time codes were kept in memory only)."""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lesson_server import start_server_process
from tests.test_security_tokens import call
from tongke.lessoncode import CodeBook, issue_code
from tongke.tokens import TokenError

SECRET = "tongke-test-secret-0123456789abcdef"
PG_URL = os.environ.get(
    "TONGKE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def test_a_used_code_stays_used_after_a_real_server_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server_process(data)
    try:
        server.open_room("maths-7")
        status, minted, _ = call(
            server, "POST", "/api/rooms/maths-7/tokens", {"role": "observer"}, server.admin_token
        )
        assert status == 200
        code = urllib.parse.parse_qs(urllib.parse.urlsplit(minted["url"]).query)["code"][0]
        _, unused, _ = call(
            server, "POST", "/api/rooms/maths-7/tokens", {"role": "observer"}, server.admin_token
        )
        spare = urllib.parse.parse_qs(urllib.parse.urlsplit(unused["url"]).query)["code"][0]
        exchange = {"room": "maths-7", "code": code}
        assert call(server, "POST", "/api/lesson/exchange", exchange)[0] == 200
    finally:
        server.stop()

    server = start_server_process(data)
    try:
        status, body, _ = call(server, "POST", "/api/lesson/exchange", exchange)
        assert (status, body["error"]["code"]) == (401, "code_used")
        # A code nobody used before the restart still works once.
        status, body, _ = call(
            server, "POST", "/api/lesson/exchange", {"room": "maths-7", "code": spare}
        )
        assert (status, body["role"]) == (200, "observer")
    finally:
        server.stop()


def _redeem_twice(first: CodeBook, second: CodeBook) -> None:
    code = issue_code(SECRET, room="r1", classroom="c1", role="observer")
    token, data = first.redeem(code)
    assert token and data["room"] == "r1"
    with pytest.raises(TokenError) as err:
        second.redeem(code)
    assert err.value.code == "code_used"


def test_spent_codes_in_sqlite_are_shared_and_expire(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tongke.db'}"
    one, two = CodeBook(SECRET, url), CodeBook(SECRET, url)
    try:
        _redeem_twice(one, two)
        # Rows of codes past their expiry are cleared by the next redemption.
        assert one._spend("long-expired", expires_at=10.0, now=5.0)
        one.redeem(issue_code(SECRET, room="r1", classroom="c1", role="observer"))
        assert one._engine is not None
        with one._engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT count(*) FROM spent_lesson_codes").scalar()
        assert rows == 2  # the expired one went
    finally:
        one.close()
        two.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1, dropped afterwards; skipped without one."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"tongke_codes_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL at {PG_URL}: {exc}")
    yield f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_two_servers_on_one_postgresql_never_honour_a_code_twice(pg_url: str) -> None:
    one, two = CodeBook(SECRET, pg_url), CodeBook(SECRET, pg_url)
    try:
        _redeem_twice(one, two)
        _redeem_twice(two, one)
    finally:
        one.close()
        two.close()
