"""RED for audio, decoded by a real Chromium behind a lossy link: it conceals less.

The same lesson audio (the master's pre-encoded Opus, published from this process) goes
to the lesson page in Chromium inside a network namespace whose downlink drops 10% of
packets at random (seeded), once with RED off and once on. With RED, a lost packet is
rebuilt from the copy the next packet carries, so Chromium conceals only where two
packets in a row are lost.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bench.media import PacketLoopTrack, encoded_opus
from classroom_agent.client import LessonClient, Publication
from tests.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.impair import Conditions, LinkSpec, NetnsLink, netns_available
from tests.lesson_server import start_server_process
from tests.media import wait_for
from tongke.ice import use_host_addresses

LOSS = 0.10
SAMPLES = 48000 * 8  # eight seconds of sound measured

AUDIO_STATS_JS = """
async () => {
  const pc = window.tongke && window.tongke.pc;
  if (!pc) return null;
  const stats = await pc.getStats();
  let audio = null;
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio' && (s.totalSamplesReceived || 0) > 0) {
      audio = { samples: s.totalSamplesReceived, concealed: s.concealedSamples || 0,
                lost: s.packetsLost || 0 };
    }
  });
  if (audio) audio.answer = (pc.currentLocalDescription || {}).sdp || '';
  return audio;
}
"""


async def concealed_share(tmp_path: Path, red: bool, subnet: int) -> tuple[float, bool, int]:
    """(share of samples concealed over SAMPLES, whether Chromium answered with RED, packets
    lost)."""
    from playwright.async_api import async_playwright

    os.environ["TONGKE_AUDIO_RED"] = "1" if red else "0"
    link = await NetnsLink(
        f"rural-red-{int(red)}",
        LinkSpec(up=Conditions(delay_ms=20), down=Conditions(delay_ms=20, loss=LOSS)),
        subnet=subnet,
        seed=11,
    ).start()
    data = tmp_path / f"red-{int(red)}"
    server = start_server_process(
        data, extra=["--host", "0.0.0.0", "--ice-address", link.host_address]
    )
    port = server.url.rsplit(":", 1)[1]
    room = "red"
    server.open_room(room)
    use_host_addresses(["127.0.0.1"])
    master = LessonClient(server.url, room, server.token(room, "city", "master", name="Master"))
    point_url = f"http://{link.host_address}:{port}"
    try:
        await master.connect()
        track = PacketLoopTrack(encoded_opus(), "audio")
        await master.publish([Publication(track, "classroom_mic", codec="opus")])
        token = server.token(room, "xiaohe", "point", name="小河教学点")
        args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={point_url}"]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=link.launcher(tmp_path, CHROMIUM), args=args
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{point_url}/lesson/{room}?token={token}", timeout=60000)
                first: dict[str, Any] = {}

                async def started() -> bool:
                    stats = await page.evaluate(AUDIO_STATS_JS)
                    if stats and stats["samples"] > 48000:
                        first.update(stats)
                        return True
                    return False

                await wait_for(started, 60, "sound at the point")
                last: dict[str, Any] = {}

                async def measured() -> bool:
                    stats = await page.evaluate(AUDIO_STATS_JS)
                    last.update(stats or {})
                    return bool(stats and stats["samples"] - first["samples"] >= SAMPLES)

                await wait_for(measured, 60, "eight seconds of sound")
            finally:
                await browser.close()
        share = (last["concealed"] - first["concealed"]) / (last["samples"] - first["samples"])
        accepted = "red/48000/2" in last["answer"].lower()
        return share, accepted, last["lost"] - first["lost"]
    finally:
        os.environ.pop("TONGKE_AUDIO_RED", None)
        await master.close()
        server.stop()
        link.close()


async def test_red_makes_chromium_conceal_less_audio_under_loss(tmp_path: Path) -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    require_chromium()
    plain, plain_red, plain_lost = await concealed_share(tmp_path, red=False, subnet=97)
    with_red, red_accepted, red_lost = await concealed_share(tmp_path, red=True, subnet=98)
    print(
        f"concealed at {LOSS:.0%} loss: {plain:.1%} Opus alone ({plain_lost} packets lost),"
        f" {with_red:.1%} with RED ({red_lost} lost)"
    )
    assert not plain_red and red_accepted  # offered only when on; Chromium accepts it
    assert plain > 0.02  # the link really loses packets that Opus alone cannot hide
    assert with_red < plain / 2
