"""/healthz and /readyz: a node whose database or Redis is away is alive but not ready."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tongke.app import create_app
from tongke.config import Config

SECRET = "health-secret-0123456789abcdef"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_running() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


async def probe(config: Config) -> tuple[int, int, Any]:
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    try:
        live = await client.get("/healthz")
        ready = await client.get("/readyz")
        return live.status, ready.status, await ready.json()
    finally:
        await client.close()


async def test_a_node_with_its_database_is_ready(tmp_path: Path) -> None:
    live, ready, body = await probe(Config(data_dir=tmp_path, secret=SECRET))
    assert (live, ready) == (200, 200)
    assert body["ready"] is True and body["checks"]["database"]["ok"] is True
    assert "redis" not in body["checks"]  # none configured


async def test_a_node_whose_redis_is_gone_is_alive_but_not_ready(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    live, ready, body = await probe(Config(data_dir=tmp_path, secret=SECRET, redis_url=url))
    assert (live, ready) == (200, 503)
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    assert url not in str(body)  # the failure's kind, never an address or a password


async def test_a_node_whose_database_is_gone_is_not_ready(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, secret=SECRET)
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    try:
        (tmp_path / "tongke.db").unlink()
        (tmp_path / "tongke.db").mkdir()  # SQLite cannot open a directory
        from tongke.session_auth import ACCOUNTS

        client.app[ACCOUNTS].engine.dispose()  # type: ignore[index]
        ready = await client.get("/readyz")
        body = await ready.json()
        assert ready.status == 503 and body["checks"]["database"]["ok"] is False
        assert (await client.get("/healthz")).status == 200
    finally:
        (tmp_path / "tongke.db").rmdir()
        await client.close()


@pytest.mark.redis
async def test_a_node_with_redis_is_ready(tmp_path: Path) -> None:
    if not redis_running():
        pytest.skip("no Redis on 127.0.0.1:6379")
    config = Config(data_dir=tmp_path, secret=SECRET, redis_url="redis://127.0.0.1:6379/15")
    live, ready, body = await probe(config)
    assert (live, ready) == (200, 200) and body["checks"]["redis"]["ok"] is True
