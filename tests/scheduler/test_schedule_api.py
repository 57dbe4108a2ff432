from __future__ import annotations

import datetime as dt
import json

import aiohttp

from tests.scheduler.conftest import Server
from tests.scheduler.county import files
from tongke.tokens import Role, verify_token


def _current_term() -> dict[str, str]:
    """The town with a term running now, so that feeds carry upcoming lessons."""
    monday = dt.date.today() - dt.timedelta(days=dt.date.today().weekday())
    data = files()
    data["calendar"] = (
        "kind,start,end,weekday,name,timezone\n"
        f"term,{monday},{monday + dt.timedelta(weeks=8)},,term,Asia/Shanghai\n"
    )
    return data


async def _setup(session: aiohttp.ClientSession, srv: Server) -> dict:
    auth = {"Authorization": f"Bearer {srv.token()}"}
    async with session.post(
        f"{srv.url}/api/schedule/import", json={"files": _current_term()}, headers=auth
    ) as r:
        assert r.status == 200
    async with session.post(
        f"{srv.url}/api/schedule/solve", json={"time_limit_s": 5}, headers=auth
    ) as r:
        job = await r.json()
    while job["state"] == "running":
        async with session.get(f"{srv.url}/api/schedule/jobs/{job['id']}", headers=auth) as r:
            job = await r.json()
    assert job["state"] == "done", job
    # The call's wall time, request to committed plan, within its limit; it stays put.
    assert job["elapsed_s"] == job["wall_s"] <= 5
    async with session.get(f"{srv.url}/api/schedule/jobs/{job['id']}", headers=auth) as r:
        assert (await r.json())["elapsed_s"] == job["wall_s"]
    async with session.post(f"{srv.url}/api/schedule/publish", json={}, headers=auth) as r:
        assert r.status == 200
    return auth


async def test_writes_need_a_scheduler_token(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{server.url}/api/schedule/import"
        async with session.post(url, json={"files": files()}) as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "token_missing"
        point = server.token(Role.POINT, room="L1-20250901", classroom="xh-r1")
        async with session.post(
            url, json={"files": files()}, headers={"Authorization": f"Bearer {point}"}
        ) as r:
            assert r.status == 403
        expired = server.token(ttl_s=-10)
        async with session.post(
            url, json={"files": files()}, headers={"Authorization": f"Bearer {expired}"}
        ) as r:
            assert (await r.json())["error"]["code"] == "token_expired"
        async with session.get(
            f"{server.url}/api/schedule/county",
            headers={"Authorization": f"Bearer {server.token()}"},
        ) as r:
            assert (await r.json())["schools"] == 0


async def test_bad_csv_over_http_reports_rows_and_changes_nothing(server: Server) -> None:
    auth = {"Authorization": f"Bearer {server.token()}"}
    bad = files()
    bad["teachers"] += "t-x,nowhere,某老师,English,4,abc\n"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{server.url}/api/schedule/import", json={"files": bad}, headers=auth
        ) as r:
            body = await r.json()
        assert r.status == 422 and body["error"]["code"] == "bad_rows"
        cols = {(e["file"], e["line"], e["column"]) for e in body["error"]["rows"]}
        assert ("teachers", 5, "school_id") in cols
        async with session.get(f"{server.url}/api/schedule/county", headers=auth) as r:
            assert (await r.json())["schools"] == 0


async def test_feeds_tokens_and_etags(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        auth = await _setup(session, server)
        async with session.post(f"{server.url}/api/schedule/feeds/xh-r1/token", headers=auth) as r:
            links = await r.json()
        async with session.get(links["ics"]) as r:
            assert r.status == 200 and r.content_type == "text/calendar"
            tag = r.headers["ETag"]
            assert b"BEGIN:VCALENDAR" in await r.read()
        async with session.get(links["ics"], headers={"If-None-Match": tag}) as r:
            assert r.status == 304
        async with session.get(links["json"]) as r:
            feed = await r.json()
        assert feed["lessons"] and all(x["role"] == "point" for x in feed["lessons"])
        # The feed token of one classroom opens neither another feed nor a lesson room.
        token = links["token"]
        async with session.get(f"{server.url}/api/schedule/feeds/ds-r1.ics?token={token}") as r:
            assert r.status == 403
        async with session.get(f"{server.url}/api/schedule/feeds/nope.ics", headers=auth) as r:
            assert r.status == 404
        room = feed["lessons"][0]["room_id"]
        async with session.post(
            f"{server.url}/api/schedule/lessons/{room}/tokens",
            json={"classroom": "xh-r1"},
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            issued = await r.json()
        claims = verify_token(server.secret, issued["token"], room=room)
        assert claims.role == Role.POINT and claims.classroom == "xh-r1"
        async with session.post(
            f"{server.url}/api/schedule/lessons/{room}/tokens",
            json={"classroom": "zx-r1"},
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            assert r.status == 403
        async with session.post(
            f"{server.url}/api/schedule/lessons/{room}/tokens",
            json={"classroom": "ly-r1", "role": "point"},
            headers=auth,
        ) as r:
            assert r.status == 400 and "not the point" in (await r.json())["error"]["message"]
        async with session.post(
            f"{server.url}/api/schedule/lessons/nope/tokens",
            json={"classroom": "xh-r1"},
            headers=auth,
        ) as r:
            assert r.status == 404


async def test_replan_and_unknown_ids_over_http(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        auth = await _setup(session, server)
        today = dt.date.today()
        monday = str(today - dt.timedelta(days=today.weekday()) + dt.timedelta(weeks=1))
        url = f"{server.url}/api/schedule/replan"
        async with session.post(
            url, json={"dates": [monday], "absent_teacher": "nobody"}, headers=auth
        ) as r:
            assert r.status == 400 and "unknown teacher" in (await r.json())["error"]["message"]
        async with session.post(
            url, json={"dates": [monday], "absent_teacher": "t-wang"}, headers=auth
        ) as r:
            report = await r.json()
        assert {c["kind"] for c in report["changes"]} >= {"lesson cancelled", "point removed"}
        async with session.get(
            f"{server.url}/api/schedule/lessons?from={monday}&to=2099-01-01", headers=auth
        ) as r:
            lessons = (await r.json())["lessons"]
        # Only the absent day changed: 王老师 keeps his other days.
        assert not [x for x in lessons if x["start"].startswith(monday)]
        assert any(x["teacher_id"] == "t-wang" for x in lessons)


async def test_links_and_feeds_use_the_public_url(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        auth = await _setup(session, server)
        server.config.public_url = "https://tongke.example.cn/county"
        async with session.post(f"{server.url}/api/schedule/feeds/xh-r1/token", headers=auth) as r:
            links = await r.json()
        assert links["ics"].startswith("https://tongke.example.cn/county/api/schedule/feeds/")
        path = links["json"].split("/county", 1)[1]
        async with session.get(f"{server.url}{path}") as r:
            feed = await r.json()
        assert feed["server"] == "https://tongke.example.cn/county"
        async with session.get(f"{server.url}{path.replace('.json', '.ics')}") as r:
            assert b"https://tongke.example.cn/county/api/schedule/lessons" in await r.read()
        room = feed["lessons"][0]["room_id"]
        async with session.post(
            f"{server.url}/api/schedule/lessons/{room}/tokens",
            json={"classroom": "xh-r1"},
            headers=auth,
        ) as r:
            assert (await r.json())["url"].startswith(
                f"https://tongke.example.cn/county/lesson/{room}"
            )
        # Without a configured address, links name the address the request came to.
        server.config.public_url = ""
        async with session.post(f"{server.url}/api/schedule/feeds/xh-r1/token", headers=auth) as r:
            assert (await r.json())["ics"].startswith(f"{server.url}/api/schedule/feeds/")


async def test_a_city_imports_through_the_api_and_gbk_files_are_read(server: Server) -> None:
    from scheduler.countygen import generate

    auth = {"Authorization": f"Bearer {server.token()}"}
    city = generate("L", 1, today=dt.date(2026, 3, 16))
    payload = json.dumps({"files": city}).encode()
    assert len(payload) > 1024 * 1024  # 1.1 MB: above the server's 1 MiB JSON limit
    async with aiohttp.ClientSession() as session:
        # As JSON it is refused by the server's JSON guard, with a 413 and nothing written.
        async with session.post(
            f"{server.url}/api/schedule/import",
            data=payload,
            headers=auth | {"Content-Type": "application/json"},
        ) as r:
            assert r.status == 413
        # As the page sends it (multipart, streamed), the whole city goes in.
        form = aiohttp.FormData()
        for kind, text in city.items():
            form.add_field(kind, text.encode(), filename=f"{kind}.csv")
        async with session.post(f"{server.url}/api/schedule/import", data=form, headers=auth) as r:
            body = await r.json()
        assert r.status == 200, body
        assert body["counts"]["offers"] == city["offers"].count("\n") - 1
        # The page sends the files' bytes as they are: GBK arrives undecoded.
        form = aiohttp.FormData()
        for kind, text in files().items():
            form.add_field(kind, text.encode("gbk"), filename=f"{kind}.csv")
        form.add_field("replace", "true")
        async with session.post(f"{server.url}/api/schedule/import", data=form, headers=auth) as r:
            body = await r.json()
        assert r.status == 200, body
        assert body["encodings"]["schools"] == "GB18030/GBK"
        async with session.get(f"{server.url}/api/schedule/county", headers=auth) as r:
            assert (await r.json())["schools"] == 5


async def test_an_import_above_the_limit_is_refused(server: Server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import scheduler.api

    monkeypatch.setattr(scheduler.api, "IMPORT_LIMIT_BYTES", 1000)
    auth = {"Authorization": f"Bearer {server.token()}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{server.url}/api/schedule/import", json={"files": files()}, headers=auth
        ) as r:
            assert r.status == 413 and (await r.json())["error"]["code"] == "too_large"
        async with session.get(f"{server.url}/api/schedule/county", headers=auth) as r:
            assert (await r.json())["schools"] == 0
