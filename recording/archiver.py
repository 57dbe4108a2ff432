"""From taught lesson to catalogued replay with no manual step.

A lesson's classrooms upload their copies when it ends. Once every classroom the lesson
expects has uploaded (after a short settling time), or at the latest `upload_wait_s`
after the first copy arrived, the lesson is queued for packaging; a copy arriving later
queues it again and the replay is rebuilt with it (one lesson, one replay). The state
lives in recordings/<lesson>/lesson.json, so a restarted server resumes the waits it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from recording.lesson import LESSON_JSON, SERVER_TIMELINE, LessonFacts, LessonRecord
from recording.package import clean_stale_work

log = logging.getLogger(__name__)

# Copies of one lesson arrive within seconds of each other: wait this long after the
# last expected one so that one packaging run covers them all.
SETTLE_S = 2.0


class Queue(Protocol):
    async def submit(self, recording: Path, replays: Path) -> str: ...


class Archiver:
    def __init__(
        self,
        recordings: Path,
        replays: Path,
        queue: Queue,
        *,
        upload_wait_s: float = 120.0,
        settle_s: float = SETTLE_S,
        timelines: Path | None = None,
    ) -> None:
        self.recordings = recordings
        self.replays = replays
        self.queue = queue
        self.upload_wait_s = upload_wait_s
        self.settle_s = settle_s
        # The media server's room timelines, <lesson>.jsonl each.
        self.timelines = timelines
        self._timers: dict[str, asyncio.Task[None]] = {}

    def record(self, lesson: str) -> LessonRecord:
        return LessonRecord(self.recordings, lesson)

    async def start(self) -> None:
        """Resume the waits a stopped server left, and clear its half-built replays."""
        for removed in await asyncio.to_thread(clean_stale_work, self.replays):
            log.info("removed leftover build directory %s", removed.name)
        for path in sorted(self.recordings.glob(f"*/{LESSON_JSON}")):
            record = self.record(path.parent.name)
            data = await asyncio.to_thread(record.load)
            if data.get("state") == "collecting":
                self._schedule(record.lesson, float(data.get("deadline") or 0.0))

    async def part_added(self, lesson: str) -> dict[str, Any]:
        """A classroom's copy joined the lesson recording: decide when to package."""
        record = self.record(lesson)
        now = time.time()

        def change(data: dict[str, Any]) -> None:
            facts = LessonFacts.from_json(data["facts"])
            # The server's own recording is there at the lesson's end; what is waited
            # for are the classrooms' safety copies, which fill its holes.
            have = {p["classroom"] for p in data["parts"] if p.get("origin") != "server"}
            missing = [c for c in facts.classrooms() if c not in have]
            first = data.get("first_part_at") or now
            data["first_part_at"] = first
            data["waiting_for"] = missing
            limit = first + self.upload_wait_s
            data["deadline"] = min(limit, now + self.settle_s) if not missing else limit
            data["state"] = "collecting"

        data = await asyncio.to_thread(record.update, change)
        self._schedule(lesson, float(data["deadline"]))
        return data

    def _schedule(self, lesson: str, deadline: float) -> None:
        old = self._timers.pop(lesson, None)
        if old is not None:
            old.cancel()
        self._timers[lesson] = asyncio.ensure_future(self._package_at(lesson, deadline))

    async def _package_at(self, lesson: str, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.time()))
        self._timers.pop(lesson, None)
        record = self.record(lesson)
        await asyncio.to_thread(self._copy_room_timeline, lesson)
        try:
            job = await self.queue.submit(record.directory, self.replays)
        except Exception:
            log.exception("lesson %s: could not queue packaging; retrying in 30 s", lesson)
            self._schedule(lesson, time.time() + 30)
            return

        def queued(data: dict[str, Any]) -> None:
            data.update(state="queued", job=job, queued_at=time.time())

        await asyncio.to_thread(record.update, queued)
        log.info("lesson %s: packaging queued as job %s", lesson, job)

    def _copy_room_timeline(self, lesson: str) -> None:
        """Take the room's timeline into the lesson record (call-ons make chapters)."""
        if self.timelines is None:
            return
        source = self.timelines / f"{lesson}.jsonl"
        if source.exists():
            target = self.record(lesson).directory / SERVER_TIMELINE
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)

    async def close(self) -> None:
        timers = list(self._timers.values())
        self._timers.clear()
        for t in timers:
            t.cancel()
        for t in timers:
            with contextlib.suppress(asyncio.CancelledError):
                await t
