from __future__ import annotations

import copy
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from recording.api import setup
from recording.lesson import LessonFacts
from recording.package import PackageResult, build_replay
from recording.synthetic import SyntheticLesson, make_recording
from tongke.app import CTX, WEB_ROOT, AppContext
from tongke.config import Config
from tongke.tokens import Role, issue_token

SECRET = "test-secret-for-recording-tests-0123456789"
LESSON = SyntheticLesson().meta.lesson


@pytest.fixture(scope="session")
def master_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12 s lesson: teacher, courseware, one teaching point, microphone; a call-on
    from 5 s to 8 s; slides change every 4 s, only some announced in the timeline."""
    return make_recording(tmp_path_factory.mktemp("rec"), SyntheticLesson())


@pytest.fixture
def recording_copy(master_recording: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "rec" / master_recording.name
    shutil.copytree(master_recording, dst)
    return dst


@pytest.fixture(scope="session")
def packaged(master_recording: Path, tmp_path_factory: pytest.TempPathFactory) -> PackageResult:
    return build_replay(master_recording, tmp_path_factory.mktemp("replays"))


# What the scheduler would say about the synthetic lesson (not what its manifest says).
FACTS = LessonFacts(
    lesson=LESSON,
    title="分数的加减",
    school="s-yizhong",
    school_name="第一中学",
    subject="数学",
    grade="7",
    teacher="王老师",
    master="c-master",
    points={"p-xiaohe": "小河教学点"},
    schools=["s-yizhong", "s-xiaohe"],
    date="2025-06-15",
)


def make_app(
    data_dir: Path,
    *,
    run_worker: bool = False,
    redis_url: str = "",
    lessons: dict[str, LessonFacts] | None = None,
    upload_wait_s: int = 120,
) -> web.Application:
    app = web.Application()
    config = Config(
        data_dir=data_dir, secret=SECRET, redis_url=redis_url, replay_upload_wait_s=upload_wait_s
    )
    ctx = AppContext(config=config, secret=SECRET)
    app[CTX] = ctx
    known = {LESSON: FACTS} if lessons is None else lessons
    setup(app, ctx, run_worker=run_worker, lessons=lambda lesson: copy.deepcopy(known.get(lesson)))
    app.router.add_static("/static/", WEB_ROOT, show_index=False)
    return app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(make_app(tmp_path / "server"))) as c:
        yield c


def token(
    role: Role | str, room: str = LESSON, classroom: str = "c-master", ttl_s: int = 3600
) -> str:
    return issue_token(SECRET, room=room, classroom=classroom, role=role, ttl_s=ttl_s)


@pytest.fixture
def agent_token() -> str:
    return token(Role.AGENT)


@pytest.fixture
def published_replay(packaged: PackageResult, tmp_path: Path) -> Iterator[Path]:
    """A server data dir holding one packaged replay."""
    data = tmp_path / "server"
    (data / "replays").mkdir(parents=True)
    shutil.copytree(packaged.directory, data / "replays" / packaged.directory.name)
    yield data
