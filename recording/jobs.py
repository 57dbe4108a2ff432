"""Packaging jobs: persisted in SQLite by default; with Redis, a Streams consumer group
that workers on other machines join.

A worker holds a job only while it keeps claiming it (a heartbeat resets the entry's
idle time). A worker that dies stops claiming; after `claim_idle_s` another worker takes
the entry over with XAUTOCLAIM. Packaging is idempotent and publishes by rename, so a job
run twice still yields exactly one replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recording.catalog import set_visibility
from recording.errors import RecordingError
from recording.lesson import LESSON_JSON, LessonRecord, assemble
from recording.package import build_replay, clean_stale_work

log = logging.getLogger(__name__)

STREAM = "tongke:replay-jobs"
GROUP = "packagers"
# A job that failed on bad input is not retried; one that crashed is retried this often.
MAX_DELIVERIES = 3
RETRY_START_S = 1.0

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
    """The default handler: build the replay of the job's recording.

    A lesson recording (recordings/<lesson>/ with lesson.json) is first joined from all
    its parts; a plain recording directory is packaged as it is.
    """
    replays = Path(job.replays)
    clean_stale_work(replays)
    source = Path(job.recording)
    if not (source / LESSON_JSON).exists():
        result = build_replay(source, replays, progress=progress)
        return {"replay": str(result.directory), "reused": result.reused, **result.timings}
    record = LessonRecord(source.parent, source.name)
    with record.packaging():
        parts = len(record.load()["parts"])
        result = build_replay(assemble(source), replays, progress=progress)

    def packaged(data: dict[str, Any]) -> None:
        if data.get("state") != "collecting":  # else a newer copy is already waited for
            data["state"] = "packaged"
        data.update(
            packaged_parts=parts,
            packaged_at=time.time(),
            replay=str(result.directory),
        )

    data = record.update(packaged)
    # Who may watch may have changed while this replay was being built.
    chosen = (data.get("facts") or {}).get("visibility")
    if chosen:
        set_visibility(replays, source.name, chosen)
    return {
        "replay": str(result.directory),
        "reused": result.reused,
        "parts": parts,
        **result.timings,
    }


class SqliteJobQueue:
    """Jobs in a SQLite file next to the recordings: they survive a server restart.

    Several processes may share the file (the server and `tongke replay worker
    --sqlite`); a job is claimed by one UPDATE. A worker heart-beats while it packages;
    a job whose worker stopped heart-beating (or, on this machine, whose process is
    gone) is taken over. Packaging is idempotent, so a job run twice leaves one replay.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        worker: str | None = None,
        claim_idle_s: float = 60.0,
        heartbeat_s: float = 10.0,
        poll_s: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_s = claim_idle_s
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, recording TEXT NOT NULL,"
                " replays TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL"
                " DEFAULT 0, worker TEXT, heartbeat REAL, created_at REAL NOT NULL,"
                " status TEXT NOT NULL DEFAULT '{}')"
            )

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def _run(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        db = self._db()
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    async def submit(self, recording: Path, replays: Path) -> str:
        job_id = uuid.uuid4().hex[:12]
        status = {"state": "queued", "recording": str(recording)}
        await asyncio.to_thread(
            self._run,
            "INSERT INTO jobs (id, recording, replays, state, created_at, status)"
            " VALUES (?, ?, ?, 'queued', ?, ?)",
            job_id,
            str(recording),
            str(replays),
            time.time(),
            json.dumps(status),
        )
        self._wake.set()
        return job_id

    async def status(self, job_id: str) -> dict[str, Any] | None:
        rows = await asyncio.to_thread(self._run, "SELECT status FROM jobs WHERE id = ?", job_id)
        return json.loads(rows[0][0]) if rows else None

    async def depth(self) -> dict[str, int]:
        """How many jobs wait and how many are being packaged (for /metrics)."""
        rows = await asyncio.to_thread(
            self._run,
            "SELECT state, COUNT(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY state",
        )
        return {"queued": 0, "running": 0, **{state: int(n) for state, n in rows}}

    def _update(self, job_id: str, **fields: Any) -> None:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            status = {**json.loads(row[0]), **fields} if row else dict(fields)
            state = status.get("state", "queued")
            db.execute(
                "UPDATE jobs SET status = ?, state = ?, heartbeat = ? WHERE id = ?",
                (json.dumps(status), state, time.time(), job_id),
            )
            db.execute("COMMIT")
        finally:
            db.close()

    def _orphaned(self, worker: str | None, heartbeat: float | None) -> bool:
        if worker is None or heartbeat is None:
            return True
        if time.time() - heartbeat > self.claim_idle_s:
            return True
        host, _, pid = worker.rpartition("-")
        if host == socket.gethostname() and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True  # its process on this machine is gone (a restarted server)
            except PermissionError:
                return False
        return False

    def _claim(self) -> Job | None:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT id, recording, replays, state, attempts, worker, heartbeat FROM jobs"
                " WHERE state IN ('queued', 'running') ORDER BY created_at"
            ).fetchall()
            for job_id, recording, replays, state, attempts, worker, heartbeat in rows:
                if state == "running" and not self._orphaned(worker, heartbeat):
                    continue
                if state == "running":
                    log.warning("taking over job %s from %s, which stopped", job_id, worker)
                if attempts >= MAX_DELIVERIES:
                    status = {
                        "state": "failed",
                        "code": "too_many_attempts",
                        "error": f"gave up after {MAX_DELIVERIES} attempts",
                        "recording": recording,
                    }
                    db.execute(
                        "UPDATE jobs SET state = 'failed', status = ? WHERE id = ?",
                        (json.dumps(status), job_id),
                    )
                    continue
                db.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker = ?,"
                    " heartbeat = ? WHERE id = ?",
                    (self.worker, time.time(), job_id),
                )
                db.execute("COMMIT")
                return Job(job_id, recording, replays)
            db.execute("COMMIT")
            return None
        finally:
            db.close()

    async def run_worker(
        self, handler: Handler = package_job, stop: asyncio.Event | None = None
    ) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            job = await asyncio.to_thread(self._claim)
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                continue
            await asyncio.to_thread(self._update, job.id, state="running", worker=self.worker)
            last_sent = [0.0]

            def progress(
                stage: str, f: float, job_id: str = job.id, last_sent: list[float] = last_sent
            ) -> None:
                # Runs in the job's thread: a blocking write is fine here.
                now = time.monotonic()
                if now - last_sent[0] > 1.0 or stage == "done":
                    last_sent[0] = now
                    self._update(job_id, stage=stage, progress=round(f, 3))

            heartbeat = asyncio.create_task(self._heartbeat(job.id))
            try:
                result = await asyncio.to_thread(handler, job, progress)
                final: dict[str, Any] = {"state": "done", "result": result}
            except RecordingError as exc:
                final = {"state": "failed", "error": exc.message, "code": exc.code}
                log.error("job %s failed: %s", job.id, exc.message)
            except Exception as exc:
                # Left for another attempt (up to MAX_DELIVERIES).
                final = {"state": "queued", "error": str(exc), "code": "internal"}
                log.exception("job %s crashed", job.id)
            finally:
                heartbeat.cancel()
            await asyncio.to_thread(self._update, job.id, **final)

    async def _heartbeat(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await asyncio.to_thread(
                self._run,
                "UPDATE jobs SET heartbeat = ? WHERE id = ? AND worker = ?",
                time.time(),
                job_id,
                self.worker,
            )

    async def close(self) -> None:
        return None


class _Outbox:
    """Jobs submitted while Redis was unreachable, kept in SQLite until it is back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._run(
            "CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, recording TEXT NOT NULL,"
            " replays TEXT NOT NULL, created_at REAL NOT NULL, forwarded TEXT)"
        )

    def _run(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def add(self, recording: str, replays: str) -> str:
        job_id = f"outbox-{uuid.uuid4().hex[:12]}"
        self._run(
            "INSERT INTO outbox VALUES (?, ?, ?, ?, NULL)", job_id, recording, replays, time.time()
        )
        return job_id

    def waiting(self) -> list[tuple[str, str, str]]:
        return [
            (r[0], r[1], r[2])
            for r in self._run(
                "SELECT id, recording, replays FROM outbox WHERE forwarded IS NULL"
                " ORDER BY created_at"
            )
        ]

    def forwarded(self, job_id: str, redis_id: str) -> None:
        self._run("UPDATE outbox SET forwarded = ? WHERE id = ?", redis_id, job_id)

    def redis_id(self, job_id: str) -> str | None:
        rows = self._run("SELECT forwarded FROM outbox WHERE id = ?", job_id)
        return rows[0][0] if rows else None


def _redis_down() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)


class RedisJobQueue:
    """A Redis Streams consumer group. Workers outlive Redis outages: they reconnect with
    backoff, keep a finished job's result until Redis takes it (so it is acknowledged
    once), and skip a redelivered job that is already done. Jobs submitted during an
    outage wait in the SQLite `outbox` and are sent when Redis is back."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = STREAM,
        group: str = GROUP,
        consumer: str | None = None,
        claim_idle_s: float = 60.0,
        heartbeat_s: float = 10.0,
        outbox: Path | None = None,
        retry_max_s: float = 30.0,
    ) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, socket_timeout=15
        )
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.heartbeat_s = heartbeat_s
        self.retry_max_s = retry_max_s
        self._outbox = _Outbox(outbox) if outbox is not None else None
        self._backoff = RETRY_START_S

    def _status_key(self, job_id: str) -> str:
        return f"{self.stream}:status:{job_id}"

    async def _ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _add(self, recording: str, replays: str) -> str:
        await self._ensure_group()
        job_id = await self.redis.xadd(self.stream, {"recording": recording, "replays": replays})
        await self._set_status(job_id, state="queued", recording=recording)
        return job_id

    async def submit(self, recording: Path, replays: Path) -> str:
        try:
            return await self._add(str(recording), str(replays))
        except _redis_down() as exc:
            if self._outbox is None:
                raise
            job_id = await asyncio.to_thread(self._outbox.add, str(recording), str(replays))
            log.warning(
                "Redis unreachable (%s): job %s waits in %s", exc, job_id, self._outbox.path
            )
            return job_id

    async def flush_outbox(self) -> int:
        """Send the jobs that waited for Redis; returns how many were sent."""
        if self._outbox is None:
            return 0
        sent = 0
        for job_id, recording, replays in await asyncio.to_thread(self._outbox.waiting):
            redis_id = await self._add(recording, replays)
            await asyncio.to_thread(self._outbox.forwarded, job_id, redis_id)
            log.info("job %s sent to Redis as %s", job_id, redis_id)
            sent += 1
        return sent

    async def status(self, job_id: str) -> dict[str, Any] | None:
        if job_id.startswith("outbox-") and self._outbox is not None:
            forwarded = await asyncio.to_thread(self._outbox.redis_id, job_id)
            if forwarded is None:
                return {"state": "waiting_for_redis"}
            job_id = forwarded
        raw = await self.redis.hgetall(self._status_key(job_id))
        return {k: json.loads(v) for k, v in raw.items()} if raw else None

    async def depth(self) -> dict[str, int]:
        """Entries no worker has read yet, entries a worker holds, jobs waiting for Redis."""
        from redis.exceptions import ResponseError

        queued = running = 0
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except ResponseError:  # no job was ever queued: the stream does not exist yet
            groups = []
        for group in groups:
            if group.get("name") == self.group:
                running = int(group.get("pending") or 0)
                lag = group.get("lag")
                queued = int(lag) if lag is not None else 0
        waiting = len(await asyncio.to_thread(self._outbox.waiting)) if self._outbox else 0
        return {"queued": queued, "running": running, "waiting_for_redis": waiting}

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

    async def _pause(self, stop: asyncio.Event, exc: BaseException) -> None:
        log.warning(
            "Redis unreachable (%s); trying again in %.1f s",
            exc or type(exc).__name__,
            self._backoff,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self._backoff * random.uniform(0.8, 1.2))
        self._backoff = min(self._backoff * 2, self.retry_max_s)

    async def run_worker(
        self, handler: Handler = package_job, stop: asyncio.Event | None = None
    ) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self._ensure_group()
                await self.flush_outbox()
                entry = await self._next()
                self._backoff = RETRY_START_S
            except _redis_down() as exc:
                await self._pause(stop, exc)
                continue
            if entry is not None:
                await self._handle(entry, handler, stop)

    async def _handle(
        self, entry: tuple[str, dict[str, str]], handler: Handler, stop: asyncio.Event
    ) -> None:
        job_id, fields = entry
        job = Job(job_id, fields["recording"], fields["replays"])
        try:
            status = await self.status(job_id) or {}
            if status.get("state") in ("done", "failed"):
                # Finished before an outage hid the acknowledgement: never run it twice.
                await self.redis.xack(self.stream, self.group, job_id)
                return
            if await self._deliveries(job_id) > MAX_DELIVERIES:
                await self._set_status(
                    job_id,
                    state="failed",
                    code="too_many_attempts",
                    error=f"gave up after {MAX_DELIVERIES} attempts",
                )
                await self.redis.xack(self.stream, self.group, job_id)
                return
            await self._set_status(job_id, state="running", worker=self.consumer)
        except _redis_down() as exc:
            await self._pause(stop, exc)
            return
        loop = asyncio.get_running_loop()
        last_sent = [0.0]

        def progress(stage: str, f: float) -> None:
            now = time.monotonic()
            if now - last_sent[0] > 1.0 or stage == "done":
                last_sent[0] = now
                asyncio.run_coroutine_threadsafe(
                    self._set_status(job_id, stage=stage, progress=round(f, 3)), loop
                )

        heartbeat = asyncio.create_task(self._heartbeat(job_id))
        final: dict[str, Any]
        try:
            result = await asyncio.to_thread(handler, job, progress)
            final = {"state": "done", "result": result}
        except RecordingError as exc:
            final = {"state": "failed", "code": exc.code, "error": exc.message}
            log.error("job %s failed: %s", job_id, exc.message)
        except Exception as exc:
            # Left pending: another attempt (here or elsewhere) may succeed.
            log.exception("job %s crashed", job_id)
            final = {"state": "retrying", "error": str(exc)}
        finally:
            heartbeat.cancel()
        # The outcome is kept until Redis takes it, however long the outage.
        while True:
            try:
                await self._set_status(job_id, **final)
                if final["state"] != "retrying":
                    await self.redis.xack(self.stream, self.group, job_id)
                self._backoff = RETRY_START_S
                return
            except _redis_down() as exc:
                if stop.is_set():
                    return  # still pending in Redis; a redelivery finds the replay built
                await self._pause(stop, exc)

    async def _heartbeat(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            # Re-claiming our own entry resets its idle time: others leave it alone.
            try:
                await self.redis.xclaim(
                    self.stream, self.group, self.consumer, 0, [job_id], justid=True
                )
            except _redis_down():
                continue

    async def close(self) -> None:
        await self.redis.aclose()


JobQueue = SqliteJobQueue | RedisJobQueue


def make_queue(redis_url: str = "", *, sqlite_path: Path | None = None, **kwargs: Any) -> JobQueue:
    """Redis Streams when `redis_url` is set, else the SQLite file `sqlite_path`."""
    if redis_url:
        return RedisJobQueue(redis_url, outbox=sqlite_path, **kwargs)
    if sqlite_path is None:
        raise ValueError("a job queue needs a Redis URL or a SQLite file")
    return SqliteJobQueue(sqlite_path, **kwargs)
