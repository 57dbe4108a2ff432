"""Packaging jobs: an in-process queue by default; with Redis, a Streams consumer group
that workers on other machines join.

A worker holds a job only while it keeps claiming it (a heartbeat resets the entry's
idle time). A worker that dies stops claiming; after `claim_idle_s` another worker takes
the entry over with XAUTOCLAIM. Packaging is idempotent and publishes by rename, so a job
run twice still yields exactly one replay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recording.errors import RecordingError
from recording.package import build_replay, clean_stale_work

log = logging.getLogger(__name__)

STREAM = "tongke:replay-jobs"
GROUP = "packagers"
# A job that failed on bad input is not retried; one that crashed is retried this often.
MAX_DELIVERIES = 3

Progress = Callable[[str, float], None]
Handler = Callable[["Job", Progress], dict[str, Any]]


@dataclass
class Job:
    id: str
    recording: str
    replays: str

    def fields(self) -> dict[str, str]:
        return {"recording": self.recording, "replays": self.replays}


def package_job(job: Job, progress: Progress) -> dict[str, Any]:
    """The default handler: build the replay for the job's recording."""
    replays = Path(job.replays)
    clean_stale_work(replays)
    result = build_replay(job.recording, replays, progress=progress)
    return {"replay": str(result.directory), "reused": result.reused, **result.timings}


class LocalJobQueue:
    """In-process queue: jobs run one at a time in a worker thread."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._status: dict[str, dict[str, Any]] = {}

    async def submit(self, recording: Path, replays: Path) -> str:
        job = Job(uuid.uuid4().hex[:12], str(recording), str(replays))
        self._status[job.id] = {"state": "queued", "recording": job.recording}
        await self._queue.put(job)
        return job.id

    async def status(self, job_id: str) -> dict[str, Any] | None:
        return self._status.get(job_id)

    async def run_worker(
        self, handler: Handler = package_job, stop: asyncio.Event | None = None
    ) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                job = await asyncio.wait_for(self._queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            status = self._status[job.id]
            status["state"] = "running"

            def progress(stage: str, f: float, status: dict[str, Any] = status) -> None:
                status.update(stage=stage, progress=round(f, 3))

            try:
                result = await asyncio.to_thread(handler, job, progress)
                status.update(state="done", result=result)
            except RecordingError as exc:
                status.update(state="failed", error=exc.message, code=exc.code)
                log.error("job %s failed: %s", job.id, exc.message)
            except Exception as exc:
                status.update(state="failed", error=str(exc), code="internal")
                log.exception("job %s crashed", job.id)

    async def close(self) -> None:
        return None


class RedisJobQueue:
    def __init__(
        self,
        url: str,
        *,
        stream: str = STREAM,
        group: str = GROUP,
        consumer: str | None = None,
        claim_idle_s: float = 60.0,
        heartbeat_s: float = 10.0,
    ) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(url, decode_responses=True)
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.heartbeat_s = heartbeat_s

    def _status_key(self, job_id: str) -> str:
        return f"{self.stream}:status:{job_id}"

    async def _ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def submit(self, recording: Path, replays: Path) -> str:
        await self._ensure_group()
        job_id = await self.redis.xadd(
            self.stream, {"recording": str(recording), "replays": str(replays)}
        )
        await self._set_status(job_id, state="queued", recording=str(recording))
        return job_id

    async def status(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hgetall(self._status_key(job_id))
        return {k: json.loads(v) for k, v in raw.items()} if raw else None

    async def _set_status(self, job_id: str, **fields: Any) -> None:
        # One hash field per key: progress reports from the job's thread and the final
        # state never overwrite each other.
        key = self._status_key(job_id)
        fields["updated_at"] = time.time()
        await self.redis.hset(key, mapping={k: json.dumps(v) for k, v in fields.items()})
        await self.redis.expire(key, 7 * 24 * 3600)

    async def _next(self) -> tuple[str, dict[str, str]] | None:
        # Orphans first: entries whose worker stopped heart-beating.
        _, claimed, *_ = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=1
        )
        claimed = [c for c in claimed if c and c[1]]
        if claimed:
            log.warning("took over job %s from a worker that stopped", claimed[0][0])
            return claimed[0]
        reply = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=1, block=1000
        )
        for _, entries in reply or []:
            for entry in entries:
                return entry
        return None

    async def _deliveries(self, job_id: str) -> int:
        pending = await self.redis.xpending_range(
            self.stream, self.group, min=job_id, max=job_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    async def run_worker(
        self, handler: Handler = package_job, stop: asyncio.Event | None = None
    ) -> None:
        stop = stop or asyncio.Event()
        await self._ensure_group()
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            entry = await self._next()
            if entry is None:
                continue
            job_id, fields = entry
            job = Job(job_id, fields["recording"], fields["replays"])
            if await self._deliveries(job_id) > MAX_DELIVERIES:
                await self._set_status(
                    job_id,
                    state="failed",
                    code="too_many_attempts",
                    error=f"gave up after {MAX_DELIVERIES} attempts",
                )
                await self.redis.xack(self.stream, self.group, job_id)
                continue
            await self._set_status(job_id, state="running", worker=self.consumer)
            last_sent = [0.0]

            def progress(
                stage: str, f: float, job_id: str = job_id, last_sent: list[float] = last_sent
            ) -> None:
                now = time.monotonic()
                if now - last_sent[0] > 1.0 or stage == "done":
                    last_sent[0] = now
                    asyncio.run_coroutine_threadsafe(
                        self._set_status(job_id, stage=stage, progress=round(f, 3)), loop
                    )

            heartbeat = asyncio.create_task(self._heartbeat(job_id))
            try:
                result = await asyncio.to_thread(handler, job, progress)
                await self._set_status(job_id, state="done", result=result)
            except RecordingError as exc:
                await self._set_status(job_id, state="failed", code=exc.code, error=exc.message)
                log.error("job %s failed: %s", job_id, exc.message)
            except Exception as exc:
                # Leave it pending: another attempt (here or elsewhere) may succeed.
                log.exception("job %s crashed", job_id)
                await self._set_status(job_id, state="retrying", error=str(exc))
                continue
            finally:
                heartbeat.cancel()
            await self.redis.xack(self.stream, self.group, job_id)

    async def _heartbeat(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            # Re-claiming our own entry resets its idle time: others leave it alone.
            await self.redis.xclaim(
                self.stream, self.group, self.consumer, 0, [job_id], justid=True
            )

    async def close(self) -> None:
        await self.redis.aclose()


JobQueue = LocalJobQueue | RedisJobQueue


def make_queue(redis_url: str = "", **kwargs: Any) -> JobQueue:
    return RedisJobQueue(redis_url, **kwargs) if redis_url else LocalJobQueue()
