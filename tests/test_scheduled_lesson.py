"""A published timetable opens rooms by itself: the scheduler's lessons are the SFU's rooms."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

from classroom_agent.client import LessonClient
from scheduler.db import Database
from scheduler.lessons import lessons_between
from tests.lesson_server import ROOT, start_server_process


def schedule(data: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "tongke", "schedule", "--data-dir", str(data), *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )


async def test_a_published_lesson_can_be_joined_with_its_room_token(tmp_path: Path) -> None:
    data = tmp_path / "data"
    schedule(data, "demo-data", str(tmp_path / "csv"), "--tier", "S", "--seed", "1")
    schedule(data, "import", str(tmp_path / "csv"))
    schedule(data, "solve")
    schedule(data, "publish")
    db = Database(f"sqlite:///{data / 'tongke.db'}")
    with db.session() as session:
        lesson = lessons_between(session, datetime(2000, 1, 1), datetime(2100, 1, 1))[0]
    db.dispose()

    server = start_server_process(data)
    try:
        token = server.token(lesson.room_id, lesson.master_classroom_id, "master")
        client = LessonClient(server.url, lesson.room_id, token)
        joined = await client.connect()
        assert joined["room"] == lesson.room_id
        assert joined["title"] == lesson.title
        room = server.api("GET", f"/api/rooms/{lesson.room_id}")
        assert room["master"] == lesson.master_classroom_id
        assert room["points"] == list(lesson.point_classroom_ids)
        await client.close()
    finally:
        server.stop()
