"""The replay catalog: who sees what, search, signed links that expire."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from recording.catalog import signed_base
from tongke.tokens import Role

from .conftest import LESSON, SECRET, make_app, token


def _add_lesson(data: Path, lesson: str, **changes: object) -> None:
    src = data / "replays" / LESSON
    dst = data / "replays" / lesson
    shutil.copytree(src, dst)
    entry = json.loads((dst / "replay.json").read_text())
    entry.update(lesson=lesson, **changes)
    if "school" in changes:
        entry["schools"] = [changes["school"]]
    (dst / "replay.json").write_text(json.dumps(entry))


async def test_students_see_their_school_and_public_lessons_and_can_search(
    published_replay: Path,
) -> None:
    _add_lesson(
        published_replay,
        "other-school-private",
        school="s-erzhong",
        teacher="李老师",
        title="Secret",
    )
    _add_lesson(
        published_replay,
        "other-school-open",
        school="s-erzhong",
        public=True,
        subject="physics",
        teacher="李老师",
        date="2025-03-05",
        title="Levers",
    )
    async with TestClient(TestServer(make_app(published_replay))) as client:
        student = token(Role.STUDENT, room="replays", classroom="s-yizhong")

        async def lessons(**query: str) -> list[str]:
            resp = await client.get(
                "/api/replays", params=query, headers={"Authorization": f"Bearer {student}"}
            )
            assert resp.status == 200
            return sorted(r["lesson"] for r in (await resp.json())["replays"])

        assert await lessons() == sorted([LESSON, "other-school-open"])
        assert await lessons(subject="physics") == ["other-school-open"]
        assert await lessons(teacher="王老师") == [LESSON]
        assert await lessons(date="2025-03-05") == ["other-school-open"]
        assert await lessons(q="fractions") == [LESSON]
        assert await lessons(grade="9") == []
        resp = await client.get("/api/replays")
        assert resp.status == 401


async def test_replay_links_are_signed_and_expire(published_replay: Path) -> None:
    async with TestClient(TestServer(make_app(published_replay))) as client:
        student = token(Role.STUDENT, room="replays", classroom="s-yizhong")
        listing = await (await client.get("/api/replays", params={"token": student})).json()
        entry = listing["replays"][0]
        poster = await client.get(entry["poster_url"])
        assert poster.status == 200 and poster.content_type == "image/jpeg"
        expired, _ = signed_base(SECRET, LESSON, ttl_s=-10)
        resp = await client.get(expired + "replay.json")
        assert resp.status == 403
        err = (await resp.json())["error"]
        assert err["code"] == "link_expired" and "fresh" in err["message"]
