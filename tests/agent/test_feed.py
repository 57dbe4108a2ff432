"""An agent with only a feed URL: the timetable is cached, lessons are joined and left on time.

The feed is served by a small aiohttp app in the test in the scheduler's JSON feed shape
(scheduler/ical.py json_feed); the lesson room and its token are the real server's. The
clock is injected: lessons are on a school morning, "now" is shortly before.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from classroom_agent.agent import ClassroomAgent
from classroom_agent.cli import lesson_config
from classroom_agent.config import AgentConfig
from classroom_agent.timetable import FeedFollower, ScheduledLesson, Timetable, parse_feed
from tests.lesson_server import ServerProcess

TZ = dt.timezone(dt.timedelta(hours=8))
MORNING = dt.datetime(2030, 9, 2, 8, 0, tzinfo=TZ)  # a Monday, first period


def feed_item(room: str, start: dt.datetime, end: dt.datetime, token: str, **kw: Any) -> dict:
    return {
        "room_id": room,
        "title": "数学",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "role": "point",
        "classroom_id": "p-xiaohe",
        "status": "scheduled",
        "token": token,
        "master_classroom_id": "c-master",
        "point_classroom_ids": ["p-xiaohe"],
        **kw,
    }


class FeedServer:
    def __init__(self) -> None:
        self.feed: dict[str, Any] = {"lessons": []}
        self.requests = 0
        self.credentials: list[tuple[str | None, str | None]] = []  # (header, query)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> None:
        async def handler(request: web.Request) -> web.Response:
            self.requests += 1
            self.credentials.append(
                (request.headers.get("Authorization"), request.query.get("token"))
            )
            tag = f'"{hash(str(self.feed)) & 0xFFFFFF}"'
            if request.headers.get("If-None-Match") == tag:
                return web.Response(status=304, headers={"ETag": tag})
            return web.json_response(self.feed, headers={"ETag": tag})

        app = web.Application()
        app.router.add_get("/api/schedule/feeds/p-xiaohe.json", handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api/schedule/feeds/p-xiaohe.json?token=f"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def feed_server() -> AsyncIterator[FeedServer]:
    server = FeedServer()
    await server.start()
    yield server
    await server.stop()


def test_parse_feed_keeps_only_runnable_lessons() -> None:
    end = MORNING + dt.timedelta(minutes=40)
    lessons = parse_feed(
        {
            "lessons": [
                feed_item("b", MORNING + dt.timedelta(hours=1), end + dt.timedelta(hours=1), "t"),
                feed_item("a", MORNING, end, "t"),
                feed_item("cancelled", MORNING, end, "t", status="cancelled"),
                feed_item("no-token", MORNING, end, ""),
                feed_item("no-role", MORNING, end, "t", role=None),
                {"room_id": "broken", "start": "not a time"},
            ]
        }
    )
    assert [lesson.room for lesson in lessons] == ["a", "b"]
    with pytest.raises(ValueError):
        parse_feed({"nope": 1})


async def test_the_timetable_is_cached_and_used_when_the_scheduler_is_down(
    feed_server: FeedServer, tmp_path: Path
) -> None:
    feed_server.feed = {
        "lessons": [feed_item("math-1", MORNING, MORNING + dt.timedelta(minutes=40), "tok")]
    }
    cache = tmp_path / "feed-cache.json"
    timetable = Timetable(feed_server.url, cache)
    assert await timetable.refresh() and timetable.source == "server"
    assert cache.exists()
    assert await timetable.refresh()  # unchanged: a 304 with the ETag
    assert feed_server.requests == 2
    # The link's `?token=` travels as a header, and stays out of the cache file.
    assert feed_server.credentials == [("Bearer f", None)] * 2
    assert "token=f" not in cache.read_text()
    await feed_server.stop()
    assert not await timetable.refresh()
    assert timetable.source == "cache" and timetable.last_error
    assert [lesson.room for lesson in timetable.lessons] == ["math-1"]
    # A restarted agent with the scheduler still down starts from the disk cache.
    again = Timetable(feed_server.url, cache)
    assert again.source == "cache"
    assert again.due(MORNING.timestamp() - 60, lead_s=120) == again.lessons[0]
    assert again.due(MORNING.timestamp() - 180, lead_s=120) is None


async def test_an_agent_with_only_a_feed_joins_and_leaves_its_lesson_on_time(
    server: ServerProcess, room: str, feed_server: FeedServer, tmp_path: Path
) -> None:
    # The lesson is 08:00-08:00:08 on a school morning; "now" starts at 07:59:57 and the
    # agent joins 1 s early: it must join about 2 s from now and leave about 8 s later.
    offset = (MORNING - dt.timedelta(seconds=3)).timestamp() - time.time()

    def clock() -> float:
        return time.time() + offset

    end = MORNING + dt.timedelta(seconds=8)
    token = server.token(room, "p-xiaohe", "point", name="小河教学点", ttl_s=3600)
    feed_server.feed = {"lessons": [feed_item(room, MORNING, end, token)]}
    base = AgentConfig(server_url=server.url, synthetic=True, role="point")
    joined_at: list[float] = []

    async def run_lesson(lesson: ScheduledLesson, stop: asyncio.Event) -> None:
        joined_at.append(clock())
        config = lesson_config(base, lesson, own_sources=False)
        config.sources = [s for s in config.sources if s.kind == "audio"]
        await ClassroomAgent(config, record=False).run(stop)

    timetable = Timetable(feed_server.url, tmp_path / "cache.json")
    follower = FeedFollower(timetable, run_lesson, lead_s=1.0, poll_s=60.0, clock=clock)
    stop = asyncio.Event()
    task = asyncio.ensure_future(follower.run(stop))

    def present() -> bool:
        room_state = server.api("GET", f"/api/rooms/{room}")
        return any(p["classroom"] == "p-xiaohe" for p in room_state["participants"])

    try:
        deadline = time.monotonic() + 15
        while not present():
            assert time.monotonic() < deadline, "the agent never joined"
            assert clock() < end.timestamp(), "the lesson ended before the agent joined"
            await asyncio.sleep(0.1)
        assert joined_at and joined_at[0] >= MORNING.timestamp() - 1.0 - 0.2
        assert follower.describe()["state"] == "in_lesson"
        while present():
            assert time.monotonic() < deadline + 10, "the agent never left"
            await asyncio.sleep(0.1)
        left = clock()
        assert end.timestamp() - 0.2 <= left <= end.timestamp() + 4.0
        # The server sees the agent go before the agent has finished closing; the
        # follower marks the lesson done once it has.
        while room not in follower.done:
            assert time.monotonic() < deadline + 20, "the lesson was never marked done"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
