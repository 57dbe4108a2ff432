"""The ops page in Debian's Chromium: a supervisor signs in and sees a live lesson's
classrooms drawn as quality charts that fill up while real aiortc classrooms run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from classroom_agent.client import Publication
from tests.browser import chromium, open_page
from tests.lesson_server import ServerProcess, start_server_process
from tests.media import PatternTrack, ToneTrack, first_frames
from tests.test_classroom_accounts import Browserless, cli
from tests.test_classroom_browser import SHOTS, until
from tests.test_sfu_forwarding import join

pytestmark = pytest.mark.browser
ROOM = "ops-lesson"


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TONGKE_OPS_SAMPLE_S", "1")
        server = start_server_process(tmp_path_factory.mktemp("ops-data"))
    for user, role in (("zhao", "admin"), ("liu", "teacher")):
        run = cli(server, "add", user, "--role", role, "--password-stdin", stdin=f"{user}-pass-1\n")
        assert run.returncode == 0, run.stderr
    yield server
    server.stop()


def test_the_ops_api_is_for_supervisors_only(sampled: ServerProcess) -> None:
    sampled.open_room("ops-api-lesson")
    anonymous = Browserless(sampled.url)
    assert anonymous.call("GET", "/api/ops")[0] == 401
    teacher = Browserless(sampled.url)
    assert teacher.login("liu", "liu-pass-1") == 200
    assert teacher.call("GET", "/api/ops")[0] == 403
    assert teacher.call("GET", "/api/ops/ops-api-lesson")[0] == 403
    admin = Browserless(sampled.url)
    assert admin.login("zhao", "zhao-pass-1") == 200
    status, body = admin.call("GET", "/api/ops")
    assert status == 200 and body["interval_s"] == 1.0
    assert admin.call("GET", "/api/ops/ops-api-lesson?since=soon")[0] == 400
    assert admin.call("GET", "/api/ops/ops-api-lesson?since=nan")[0] == 400
    assert admin.call("GET", "/api/ops/no-such-lesson")[0] == 404
    status, body = admin.call("GET", "/api/ops/ops-api-lesson")
    assert status == 200 and body["classrooms"] == []


async def test_a_supervisor_sees_each_classroom_quality_as_charts(sampled: ServerProcess) -> None:
    sampled.open_room(ROOM, title="公开课 · 数学")
    master = await join(sampled, ROOM, "c-master", "master")
    await master.publish(
        [
            Publication(PatternTrack(320, 240), "teacher_camera", codec="vp8"),
            Publication(ToneTrack(), "classroom_mic"),
        ]
    )
    point = await join(sampled, ROOM, "p-ops", "point", name="岭头教学点")
    try:
        await first_frames(point, {"teacher_camera", "classroom_mic"})
        async with chromium() as browser, open_page(browser) as session:
            page = session.page
            await page.goto(f"{sampled.url}/ops")
            await page.wait_for_url("**/login?next=*")
            await page.fill("#username", "zhao")
            await page.fill("#password", "zhao-pass-1")
            await page.click("#login button")
            await page.wait_for_url("**/ops")
            row = f'[data-room="{ROOM}"] [data-classroom="p-ops"]'
            for chart in ("estimate", "rtt", "fps", "loss"):
                await until(
                    page,
                    f"""() => Number(document.querySelector('{row} [data-chart="{chart}"] svg')
                        ?.dataset.points ?? 0) >= 3""",
                    f"the {chart} chart of the point to fill with samples\n{session.diagnostics()}",
                )
            assert "岭头教学点" in await page.locator(row).inner_text()
            assert await page.locator(f'{row} [data-chart="estimate"] polyline').count() >= 1
            now_fps = await page.locator(f'{row} [data-chart="fps"] .now').first.inner_text()
            assert now_fps.endswith("fps") and int(now_fps.split()[0]) > 0
            assert "运行监控" in await page.title()
            assert "收到的帧率" in await page.locator(row).inner_text()
            SHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SHOTS / "ops-zh.png"), full_page=True)
            await page.click("#lang")
            await until(
                page, "() => document.querySelector('h1').textContent === 'Operations'", "en"
            )
            await until(
                page,
                f"() => document.querySelector('{row}')?.textContent.includes('Frames received')",
                "the English chart labels",
            )
            await page.screenshot(path=str(SHOTS / "ops-en.png"), full_page=True)
            assert not session.errors, session.diagnostics()
    finally:
        await point.close()
        await master.close()
