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
        # Without a pass: the public lessons only. A pass in the URL is refused.
        resp = await client.get("/api/replays")
        assert [r["lesson"] for r in (await resp.json())["replays"]] == ["other-school-open"]
        resp = await client.get("/api/replays", params={"token": student})
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "token_in_url"


async def test_replay_links_are_signed_and_expire(published_replay: Path) -> None:
    async with TestClient(TestServer(make_app(published_replay))) as client:
        student = token(Role.STUDENT, room="replays", classroom="s-yizhong")
        listing = await (
            await client.get("/api/replays", headers={"Authorization": f"Bearer {student}"})
        ).json()
        entry = listing["replays"][0]
        poster = await client.get(entry["poster_url"])
        assert poster.status == 200 and poster.content_type == "image/jpeg"
        expired, _ = signed_base(SECRET, LESSON, ttl_s=-10)
        resp = await client.get(expired + "replay.json")
        assert resp.status == 403
        err = (await resp.json())["error"]
        assert err["code"] == "link_expired" and "fresh" in err["message"]


async def test_the_teacher_opens_a_replay_to_the_county_then_to_everyone(
    published_replay: Path,
) -> None:
    from tongke.app import create_app
    from tongke.config import Config

    _add_lesson(published_replay, "fractions-7", master="c-master", school="s-yizhong")
    config = Config(data_dir=published_replay, secret=SECRET, server_recording=False)
    async with TestClient(TestServer(create_app(config))) as client:
        other_school = token(Role.STUDENT, room="replays", classroom="s-erzhong")

        async def visible(pass_: str | None) -> bool:
            headers = {"Authorization": f"Bearer {pass_}"} if pass_ else {}
            resp = await client.get("/api/replays", headers=headers)
            return "fractions-7" in [r["lesson"] for r in (await resp.json())["replays"]]

        async def set_to(value: str, who: str) -> int:
            resp = await client.put(
                "/api/replays/fractions-7/visibility",
                json={"visibility": value},
                headers={"Authorization": f"Bearer {who}"},
            )
            return resp.status

        teacher = token(Role.MASTER, room="fractions-7", classroom="c-master")
        # By default only the lesson's schools: not another school, not the public.
        assert not await visible(other_school) and not await visible(None)
        # A teaching point, the teacher of another class, a student may not change it;
        # nothing changes, and a bad value is refused.
        assert await set_to("public", token(Role.POINT, room="fractions-7")) == 403
        assert await set_to("public", token(Role.MASTER, "fractions-7", "c-other")) == 403
        assert await set_to("public", other_school) == 403
        assert await set_to("everyone", teacher) == 400
        assert not await visible(None)

        assert await set_to("county", teacher) == 200
        assert await visible(other_school) and not await visible(None)
        assert await set_to("public", token(Role.ADMIN, room="*", classroom="ops")) == 200
        assert await visible(None)
        entry = json.loads((published_replay / "replays/fractions-7/replay.json").read_text())
        assert entry["visibility"] == "public" and entry["public"] is True

        admin = token(Role.ADMIN, room="*", classroom="ops")
        resp = await client.get(
            "/api/audit",
            params={"action": "replay_visibility_changed"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        events = (await resp.json())["events"]
        assert [(e["room"], e["role"]) for e in events] == [
            ("fractions-7", "admin"),
            ("fractions-7", "master"),
        ]
