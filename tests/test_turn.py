"""TURN for schools whose firewalls drop UDP: credentials, coturn, and media through it."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aioice.turn
import pytest
from playwright.async_api import async_playwright

from classroom_agent.agent import ClassroomAgent
from classroom_agent.cli import agent_argv
from classroom_agent.client import LessonClient, rtc_configuration
from tests.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.coturn import Coturn, start_coturn
from tests.impair import NetnsLink, netns_available
from tests.lesson_server import ROOT, ServerProcess, start_server_process, stop_process
from tests.media import wait_for
from tests.test_agent import running, small_master
from tongke.turn import TurnConfigError, TurnSettings, credential, order_for_aiortc


@pytest.mark.parametrize(
    ("urls", "secret", "ttl", "error"),
    [
        (["http://turn.example.cn"], "s", 3600, "is not a turn:, turns: or stun: URL"),
        (["turn:turn.example.cn:3478"], "", 3600, "turn_secret: required"),
        (["turn:turn.example.cn:3478"], "s", 10, "turn_ttl: at least 60 seconds"),
    ],
)
def test_half_configured_turn_is_refused(
    urls: list[str], secret: str, ttl: int, error: str
) -> None:
    with pytest.raises(TurnConfigError, match=error):
        TurnSettings.from_config(urls, secret, ttl)


def test_credentials_follow_the_rest_scheme_and_the_agent_prefers_tcp() -> None:
    settings = TurnSettings.from_config(
        ["turn:t.cn:3478", "turns:t.cn:443?transport=tcp", "turn:t.cn:3478?transport=tcp"],
        "k",
        600,
    )
    assert settings is not None
    [server] = settings.ice_servers("xiaohe", now=1_000_000)
    assert server["username"] == "1000600:xiaohe"
    assert server["credential"] == credential("k", "xiaohe", 600, now=1_000_000)[1]
    assert order_for_aiortc([server])[0]["urls"][0] == "turn:t.cn:3478?transport=tcp"
    config = rtc_configuration([server])
    assert config.iceServers[0].username == "1000600:xiaohe"
    assert TurnSettings.from_config([], "", 0) is None


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    relay = start_coturn(tmp_path)
    yield relay
    relay.stop()


@pytest.mark.parametrize("listener", ["tcp", "tls"])
async def test_coturn_takes_fresh_credentials_and_refuses_expired_ones(
    coturn: Coturn, listener: str
) -> None:
    port = coturn.tcp_port if listener == "tcp" else coturn.tls_port
    context = None
    if listener == "tls":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the fixture's self-signed certificate

    async def allocate(ttl: int) -> None:
        username, password = credential(coturn.secret, "xiaohe", ttl)
        transport, _ = await aioice.turn.create_turn_endpoint(
            asyncio.DatagramProtocol,
            server_addr=(coturn.address, port),
            username=username,
            password=password,
            lifetime=60,
            ssl=context,
            transport="tcp",
        )
        transport.close()

    await allocate(600)
    with pytest.raises(aioice.stun.TransactionFailed, match="401"):
        await allocate(-600)


def turn_server(tmp_path: Path, coturn: Coturn, extra: list[str] | None = None) -> ServerProcess:
    config = tmp_path / "server.toml"
    config.write_text(
        "[server]\n"
        f"turn_urls = {json.dumps(coturn.urls)}\n"
        f'turn_secret = "{coturn.secret}"\n'
        "turn_ttl = 3600\n"
    )
    return start_server_process(tmp_path / "data", extra=["--config", str(config), *(extra or [])])


async def test_joined_hands_out_time_limited_turn_credentials(
    tmp_path: Path, coturn: Coturn
) -> None:
    server = turn_server(tmp_path, coturn)
    try:
        server.open_room("turn-lesson")
        client = LessonClient(
            server.url, "turn-lesson", server.token("turn-lesson", "xiaohe", "point")
        )
        joined = await client.connect()
        await client.close()
    finally:
        server.stop()
    [ice] = joined["ice_servers"]
    assert ice["urls"] == coturn.urls
    expiry, classroom = ice["username"].split(":", 1)
    assert classroom == "xiaohe" and int(expiry) > 0
    assert ice["credential"] == credential(coturn.secret, "xiaohe", 0, now=int(expiry))[1]


# The candidate pairs the page's subscribe connection uses, and what kind they are.
SELECTED_PAIR = """
async () => {
  const stats = await window.tongke.pc.getStats();
  const out = [];
  stats.forEach((s) => {
    if (s.type !== "transport" || !s.selectedCandidatePairId) return;
    const pair = stats.get(s.selectedCandidatePairId);
    const local = stats.get(pair.localCandidateId);
    out.push({ local: local.candidateType, relayProtocol: local.relayProtocol || null });
  });
  return out;
}
"""

# True once the page decodes video from the lesson (its 1-s getStats() samples).
PAGE_DECODES = """
() => Object.values(window.tongke?.inbound || {}).some(
  (s) => s.kind === "video" && s.framesDecoded > 0)
"""


async def test_a_school_whose_firewall_drops_udp_gets_the_lesson_through_turn_tcp(
    tmp_path: Path,
) -> None:
    """The point agent and the lesson page, both behind a firewall that drops all UDP."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    link = await NetnsLink("tk-turn-test", subnet=93).start()
    coturn = start_coturn(tmp_path, address=link.host_address)
    server = turn_server(
        tmp_path, coturn, extra=["--host", "0.0.0.0", "--ice-address", link.host_address]
    )
    port = server.url.rsplit(":", 1)[1]
    room = "firewalled"
    server.open_room(room)
    report = tmp_path / "point.jsonl"
    point = None
    try:
        link.block_udp()
        master = ClassroomAgent(small_master(server, room), record=False)
        master.config.server_url = f"http://127.0.0.1:{port}"
        async with running(master):
            argv = agent_argv(
                f"http://{link.host_address}:{port}",
                server.token(room, "xiaohe", "point", name="小河教学点"),
                "point",
                options=["--synthetic", "--no-window", "--quiet", "--no-recording"],
            )
            point = subprocess.Popen(
                [*link.exec_prefix, *argv, "--report", str(report)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

            def teacher_seen() -> bool:
                if not report.exists():
                    return False
                for line in report.read_text().splitlines():
                    for track in json.loads(line)["tracks"]:
                        if "Teacher camera" in track["name"] and track.get("fps", 0) > 0:
                            return True
                return False

            await wait_for(teacher_seen, 90, "the point to decode the teacher camera")
            require_chromium()
            page_url = f"http://{link.host_address}:{port}"
            viewer = server.token(room, "xiaohe-tv", "point", name="小河教学点 TV")
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=link.launcher(tmp_path, CHROMIUM),
                    args=[*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={page_url}"],
                )
                try:
                    page = await browser.new_page()
                    await page.goto(f"{page_url}/lesson/{room}?token={viewer}")
                    await page.wait_for_function(PAGE_DECODES, timeout=60000)
                    pairs = await page.evaluate(SELECTED_PAIR)
                finally:
                    await browser.close()
            # Chromium's media path runs through the relay, over TCP.
            assert pairs and all(p["local"] == "relay" for p in pairs), pairs
            assert {p["relayProtocol"] for p in pairs} <= {"tcp", "tls"}, pairs
        assert link.up is not None
        # Nothing the school sent left as UDP, so the agent's media came over TCP, and
        # aiortc has no ICE-TCP: through the relay.
        assert link.protocols_up.get(17, 0) == 0
        assert link.protocols_up.get(6, 0) > 0
    finally:
        if point is not None:
            stop_process(point)
        server.stop()
        coturn.stop()
        link.close()


if sys.platform != "linux":  # pragma: no cover - namespaces and coturn are Linux things
    pytestmark = pytest.mark.skip("Linux only")
