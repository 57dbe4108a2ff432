"""The replay catalog and player in headless Chromium (Debian's, through Playwright)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page

from recording.catalog import signed_base
from tests.browser import chromium
from tongke.tokens import Role

from .conftest import LESSON, SECRET, make_app, token

pytestmark = pytest.mark.browser


# Every media element that is on screen (or audible) at the current time.
TIMES_JS = """() => {
  const s = window.replayPlayer;
  const t = s.masterItem.source.lessonTime();
  return s.elements.filter(e => t >= e.start + 0.2).map(e => e.source.lessonTime());
}"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest.fixture
async def server(published_replay: Path) -> AsyncIterator[TestServer]:
    srv = TestServer(make_app(published_replay))
    await srv.start_server()
    yield srv
    await srv.close()


async def poll(page: Page, js: str, what: str, timeout_s: float = 30.0) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await page.evaluate(js)
        if value:
            return value
        await page.wait_for_timeout(100)
    raise AssertionError(f"timed out waiting for {what}")


SPREAD_JS = f"() => {{ const t = ({TIMES_JS})(); return Math.max(...t) - Math.min(...t); }}"


async def assert_in_sync(page: Page, samples: int = 8) -> None:
    """The views come together after a start or a jump (within 5 s, 0.1 s apart) and then
    stay within lip-sync tolerance of the sound (0.15 s) while they play."""
    await poll(page, f"() => ({SPREAD_JS})() < 0.1", "the views to come together", 5.0)
    for _ in range(samples):
        times = await page.evaluate(TIMES_JS)
        assert len(times) >= 3, times
        assert max(times) - min(times) < 0.15, f"views apart: {times}"
        await page.wait_for_timeout(150)


async def test_catalog_to_player_plays_in_sync_and_seeks_to_a_chapter(
    browser: Browser, server: TestServer
) -> None:
    page = await browser.new_page()
    student = token(Role.STUDENT, room="replays", classroom="s-yizhong")
    await page.goto(str(server.make_url(f"/static/replay.html#token={student}")))
    card = page.locator("a.card")
    await card.first.wait_for()
    # The thumbnail is a real picture.
    assert (
        await page.evaluate(
            "() => new Promise(r => { const i = document.querySelector('a.card img');"
            " i.complete ? r(i.naturalWidth) : i.onload = () => r(i.naturalWidth); })"
        )
        == 320
    )
    # Chinese by default, with the lesson's own facts.
    meta = await card.first.locator(".meta").first.inner_text()
    assert meta == "王老师 · math · 7年级 · s-yizhong", meta
    assert await page.locator("#count").inner_text() == "共 1 节课"
    await card.first.click()
    await page.wait_for_url(lambda url: "/static/player.html?src=" in url)
    assert (await page.locator("#play").inner_text()).endswith("播放")
    # The English switch turns the player (and the catalog, remembered) to English.
    await page.locator("#lang").click()
    await page.locator("#play", has_text="Play").wait_for()
    await page.locator("h2", has_text="Chapters").wait_for()
    await page.locator("#chapters button").first.wait_for()
    await page.click("#play")
    await poll(page, "() => window.replayPlayer.masterItem.source.lessonTime() > 1.5", "playback")
    await assert_in_sync(page)

    await page.get_by_role("button", name="Question: 小河教学点").click()
    await poll(
        page,
        "() => { const t = window.replayPlayer.masterItem.source.lessonTime(); return t > 5.3 && t < 8 }",
        "the chapter to play",
    )
    await assert_in_sync(page)
    # The called-on point's view is playing too, not stuck at its start.
    point_time = await page.evaluate(
        "() => window.replayPlayer.elements.find(e => e.view && "
        "e.view.id === 'point-p-xiaohe').source.lessonTime()"
    )
    assert point_time > 5.0
    # Choosing another main view keeps everything playing in sync.
    await page.get_by_role("button", name="Teacher").click()
    assert await page.evaluate(
        "() => document.querySelector('video.main') === window.replayPlayer.elements.find("
        "e => e.view && e.view.id === 'teacher_camera').el"
    )
    await assert_in_sync(page, samples=4)


async def test_speed_and_resume_where_the_student_stopped(
    browser: Browser, server: TestServer
) -> None:
    page = await browser.new_page()
    base, _ = signed_base(SECRET, LESSON)
    await page.add_init_script(f"localStorage.setItem('tongke:resume:{LESSON}', '6.5')")
    await page.goto(str(server.make_url(f"/static/player.html?src={base}")))
    await page.locator("#message", has_text="从 0:06 继续播放").wait_for()
    assert (
        abs(await page.evaluate("() => window.replayPlayer.masterItem.source.lessonTime()") - 6.5)
        < 0.3
    )
    await page.select_option("#speed", "2")
    await page.click("#play")
    await poll(
        page, "() => window.replayPlayer.masterItem.source.lessonTime() > 8", "playback at 2x"
    )
    assert await page.evaluate("() => window.replayPlayer.master.playbackRate") == 2
    # The position is remembered while playing, for the next visit.
    await poll(
        page,
        f"() => parseFloat(localStorage.getItem('tongke:resume:{LESSON}')) > 7",
        "the resume position to be saved",
    )


async def test_slow_link_switches_to_the_low_rendition(
    browser: Browser, server: TestServer
) -> None:
    page = await browser.new_page()
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    # About 250 kbit/s: less than all the views need, enough for the low rendition.
    await cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 80,
            "downloadThroughput": 32_000,
            "uploadThroughput": 32_000,
        },
    )
    base, _ = signed_base(SECRET, LESSON)
    await page.goto(str(server.make_url(f"/static/player.html?src={base}")))
    await page.locator("#chapters button").first.wait_for()
    await page.click("#play")
    await poll(page, "() => window.replayPlayer.mode === 'low'", "the switch to low", 60)
    await page.locator("#message", has_text="网络较慢").wait_for()
    await poll(
        page, "() => window.replayPlayer.masterItem.source.lessonTime() > 1.0", "low playback", 60
    )


async def test_seeking_back_after_the_end_plays_again_through_hls_js(
    browser: Browser, server: TestServer
) -> None:
    page = await browser.new_page()
    base, _ = signed_base(SECRET, LESSON)
    await page.add_init_script(f"localStorage.setItem('tongke:resume:{LESSON}', '7')")
    await page.goto(str(server.make_url(f"/static/player.html?src={base}")))
    await page.locator("#chapters button").first.wait_for()
    # Chromium has no native HLS: every view is played by the vendored hls.js.
    assert await page.evaluate(
        "() => window.replayPlayer.elements.every(e => e.source.hls !== null)"
    )
    await page.select_option("#speed", "2")
    await page.click("#play")
    await poll(page, "() => window.replayPlayer.master.ended", "the end of the lesson", 30)
    # Back to the first chapter: everything plays again (the hand-written MSE loader
    # had ended its stream and stalled here for good).
    await page.locator("#chapters button").first.click()
    await poll(
        page,
        "() => { const t = window.replayPlayer.masterItem.source.lessonTime(); return t > 2 && t < 9 }",
        "playback after seeking back",
    )
    await assert_in_sync(page, samples=4)


async def test_the_teacher_opens_the_replay_to_the_county_from_the_catalog(
    browser: Browser, server: TestServer, published_replay: Path
) -> None:
    entry_path = published_replay / "replays" / LESSON / "replay.json"
    entry = json.loads(entry_path.read_text())
    entry["master"] = "c-master"
    entry_path.write_text(json.dumps(entry))
    page = await browser.new_page()
    teacher = token(Role.MASTER, room=LESSON, classroom="c-master")
    await page.goto(str(server.make_url(f"/static/replay.html#token={teacher}")))
    # The pass left the address bar at once.
    await page.locator("a.card").first.wait_for()
    assert "token" not in page.url
    select = page.locator("select[name=visibility]")
    assert await select.input_value() == "schools"
    await select.select_option("county")
    await page.locator("#message", has_text="全县学生可以看").wait_for()
    assert json.loads(entry_path.read_text())["visibility"] == "county"
    # A student of another school now finds it.
    other = token(Role.STUDENT, room="replays", classroom="s-erzhong")
    page2 = await browser.new_page()
    await page2.goto(str(server.make_url(f"/static/replay.html#token={other}")))
    await page2.locator("a.card").first.wait_for()
    assert await page2.locator("select[name=visibility]").count() == 0


async def test_expired_link_says_so(browser: Browser, server: TestServer) -> None:
    page = await browser.new_page()
    base, _ = signed_base(SECRET, LESSON, ttl_s=-60)
    await page.goto(str(server.make_url(f"/static/player.html?src={base}")))
    await page.locator("#message", has_text="expired").wait_for()
