"""The consoles in real headless Chromium with fake camera and microphone.

One master console and two teaching-point consoles: the master starts the lesson and
publishes from the browser, point A raises its hand and is called on, point B then
decodes A's camera and hears A's microphone; release, private chat, mute, end, attendance.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from playwright.async_api import Page

from classroom_agent.client import LessonClient
from tests.browser import PageSession, chromium, open_page
from tests.lesson_server import ServerProcess
from tests.media import wait_for

FAKE_MEDIA = ["--use-fake-device-for-media-stream"]
SHOTS = Path(os.environ.get("TONGKE_SCREENSHOTS", "/tmp/tongke-shots"))


async def inbound_of(page: Page, track_id: str) -> dict[str, Any] | None:
    """The inbound-rtp report of the track `<participant>/<source>` on this page."""
    return await page.evaluate(
        """async (trackId) => {
            const conn = window.tongke.conn;
            if (!conn || !conn.sampler) return null;
            let mid = null;
            for (const [m, { info }] of conn.tracks) if (info.track === trackId) mid = m;
            if (mid === null) return null;
            const all = await conn.sampler.inbound();
            return all[mid] || null;
        }""",
        track_id,
    )


async def track_ids(page: Page) -> set[str]:
    ids = await page.evaluate(
        "() => window.tongke.conn ? [...window.tongke.conn.tracks.values()]"
        ".map(t => t.info.track) : []"
    )
    return set(ids)


async def until(page: Page, js: str, what: str, timeout: float = 30.0) -> None:
    await wait_for(lambda: page.evaluate(js), timeout=timeout, what=what)


async def participant_of(page: Page, classroom: str) -> str:
    """The participant id the master's page knows for a point classroom."""
    return await page.evaluate(
        """(c) => { for (const { info } of window.tongke.conn.tracks.values())
                      if (info.classroom === c) return info.participant; return null; }""",
        classroom,
    )


async def test_master_calls_on_a_point_and_every_class_hears_it(
    server: ServerProcess, room: str
) -> None:
    master_token = server.token(room, "c-master", "master", name="城关小学")
    a_token = server.token(room, "p-xiaohe", "point", name="小河教学点")
    b_token = server.token(room, "p-shanbei", "point", name="山背教学点")
    tutor_token = server.token(room, "p-shanbei", "tutor", name="山背教学点 · 李老师")
    async with chromium(FAKE_MEDIA) as browser:
        async with (
            open_page(browser, viewport={"width": 1366, "height": 768}) as master,
            open_page(browser) as a,
            open_page(browser) as b,
            open_page(browser) as tutor,
        ):
            await run_lesson(
                server, room, master, a, b, tutor, (master_token, a_token, b_token, tutor_token)
            )


async def run_lesson(
    server: ServerProcess,
    room: str,
    ms: PageSession,
    as_: PageSession,
    bs: PageSession,
    ts: PageSession,
    tokens: tuple[str, str, str, str],
) -> None:
    url = server.url
    master_token, a_token, b_token, tutor_token = tokens
    m, a, b, t = ms.page, as_.page, bs.page, ts.page
    m.on("dialog", lambda d: d.accept())
    await m.goto(f"{url}/console/{room}?token={master_token}")
    await until(m, "() => window.tongke.state && window.tongke.state.phase === 'waiting'", "master")
    assert await m.locator("#phase").inner_text() == "未开始"
    await m.click("#start")
    await until(m, "() => window.tongke.state.phase === 'live'", "the lesson to go live")

    await a.goto(f"{url}/point/p-xiaohe?room={room}&token={a_token}")
    await b.goto(f"{url}/point/p-shanbei?room={room}&token={b_token}")
    # The master publishes camera and microphone from the browser (getUserMedia).
    await m.click("#camera")
    await until(
        b,
        "() => { const v = document.querySelector('#focus video');"
        " return v && v.dataset.source.endsWith('/teacher_camera') && v.videoWidth > 0; }",
        "point B to show the teacher camera",
    )
    # Point A publishes its camera: the master's tile for A shows it.
    await until(
        m,
        "() => { const v = document.querySelector('.tile[data-classroom=\"p-xiaohe\"] video');"
        " return v && v.videoWidth > 0; }",
        "the master to see point A",
    )
    pa = await participant_of(m, "p-xiaohe")
    assert f"{pa}/point_camera" not in await track_ids(b)

    # A raises its hand; the master sees it in the queue and calls on A from the queue.
    await a.click("#hand")
    await until(m, "() => document.querySelectorAll('#hands li').length === 1", "the hand")
    assert await m.locator("#hands li").get_attribute("data-classroom") == "p-xiaohe"
    await m.click("#hands li button.primary")
    await until(a, "() => window.tongke.console.state.called_on === 'p-xiaohe'", "A called on")
    assert "请发言" in await a.locator("#banner").inner_text()

    # B decodes A's camera (it becomes B's big picture) and hears A's microphone.
    await until(
        b,
        f"() => {{ const v = document.querySelector('#focus video');"
        f" return v && v.dataset.source === '{pa}/point_camera' && v.videoWidth > 0; }}",
        "point B's big picture to be point A",
    )

    async def a_heard() -> bool:
        audio = await inbound_of(b, f"{pa}/point_mic")
        return bool(audio and (audio.get("totalAudioEnergy") or 0) > 0)

    await wait_for(a_heard, what="point B to hear point A above silence")
    video = await inbound_of(b, f"{pa}/point_camera")
    assert video and video["framesDecoded"] > 0

    # The director put A on the program: the master's program monitor shows it, and the
    # master takes the teacher back by hand, then hands back to the automatic rules.
    await until(
        m,
        f"() => {{ const b = document.querySelector('#director-cameras button.on-air');"
        f" return b && b.dataset.track === '{pa}/point_camera'"
        f" && document.querySelector('#program-video').videoWidth > 0; }}",
        "the master's program monitor to show point A",
    )
    assert "点名发言" in await m.locator("#on-air").inner_text()
    await m.click("#director-cameras button:not(.on-air)")
    await until(m, "() => window.tongke.state.director.mode === 'manual'", "manual director")
    await m.click("#director-auto")
    await until(
        m,
        f"() => window.tongke.state.director.mode === 'auto'"
        f" && window.tongke.state.director.on_air === '{pa}/point_camera'",
        "automatic again: A on air",
    )

    # Release: B no longer receives A.
    await m.click('.tile[data-classroom="p-xiaohe"] button[data-action="call"]')
    await wait_for(
        lambda: _lacks(b, f"{pa}/point_camera"), what="B to stop receiving A after release"
    )

    # Private chat: A to the master; B sees nothing of it.
    await a.fill("#chat-text", "老师，这道题我们不会")
    await a.click("#chat-form button")
    await until(m, "() => window.tongke.chat.length === 1", "the master to get A's message")
    assert "（私聊）" in await m.locator("#chat-log").inner_text()
    await m.select_option("#chat-to", "")
    await m.fill("#chat-text", "大家看黑板")
    await m.click("#chat-form button")
    await until(b, "() => window.tongke.chat.length === 1", "B to get the room-wide message")
    assert [c["text"] for c in await b.evaluate("() => window.tongke.chat")] == ["大家看黑板"]

    # Mute A: A is told; the master stops receiving A's microphone.
    await m.click('.tile[data-classroom="p-xiaohe"] button[data-action="mute"]')
    await until(a, "() => document.querySelector('#banner').classList.contains('muted')", "mute")
    await wait_for(lambda: _lacks(m, f"{pa}/point_mic"), what="the master to stop hearing A")

    # A point cannot act as the master: the server refuses, nothing changes.
    code = await a.evaluate(
        "async () => { try { await window.tongke.conn.action('call_on',"
        " {classroom: 'p-shanbei'}); return 'accepted'; } catch (e) { return e.code; } }"
    )
    assert code == "forbidden"

    # B's teacher opens the tutor page: no camera, the class's controls; it asks for the
    # program alone for its classroom, and the master's console lists B as program-only.
    await t.goto(f"{url}/point/p-shanbei?room={room}&token={tutor_token}&as=tutor")
    await until(t, "() => window.tongke.console.state && window.tongke.conn.joined", "tutor")
    assert await t.evaluate("() => window.tongke.conn.published.size") == 0
    assert await t.locator("#mic").inner_text() == "本班静音"
    await t.select_option("#receive", "program")
    await until(
        m,
        "() => window.tongke.state.director.program_only.includes('p-shanbei')",
        "the master to see B on the program alone",
    )
    assert "山背" in await m.locator("#program-points").inner_text()
    await until(
        b,
        "() => { const v = document.querySelector('#focus video');"
        " return v && v.dataset.source === 'director/program' && v.videoWidth > 0; }",
        "B's big picture to be the program",
    )
    await t.select_option("#receive", "all")

    await screenshots(m, a, b, "live")
    if os.environ.get("TONGKE_SCREENSHOTS"):
        await t.set_viewport_size({"width": 390, "height": 844})
        await t.screenshot(path=str(SHOTS / "tutor-live-phone.png"), full_page=True)

    # End: every console shows it; attendance lists the three classrooms.
    await m.click("#end")
    await until(a, "() => window.tongke.console.state.phase === 'ended'", "A sees the end")
    rows = await m.locator("#attendance tr").count()
    assert rows == 3
    report = server.api("GET", f"/api/rooms/{room}/attendance")
    assert {e["classroom"] for e in report["attendance"]} == {"c-master", "p-xiaohe", "p-shanbei"}
    for session in (ms, as_, bs, ts):
        assert not session.errors, session.diagnostics()


async def _lacks(page: Page, track_id: str) -> bool:
    return track_id not in await track_ids(page)


async def screenshots(m: Page, a: Page, b: Page, tag: str) -> None:
    if not os.environ.get("TONGKE_SCREENSHOTS"):
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    await m.screenshot(path=str(SHOTS / f"master-{tag}-1366.png"))
    await a.set_viewport_size({"width": 1366, "height": 768})
    await a.screenshot(path=str(SHOTS / f"point-{tag}-1366.png"))
    await m.set_viewport_size({"width": 390, "height": 844})
    await m.screenshot(path=str(SHOTS / f"master-{tag}-phone.png"), full_page=True)
    await m.set_viewport_size({"width": 1366, "height": 768})
    await a.set_viewport_size({"width": 390, "height": 844})
    await a.screenshot(path=str(SHOTS / f"point-{tag}-phone.png"), full_page=True)
    # Kiosk / TV mode: the lesson fills the screen, no controls.
    await a.set_viewport_size({"width": 1366, "height": 768})
    await a.click("#kiosk")
    await a.screenshot(path=str(SHOTS / f"point-{tag}-kiosk.png"))
    await a.keyboard.press("Escape")


async def test_a_signed_in_teacher_opens_the_console_without_a_token(
    server: ServerProcess, room: str
) -> None:
    from tests.test_classroom_accounts import cli

    run = cli(
        server,
        "add",
        "chen",
        "--role",
        "admin",
        "--name",
        "陈老师",
        "--classroom",
        "c-master",
        "--password-stdin",
        stdin="chen-pass-1\n",
    )
    assert run.returncode == 0, run.stderr
    server.api("POST", "/api/rooms", {"room": f"{room}-s", "master": "c-master"})
    async with chromium(FAKE_MEDIA) as browser:
        async with open_page(browser, viewport={"width": 1366, "height": 768}) as session:
            page = session.page
            # The console sends a teacher who is not signed in to the sign-in page and back.
            await page.goto(f"{server.url}/console/{room}-s")
            await page.wait_for_url("**/login?next=*")
            await page.fill("#username", "chen")
            await page.fill("#password", "wrong-password")
            await page.click("#login button")
            await until(page, "() => document.querySelector('#error').textContent !== ''", "err")
            assert "错误" in await page.locator("#error").inner_text()
            await page.fill("#password", "chen-pass-1")
            await page.click("#login button")
            await page.wait_for_url(f"**/console/{room}-s")
            await until(page, "() => window.tongke.conn.joined !== null", "the console to join")
            joined = await page.evaluate("() => window.tongke.conn.joined")
            assert joined["role"] == "master" and joined["classroom"] == "c-master"
            await page.click("#start")
            # The classroom's agent reports its devices: its board camera has no signal.
            agent = LessonClient(
                server.url, f"{room}-s", server.token(f"{room}-s", "c-master", "agent")
            )
            await agent.connect()
            await agent.request(
                {
                    "type": "agent_state",
                    "devices": [
                        {"source": "teacher_camera", "kind": "video", "state": "ok"},
                        {"source": "board_camera", "kind": "video", "state": "no_signal"},
                    ],
                    "uplink_estimate_bps": 2_400_000,
                    "cpu": {"process_pct": 35, "load1": 0.5, "cores": 4},
                    "safety_copy": {"state": "recording", "bytes": 5_000_000},
                }
            )
            await until(
                page,
                "() => document.querySelector('#my-device').textContent.includes('板书摄像头无信号')",
                "the master console to show its device's problem",
            )
            # The supervisor (an admin) sees the live lesson in another tab.
            watcher = await page.context.new_page()
            await watcher.goto(f"{server.url}/supervisor")
            await until(
                watcher,
                f"() => !!document.querySelector('[data-room=\"{room}-s\"] .badge.live')",
                "the supervisor to list the live lesson",
            )
            text = await watcher.locator(
                f'[data-room="{room}-s"] [data-device="master"]'
            ).inner_text()
            assert "2.4 Mbit/s" in text and "板书摄像头无信号" in text
            await agent.close()
            if os.environ.get("TONGKE_SCREENSHOTS"):
                SHOTS.mkdir(parents=True, exist_ok=True)
                for path, name in (
                    ("/admin/accounts", "admin"),
                    ("/me", "me"),
                    ("/supervisor", "supervisor"),
                    ("/login", "login"),
                    ("/login?lang=en", "login-en"),
                ):
                    await page.goto(server.url + path)
                    await page.wait_for_load_state("networkidle")
                    await page.screenshot(path=str(SHOTS / f"{name}-1366.png"))
                    await page.set_viewport_size({"width": 390, "height": 844})
                    await page.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
                    await page.set_viewport_size({"width": 1366, "height": 768})
            assert not session.errors, session.diagnostics()
