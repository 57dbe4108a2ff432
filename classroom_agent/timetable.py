"""Follow the classroom's timetable: join each lesson at its start, leave at its end.

`tongke agent --feed URL` needs no per-lesson token: the scheduler's JSON feed for this
classroom (or agent) lists its lessons, each with a room token for the coming days. The
feed is cached on disk after every successful fetch, so a classroom whose link to the
scheduler is down keeps starting and stopping lessons on time from the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

log = logging.getLogger(__name__)

Clock = Callable[[], float]
FETCH_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ScheduledLesson:
    room: str
    title: str
    start: float  # Unix seconds
    end: float
    role: str  # master | point
    classroom: str
    token: str

    def due(self, now: float, lead_s: float) -> bool:
        return self.start - lead_s <= now < self.end


def parse_feed(data: object) -> list[ScheduledLesson]:
    """The lessons this agent can run: scheduled, with a role and a token; bad items skipped."""
    if not isinstance(data, dict) or not isinstance(data.get("lessons"), list):
        raise ValueError("the feed is not a Tongke JSON feed (no 'lessons' list)")
    lessons = []
    for item in data["lessons"]:
        try:
            if item.get("status", "scheduled") != "scheduled" or not item.get("token"):
                continue
            if item.get("role") not in ("master", "point"):
                continue
            start = dt.datetime.fromisoformat(item["start"]).timestamp()
            end = dt.datetime.fromisoformat(item["end"]).timestamp()
            if end <= start:
                continue
            lessons.append(
                ScheduledLesson(
                    room=str(item["room_id"]),
                    title=str(item.get("title", "")),
                    start=start,
                    end=end,
                    role=str(item["role"]),
                    classroom=str(item.get("classroom_id", "")),
                    token=str(item["token"]),
                )
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            log.warning("feed: skipping a malformed lesson entry")
    lessons.sort(key=lambda lesson: (lesson.start, lesson.room))
    return lessons


class Timetable:
    """The feed, fetched with its ETag and cached on disk."""

    def __init__(self, url: str, cache_path: Path) -> None:
        # The scheduler hands out feed URLs with `?token=` (calendar apps need it there);
        # we send the token as a header instead, and never log or cache it.
        parsed = URL(url)
        self._token = parsed.query.get("token", "")
        self.url = str(parsed.with_query({k: v for k, v in parsed.query.items() if k != "token"}))
        self.cache_path = cache_path
        self.lessons: list[ScheduledLesson] = []
        self.etag = ""
        self.source = "none"  # server | cache | none
        self.last_error = ""
        self.fetched_at: float | None = None
        self._load_cache()

    def _load_cache(self) -> None:
        try:
            cached = json.loads(self.cache_path.read_text(encoding="utf-8"))
            self.lessons = parse_feed(cached["feed"])
            self.etag = str(cached.get("etag", ""))
            self.fetched_at = cached.get("fetched_at")
            self.source = "cache"
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("feed cache %s is unreadable (%s); ignoring it", self.cache_path, exc)

    def _save_cache(self, feed: dict[str, Any]) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"etag": self.etag, "fetched_at": self.fetched_at, "url": self.url, "feed": feed},
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )
        os.replace(tmp, self.cache_path)  # a power cut leaves the old cache or the new one

    async def refresh(self) -> bool:
        """Fetch the feed; on any failure keep (and say we keep) the cached lessons."""
        headers = {"If-None-Match": self.etag} if self.etag else {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(self.url, headers=headers) as resp,
            ):
                if resp.status == 304:
                    self.source, self.last_error = "server", ""
                    self.fetched_at = time.time()
                    return True
                if resp.status != 200:
                    raise ValueError(f"the scheduler answered {resp.status}")
                feed = await resp.json(content_type=None)
                lessons = parse_feed(feed)
                self.etag = resp.headers.get("ETag", "")
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            self.last_error = str(exc) or type(exc).__name__
            if self.lessons:
                self.source = "cache"
            log.warning("feed %s unreachable (%s); using the cached timetable", self.url, exc)
            return False
        self.lessons, self.source, self.last_error = lessons, "server", ""
        self.fetched_at = time.time()
        self._save_cache(feed)
        return True

    def due(self, now: float, lead_s: float) -> ScheduledLesson | None:
        return next((lesson for lesson in self.lessons if lesson.due(now, lead_s)), None)

    def next_start(self, now: float, lead_s: float) -> float | None:
        starts = [lesson.start - lead_s for lesson in self.lessons if lesson.start - lead_s > now]
        return min(starts) if starts else None


RunLesson = Callable[[ScheduledLesson, asyncio.Event], Awaitable[None]]


class FeedFollower:
    """Run `run_lesson` for each lesson of the timetable, from its start (minus the lead
    time) to its end. `clock` is injectable: tests and a classroom with a wrong system
    clock both need it."""

    def __init__(
        self,
        timetable: Timetable,
        run_lesson: RunLesson,
        *,
        lead_s: float = 120.0,
        poll_s: float = 300.0,
        clock: Clock = time.time,
        max_wait_s: float = 30.0,
    ) -> None:
        self.timetable = timetable
        self.run_lesson = run_lesson
        self.lead_s = lead_s
        self.poll_s = poll_s
        self.clock = clock
        self.max_wait_s = max_wait_s
        self.current: ScheduledLesson | None = None
        self.done: set[str] = set()
        self.state = "idle"  # idle | in_lesson | stopped

    def describe(self) -> dict[str, Any]:
        """What the agent reports about its timetable (to its report and the server)."""
        now = self.clock()
        upcoming = self.timetable.next_start(now, self.lead_s)
        return {
            "state": self.state,
            "lesson": self.current.room if self.current else None,
            "feed": self.timetable.source,
            "feed_error": self.timetable.last_error or None,
            "next_join_in_s": round(upcoming - now, 1) if upcoming is not None else None,
        }

    async def run(self, stop: asyncio.Event) -> None:
        next_poll = 0.0
        try:
            while not stop.is_set():
                now = self.clock()
                if now >= next_poll:
                    await self.timetable.refresh()
                    next_poll = self.clock() + self.poll_s
                    now = self.clock()
                lesson = self.timetable.due(now, self.lead_s)
                if lesson is not None and lesson.room not in self.done:
                    await self._run_one(lesson, stop)
                    continue
                wake = min(t for t in (next_poll, self.timetable.next_start(now, self.lead_s)) if t)
                await _wait(stop, min(max(0.05, wake - now), self.max_wait_s))
        finally:
            self.state = "stopped"

    async def _run_one(self, lesson: ScheduledLesson, stop: asyncio.Event) -> None:
        log.info("timetable: joining %s (%s) until %s", lesson.room, lesson.title, lesson.end)
        self.current, self.state = lesson, "in_lesson"
        lesson_stop = asyncio.Event()
        task = asyncio.ensure_future(self.run_lesson(lesson, lesson_stop))
        try:
            while not stop.is_set() and not task.done():
                left = lesson.end - self.clock()
                if left <= 0:
                    break
                await _wait_any(stop, task, min(left, self.max_wait_s))
        finally:
            lesson_stop.set()
            with contextlib.suppress(Exception):
                await task
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("lesson %s ended with %s", lesson.room, task.exception())
            self.done.add(lesson.room)
            self.current, self.state = None, "idle"
            log.info("timetable: left %s", lesson.room)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(stop: asyncio.Event, task: asyncio.Future[None], seconds: float) -> None:
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({stopper, task}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
