"""Chromium behind a rate-capped link: transport-cc negotiated, the SFU's send-side
estimate follows the link when it steps from 5 to 1 Mbit/s, and probing finds the
headroom again when it steps back.

The lesson page runs in Chromium inside a network namespace whose only way out is the
user-space link of tests/impair.py; the master publishes three pre-encoded 720p videos
(1.5 Mbit/s each) and its microphone from this process, so the point is offered more
than either link carries.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bench.media import PacketLoopTrack, encoded_h264, encoded_opus
from classroom_agent.client import LessonClient, Publication
from tests.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.impair import LinkSpec, NetnsLink, netns_available
from tests.lesson_server import start_server_process
from tests.media import wait_for
from tongke.ice import use_host_addresses

LINK_BEFORE = 5_000_000
LINK_AFTER = 1_000_000


def point_downlink(server: Any, room: str) -> dict[str, Any] | None:
    for p in server.stats()["rooms"].get(room, {}).get("receiving", []):
        if p["role"] == "point" and p["downlink"]:
            return p["downlink"]
    return None


async def test_the_send_side_estimate_follows_a_browser_link_stepping_from_5_to_1_mbit(
    tmp_path: Path,
) -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    require_chromium()
    from playwright.async_api import async_playwright

    video, audio = encoded_h264(), encoded_opus()
    link = await NetnsLink(
        "rural-twcc", LinkSpec.symmetric(rtt_ms=40, rate_bps=LINK_BEFORE), subnet=96, seed=2
    ).start()
    server = start_server_process(
        tmp_path / "data", extra=["--host", "0.0.0.0", "--ice-address", link.host_address]
    )
    port = server.url.rsplit(":", 1)[1]
    room = "twcc"
    server.open_room(room)
    use_host_addresses(["127.0.0.1"])
    master = LessonClient(server.url, room, server.token(room, "city", "master", name="Master"))
    point_url = f"http://{link.host_address}:{port}"
    try:
        await master.connect()
        await master.publish(
            [
                Publication(PacketLoopTrack(video, "video"), "teacher_camera", codec="h264"),
                Publication(PacketLoopTrack(video, "video"), "board_camera", codec="h264"),
                Publication(PacketLoopTrack(video, "video"), "courseware", codec="h264"),
                Publication(PacketLoopTrack(audio, "audio"), "classroom_mic", codec="opus"),
            ]
        )
        token = server.token(room, "xiaohe", "point", name="小河教学点")
        args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={point_url}"]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=link.launcher(tmp_path, CHROMIUM), args=args
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{point_url}/lesson/{room}?token={token}", timeout=60000)

                def fed() -> bool:
                    down = point_downlink(server, room)
                    return bool(down and down["transport_cc"] and down["feedback_reports"] > 20)

                await wait_for(fed, 60, "transport-cc feedback from Chromium")

                # Before the step: the estimate finds the clean 5 Mbit/s link (a start-up
                # cut on a loaded machine can leave it lower for a few seconds; probes lift it).
                def high() -> bool:
                    down = point_downlink(server, room)
                    return bool(down and down["estimate_bps"] > 1.5 * LINK_AFTER)

                await wait_for(high, 30, "the estimate above 1.5 Mbit/s on the clean link")

                link.set_link(LinkSpec.symmetric(rtt_ms=40, rate_bps=LINK_AFTER))
                stepped = time.monotonic()
                followed_after: list[float] = []
                trace: list[tuple[float, int | None]] = []

                def follows() -> bool:
                    down = point_downlink(server, room)
                    bps = down["estimate_bps"] if down else None
                    trace.append((time.monotonic() - stepped, bps))
                    if bps is not None and 0.75 * LINK_AFTER <= bps <= 1.25 * LINK_AFTER:
                        followed_after.append(time.monotonic() - stepped)
                        return True
                    return False

                await wait_for(follows, 30, "the estimate within 25% of the 1 Mbit/s link")
                after = point_downlink(server, room)
                assert after is not None and after["delay_bps"] is not None
                print(
                    f"estimate within 25% of the link {followed_after[0]:.1f} s after the step:",
                    trace[-1][1],
                    "bit/s",
                )

                # Back to 5 Mbit/s: probes find the headroom (the estimate alone would
                # grow 8% a second).
                link.set_link(LinkSpec.symmetric(rtt_ms=40, rate_bps=LINK_BEFORE))
                recovered = time.monotonic()
                recovered_after: list[float] = []

                def back() -> bool:
                    down = point_downlink(server, room)
                    if down and down["estimate_bps"] >= 0.75 * LINK_BEFORE:
                        recovered_after.append(time.monotonic() - recovered)
                        return True
                    return False

                # The recovery comes back (by probes, not by waiting); how fast is a figure
                # for bench/rural.py (target 10 s, not yet met reliably: docs/benchmarks.md),
                # not an assertion that a busy CI machine decides.
                await wait_for(back, 90, "the estimate back within 25% of the 5 Mbit/s link")
                down = point_downlink(server, room)
                assert down is not None and down["probes"]["succeeded"] >= 1
                print(
                    f"estimate back within 25% of the link {recovered_after[0]:.1f} s after"
                    f" the link recovered: {down['estimate_bps']} bit/s, probes {down['probes']}"
                )
            finally:
                await browser.close()
    finally:
        await master.close()
        server.stop()
        link.close()
