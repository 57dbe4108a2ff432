"""Packaging jobs: in-process by default, Redis Streams consumer group across machines."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from recording.jobs import RedisJobQueue
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
    async with TestClient(TestServer(make_app(data, run_worker=True))) as client:
        state = await upload_recording(recording_copy, str(client.make_url("/")), agent_token)
        student = {"Authorization": "Bearer " + token(Role.STUDENT, "replays", "s-yizhong")}

        async def listed() -> list[dict]:
            resp = await client.get("/api/replays", headers=student)
            return (await resp.json())["replays"]

        replays = await _wait(listed, "the replay to be packaged")
        assert replays[0]["lesson"] == recording_copy.name
        assert state["job"]


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
