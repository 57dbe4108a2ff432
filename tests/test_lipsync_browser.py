"""Browsers get sender reports for every stream, on the publisher's clock (lip sync)."""

from __future__ import annotations

import pytest

from classroom_agent.client import LessonClient, Publication
from tests.browser import open_page
from tests.lesson_server import ServerProcess
from tests.media import PatternTrack, ToneTrack

pytestmark = pytest.mark.browser

REPORTS_JS = """async () => {
  const stats = await window.tongke.pc.getStats();
  const out = [];
  stats.forEach((s) => {
    if (s.type === 'remote-outbound-rtp') {
      out.push({kind: s.kind, reports: s.reportsSent || 0, remote: s.remoteTimestamp || 0});
    }
  });
  return out;
}"""


async def test_the_browser_receives_sender_reports_for_audio_and_video(
    server: ServerProcess, room: str
) -> None:
    master = LessonClient(server.url, room, server.token(room, "c-master", "master"))
    await master.connect()
    await master.publish(
        [
            Publication(PatternTrack(320, 240), "teacher_camera", codec="vp8"),
            Publication(ToneTrack(), "classroom_mic"),
        ]
    )
    link = f"{server.url}/lesson/{room}?token={server.token(room, 'ops', 'observer')}"
    try:
        async with open_page() as session:
            page = session.page
            await page.goto(link)
            await page.wait_for_function("window.tongke && window.tongke.pc", timeout=20000)
            reports: list[dict] = []
            for _ in range(100):
                reports = await page.evaluate(REPORTS_JS)
                if {r["kind"] for r in reports if r["reports"] >= 2} == {"audio", "video"}:
                    break
                await page.wait_for_timeout(200)
            kinds = {r["kind"] for r in reports if r["reports"] >= 2}
            assert kinds == {"audio", "video"}, session.diagnostics()
            # The reports carry the publisher's NTP time: the same wall clock here.
            for report in reports:
                assert abs(report["remote"] - await page.evaluate("Date.now()")) < 60_000
    finally:
        await master.close()
