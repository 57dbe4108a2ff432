"""Packaging jobs: in-process by default, Redis Streams consumer group across machines."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from recording.jobs import Job, RedisJobQueue, SqliteJobQueue
from recording.upload import upload_recording
from tongke.tokens import Role

from .conftest import make_app, token

REDIS = "redis://127.0.0.1:6379/0"
REPO = Path(__file__).resolve().parents[2]


async def _wait(predicate, what: str, timeout_s: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_uploaded_recording_is_packaged_in_process_and_shows_in_the_catalog(
    recording_copy: Path, tmp_path: Path, agent_token: str
) -> None:
    data = tmp_path / "server"
    # The teaching point never uploads: the lesson is packaged after the bounded wait.
    async with TestClient(TestServer(make_app(data, run_worker=True, upload_wait_s=1))) as client:
        state = await upload_recording(recording_copy, str(client.make_url("/")), agent_token)
        student = {"Authorization": "Bearer " + token(Role.STUDENT, "replays", "s-yizhong")}

        async def listed() -> list[dict]:
            resp = await client.get("/api/replays", headers=student)
            return (await resp.json())["replays"]

        replays = await _wait(listed, "the replay to be packaged")
        assert replays[0]["lesson"] == recording_copy.name
        assert state["waiting_for"] == ["p-xiaohe"]


@pytest.mark.redis
async def test_worker_killed_mid_job_leaves_it_to_another_and_one_replay_results(
    master_recording: Path, tmp_path: Path
) -> None:
    stream = f"tongke:test-jobs:{uuid.uuid4().hex[:8]}"
    replays = tmp_path / "replays"
    q = RedisJobQueue(REDIS, stream=stream, consumer="survivor", claim_idle_s=1, heartbeat_s=0.2)
    marker = tmp_path / "stalled"
    doomed = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "tests/recording/slow_worker.py"),
        REDIS,
        stream,
        str(marker),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    stop = asyncio.Event()
    survivor: asyncio.Task | None = None
    try:
        job_id = await q.submit(master_recording, replays)

        async def stalled() -> bool:
            return marker.exists()

        await _wait(stalled, "the first worker to take the job", 60)
        # Kill it in the middle of packaging: no ack, no cleanup.
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        survivor = asyncio.create_task(q.run_worker(stop=stop))

        async def done() -> dict | None:
            status = await q.status(job_id)
            return status if status and status["state"] == "done" else None

        status = await _wait(done, "the second worker to finish the job")
        assert status["worker"] == "survivor"
        published = [p for p in replays.iterdir() if not p.name.startswith(".")]
        assert [p.name for p in published] == [master_recording.name]
        assert (published[0] / "replay.json").exists()
        pending = await q.redis.xpending(stream, "packagers")
        assert pending["pending"] == 0
    finally:
        stop.set()
        if survivor is not None:
            await asyncio.wait_for(survivor, 10)
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
        await q.redis.delete(stream, *[k async for k in q.redis.scan_iter(f"{stream}:*")])
        await q.close()


def _quick(calls: list[str]):  # type: ignore[no-untyped-def]
    def handler(job: Job, progress) -> dict:  # type: ignore[no-untyped-def]
        calls.append(job.recording)
        return {"ok": True}

    return handler


async def test_sqlite_jobs_survive_a_restart_and_orphans_are_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    first = SqliteJobQueue(db)
    waiting = await first.submit(tmp_path / "lesson-a", tmp_path / "replays")
    # A job that a killed server was running: its process is gone.
    orphan = await first.submit(tmp_path / "lesson-b", tmp_path / "replays")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    first._run(
        "UPDATE jobs SET state = 'running', worker = ?, heartbeat = ? WHERE id = ?",
        f"{socket.gethostname()}-{dead.pid}",
        time.time(),
        orphan,
    )
    # The restarted server opens the same file and runs both, once each.
    calls: list[str] = []
    restarted = SqliteJobQueue(db, poll_s=0.05)
    stop = asyncio.Event()
    worker = asyncio.create_task(restarted.run_worker(_quick(calls), stop=stop))
    try:

        async def both_done() -> bool:
            states = [(await restarted.status(j) or {}).get("state") for j in (waiting, orphan)]
            return states == ["done", "done"]

        await _wait(both_done, "both jobs to run", 20)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 5)
    assert sorted(calls) == [str(tmp_path / "lesson-a"), str(tmp_path / "lesson-b")]


class _Cuttable:
    """A TCP relay to Redis that can be cut, as a network outage between worker and Redis."""

    def __init__(self) -> None:
        self.up = True
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        r2, w2 = await asyncio.open_connection("127.0.0.1", 6379)
        self.writers += [writer, w2]

        async def pipe(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
            try:
                while data := await a.read(65536):
                    b.write(data)
                    await b.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                b.close()

        await asyncio.gather(pipe(reader, w2), pipe(r2, writer))

    def cut(self) -> None:
        self.up = False
        for w in self.writers:
            w.close()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


@pytest.mark.redis
async def test_a_redis_outage_loses_no_job_and_runs_none_twice(tmp_path: Path) -> None:
    stream = f"tongke:test-jobs:{uuid.uuid4().hex[:8]}"
    relay = _Cuttable()
    url = f"redis://127.0.0.1:{await relay.start()}/0"
    q = RedisJobQueue(
        url, stream=stream, consumer="w", outbox=tmp_path / "outbox.sqlite3", retry_max_s=0.5
    )
    direct = RedisJobQueue(REDIS, stream=stream)
    calls: list[str] = []
    stop = asyncio.Event()
    worker = asyncio.create_task(q.run_worker(_quick(calls), stop=stop))
    try:
        before = await q.submit(tmp_path / "before", tmp_path / "replays")

        async def ran(n: int):  # type: ignore[no-untyped-def]
            async def check() -> bool:
                return len(calls) >= n

            return check

        await _wait(await ran(1), "the job before the outage", 20)
        relay.cut()
        # An upload completes while Redis is unreachable: the job waits in the outbox.
        during = await q.submit(tmp_path / "during", tmp_path / "replays")
        assert during.startswith("outbox-")
        assert (await q.status(during)) == {"state": "waiting_for_redis"}

        async def worker_saw_it() -> bool:
            return q._backoff != 1.0  # failed at least once and is backing off

        await _wait(worker_saw_it, "the worker to notice the outage", 20)
        relay.up = True
        await _wait(await ran(2), "the outbox job once Redis is back", 30)

        async def done() -> bool:
            s = await q.status(during)
            return bool(s and s.get("state") == "done")

        await _wait(done, "the job's status", 10)
        assert calls == [str(tmp_path / "before"), str(tmp_path / "during")]
        assert (await q.status(before) or {}).get("state") == "done"
        pending = await direct.redis.xpending(stream, "packagers")
        assert pending["pending"] == 0
        assert not worker.done()  # the worker lived through the outage
    finally:
        stop.set()
        await asyncio.wait_for(worker, 10)
        await relay.close()
        await direct.redis.delete(stream, *[k async for k in direct.redis.scan_iter(f"{stream}:*")])
        await q.close()
        await direct.close()
