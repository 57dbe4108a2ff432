"""Rate limits: a script hammering one token is slowed; normal lessons never notice.

Regression test for issue 7 ("Why"): 300 joins with one token went through in 0.45 s.
"""

from __future__ import annotations

import asyncio
import json
import random
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from classroom_agent.client import ws_url
from tests.lesson_server import ServerProcess, start_server_process
from tongke.ratelimit import DEFAULT_RATES, RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_whole_lesson_reconnecting_at_once_is_never_limited() -> None:
    clock = Clock()
    limits = RateLimits(clock=clock)
    # 1 master, 30 points, 60 viewers sharing one observer link, all from one school NAT,
    # after a server restart: twice within a second (the first attempt raced the restart).
    for _attempt in range(2):
        for i in range(31):
            assert limits.check("join", ip="10.0.0.1", token=f"classroom-{i}") is None
        for _ in range(60):
            assert limits.check("join", ip="10.0.0.1", token="observer-link") is None
        clock.now += 0.5
    assert limits.refused == {}


def test_a_countys_agents_reconnecting_after_an_outage_are_never_limited() -> None:
    clock = Clock()
    limits = RateLimits(clock=clock)
    rng = random.Random(7)
    # 600 classrooms behind one county NAT address. While the server is down their
    # attempts fail before reaching it; each agent retries with jittered exponential
    # back-off (1, 2, 4, 8 ... s, ±50 %), and its first attempt after the server is back
    # (t = 30 s) fetches its feed and joins its lesson.
    server_back = 30.0
    first_after = []
    for agent in range(600):
        at, delay = 0.0, 1.0
        while at < server_back:
            at += delay * rng.uniform(0.5, 1.5)
            delay = min(delay * 2, 30.0)
        first_after.append((at, agent))
    for at, agent in sorted(first_after):
        clock.now = at
        assert limits.check("scheduler", ip="203.0.113.9", token=f"feed-{agent}") is None
        assert limits.check("join", ip="203.0.113.9", token=f"room-{agent}") is None
    # And the worst case: all 600 in the same instant.
    clock.now += 3600
    for agent in range(600):
        assert limits.check("scheduler", ip="203.0.113.9", token=f"feed-{agent}") is None
        assert limits.check("join", ip="203.0.113.9", token=f"room-{agent}") is None
    assert limits.refused == {}


def test_one_token_hammering_join_is_held_to_the_refill_rate() -> None:
    clock = Clock()
    limits = RateLimits(clock=clock)
    refused = 0
    for i in range(300):
        clock.now = i * 0.0015  # 300 joins in 0.45 s
        if limits.check("join", ip=f"198.51.100.{i % 200}", token="one-token") is not None:
            refused += 1
    burst = DEFAULT_RATES["join_token"].burst
    assert 300 - refused <= burst + 0.45 * DEFAULT_RATES["join_token"].per_s + 1
    assert refused >= 300 - burst - 3


async def test_a_flood_of_joins_with_one_token_gets_rate_limited(
    server: ServerProcess, room: str
) -> None:
    token = server.token(room, "flooder", "observer")
    burst = int(DEFAULT_RATES["join_token"].burst)
    join = json.dumps({"type": "join", "room": room, "token": token})
    # limit=0: aiohttp's default pool holds 100 connections and would queue the rest.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = [await session.ws_connect(ws_url(server.url)) for _ in range(burst + 60)]
        try:
            # All at once, as a script would: the refill (4/s) cannot keep up.
            await asyncio.gather(*(ws.send_str(join) for ws in sockets))
            replies = [json.loads((await ws.receive(timeout=20)).data) for ws in sockets]
            limited = [ws for ws, r in zip(sockets, replies, strict=True) if r.get("code")]
            # A refused socket stays open and usable: it is only told to wait.
            await limited[0].send_str('{"type": "ping"}')
            assert json.loads((await limited[0].receive(timeout=10)).data)["type"] == "pong"
        finally:
            for ws in sockets:
                await ws.close()
    codes = [r.get("code", r["type"]) for r in replies]
    assert set(codes) == {"joined", "rate_limited"}
    assert burst - 5 <= codes.count("joined") <= burst + 20
    assert server.stats()["rate_limited"]["join_token"] >= 1


def _post(url: str, body: dict, token: str | None = None) -> tuple[int, dict, str | None]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers.get("Retry-After")


def test_http_routes_answer_429_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = {"exchange_ip": [5, 0.1], "mint_token": [3, 0.1]}
    monkeypatch.setenv("TONGKE_RATE_LIMITS", json.dumps(limits))
    server = start_server_process(tmp_path)
    try:
        server.open_room("r")
        statuses = [_post(f"{server.url}/api/lesson/exchange", {"room": "r", "code": "x"})[0]]
        statuses += [
            _post(f"{server.url}/api/lesson/exchange", {"room": "r", "code": "x"})[0]
            for _ in range(5)
        ]
        assert statuses == [401] * 5 + [429]
        admin = server.admin_token
        minted = [
            _post(f"{server.url}/api/rooms/r/tokens", {"role": "observer"}, admin) for _ in range(4)
        ]
        assert [m[0] for m in minted] == [200, 200, 200, 429]
        _, body, retry_after = minted[-1]
        assert body["error"]["code"] == "rate_limited"
        assert retry_after is not None and int(retry_after) >= 1
        assert server.stats()["rate_limited"] == {"exchange_ip": 1, "mint_token": 1}
    finally:
        server.stop()
