"""The browser lesson viewer (web_client/lesson.html) against a real server.

A publisher in this process sends a VP8 camera, an H.264 courseware feed and a tone on
the microphone; Debian's headless Chromium opens the lesson link and must decode every
video and play the audio, with each tile labelled by source and classroom.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import time
from collections.abc import AsyncIterator

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, VideoStreamTrack
from playwright.async_api import TimeoutError as PlaywrightTimeout

from classroom_agent.client import ClientEvents, LessonClient, Publication, RemoteTrack
from media_server.http import lesson_url
from tests.browser import PageSession, chromium, open_page
from tests.lesson_server import ServerProcess

pytestmark = pytest.mark.browser

DEADLINE_MS = 30_000
MASTER_NAME = "城关小学 主讲教室"


class ToneTrack(MediaStreamTrack):
    """A 440 Hz sine in 20 ms Opus-sized frames, paced in real time: audible, not silence."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, rate: int = 48000, ptime: float = 0.02) -> None:
        super().__init__()
        self.frequency = frequency
        self.rate = rate
        self.samples = int(rate * ptime)
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += self.samples
            # Pacing the source like a microphone would, not synchronising the test.
            delay = self._start + self._pts / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        t = (np.arange(self.samples) + self._pts) / self.rate
        pcm = (0.3 * 32767 * np.sin(2 * math.pi * self.frequency * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.rate)
        return frame


# Raw inbound-rtp reports by mid, straight from RTCPeerConnection.getStats() in the page.
COLLECT_STATS = """
async () => {
  const pc = window.tongke && window.tongke.pc;
  const out = {};
  if (!pc) return out;
  (await pc.getStats()).forEach((s) => {
    if (s.type !== "inbound-rtp") return;
    out[s.mid] = {
      kind: s.kind, framesDecoded: s.framesDecoded || 0, frameWidth: s.frameWidth || 0,
      packetsReceived: s.packetsReceived || 0,
      totalSamplesReceived: s.totalSamplesReceived || 0,
      totalAudioEnergy: s.totalAudioEnergy || 0, codecId: s.codecId || "",
    };
  });
  return out;
}
"""

# True once every subscribed mid is flowing: video decoded, audio samples with energy.
# Synchronous over the getStats() reports the page samples every second (wait_for_function
# would not await an async predicate).
MEDIA_FLOWING = """
() => {
  const stats = window.tongke?.inbound || {};
  const mids = Object.keys(window.tongke?.tracks || {});
  return mids.length > 0 && mids.every((mid) => {
    const s = stats[mid];
    if (!s) return false;
    if (s.kind === "video") return s.framesDecoded > 0;
    return s.packetsReceived > 0 && s.totalSamplesReceived > 0 && s.totalAudioEnergy > 0;
  });
}"""

TILES = """
() => [...document.querySelectorAll("#grid .tile")].map((t) => ({
  mid: t.dataset.mid,
  source: t.dataset.source,
  label: t.querySelector(".tile-label").textContent,
  name: t.querySelector(".tile-name").textContent,
  stats: t.querySelector(".tile-stats").textContent,
  kind: t.classList.contains("tile-video") ? "video" : "audio",
}))
"""


async def wait_in_page(
    session: PageSession, expression: str, what: str, arg: object = None
) -> None:
    """page.wait_for_function with a failure that shows the page's state and console."""
    try:
        await session.page.wait_for_function(expression, arg=arg, timeout=DEADLINE_MS, polling=250)
    except PlaywrightTimeout:
        pytest.fail(f"timed out waiting for {what}\n{await page_state(session)}")


async def page_state(session: PageSession) -> str:
    """What the viewer believes, and what it logged: the message of a failed assertion."""
    state = await session.page.evaluate(
        """() => JSON.stringify({phase: window.tongke?.phase, connects: window.tongke?.connects,
            negotiations: window.tongke?.negotiations, tracks: window.tongke?.tracks,
            error: window.tongke?.error, stats: window.tongke?.stats})"""
    )
    return f"state: {state}\n{session.diagnostics()}"


async def codec_of(session: PageSession, mid: str) -> str:
    return await session.page.evaluate(
        """async (mid) => {
          const report = await window.tongke.pc.getStats();
          let codec = "";
          report.forEach((s) => {
            if (s.type === "inbound-rtp" && s.mid === mid && s.codecId)
              codec = report.get(s.codecId).mimeType;
          });
          return codec;
        }""",
        mid,
    )


@pytest.fixture
async def master(server: ServerProcess, room: str) -> AsyncIterator[LessonClient]:
    """The master classroom publishing a VP8 camera, H.264 courseware and a tone."""
    token = server.token(room, "c-master-01", "master", name=MASTER_NAME)
    client = LessonClient(server.url, room, token)
    await client.connect()
    await client.publish(
        [
            Publication(VideoStreamTrack(), "teacher_camera", label="Teacher camera", codec="vp8"),
            Publication(VideoStreamTrack(), "courseware", label="Courseware", codec="h264"),
            Publication(ToneTrack(), "classroom_mic", label="Classroom microphone", codec="opus"),
        ]
    )
    try:
        yield client
    finally:
        await client.close()


async def test_viewer_sees_and_hears_every_source(
    server: ServerProcess, room: str, master: LessonClient
) -> None:
    token = server.token(room, "sup-county", "observer", name="县教研室")
    async with open_page() as session:
        await session.page.goto(lesson_url(server.url, room, token))
        await wait_in_page(
            session, "() => Object.keys(window.tongke?.tracks || {}).length === 3", "three tracks"
        )
        joined = await session.page.evaluate("() => window.tongke.joined")
        assert joined["room"] == room and joined["role"] == "observer"

        await wait_in_page(session, MEDIA_FLOWING, "decoded video and audible audio on every mid")
        stats = await session.page.evaluate(COLLECT_STATS)
        tracks = await session.page.evaluate("() => window.tongke.tracks")
        by_source = {info["source"]: mid for mid, info in tracks.items()}
        assert set(by_source) == {"teacher_camera", "courseware", "classroom_mic"}
        diagnostics = f"stats: {stats}\n{await page_state(session)}"
        for source in ("teacher_camera", "courseware"):
            assert stats.get(by_source[source], {}).get("framesDecoded", 0) > 0, diagnostics
        audio = stats.get(by_source["classroom_mic"], {})
        assert audio.get("packetsReceived", 0) > 0, diagnostics
        assert audio.get("totalSamplesReceived", 0) > 0, diagnostics
        # The server offers exactly the published codec: Chromium accepted and decoded both.
        assert (await codec_of(session, by_source["teacher_camera"])).lower() == "video/vp8"
        assert (await codec_of(session, by_source["courseware"])).lower() == "video/h264"

        tiles = await session.page.evaluate(TILES)
        assert {(t["source"], t["label"], t["name"], t["kind"]) for t in tiles} == {
            ("teacher_camera", "Teacher camera", MASTER_NAME, "video"),
            ("courseware", "Courseware", MASTER_NAME, "video"),
            ("classroom_mic", "Classroom microphone", MASTER_NAME, "audio"),
        }
        # Live stats reach the tiles once two samples give a rate.
        await wait_in_page(
            session,
            """() => [...document.querySelectorAll("#grid .tile-video .tile-stats")]
                .every((e) => /\\d+×\\d+ · \\d+ fps · \\d+ kbps · [\\d.]+% loss/.test(e.textContent))""",
            "resolution, fps, bitrate and loss on every video tile",
        )
        await wait_in_page(session, "() => window.tongke.phase === 'live'", "the live status")
        assert not session.errors, session.diagnostics()


async def test_viewer_follows_sources_that_leave(
    server: ServerProcess, room: str, master: LessonClient
) -> None:
    """A teaching point that stops publishing loses its tile; the rest keep playing.

    The viewer holds a master token (a role that may publish): the page still only watches.
    """
    point = LessonClient(
        server.url, room, server.token(room, "p-xiaohe", "point", name="小河教学点")
    )
    await point.connect()
    await point.publish([Publication(VideoStreamTrack(), "point_camera", codec="vp8")])
    viewer = server.token(room, "c-master-01", "master", name=MASTER_NAME)
    try:
        async with open_page() as session:
            await session.page.goto(lesson_url(server.url, room, viewer))
            await wait_in_page(
                session,
                "() => Object.keys(window.tongke?.tracks || {}).length === 4",
                "four tracks",
            )
            tiles = await session.page.evaluate(TILES)
            assert ("Teaching point camera", "小河教学点") in {
                (t["label"], t["name"]) for t in tiles
            }
            await wait_in_page(session, MEDIA_FLOWING, "every track flowing")
            assert "master" in await session.page.locator("#role").inner_text()
            # Watching only: nothing was published from the page.
            room_state = server.api("GET", f"/api/rooms/{room}")
            assert sorted(t["source"] for t in room_state["tracks"]) == [
                "classroom_mic",
                "courseware",
                "point_camera",
                "teacher_camera",
            ]

            await point.close()
            await wait_in_page(
                session,
                "() => document.querySelectorAll('#grid .tile').length === 3"
                " && !document.querySelector('#grid .tile[data-source=point_camera]')",
                "the point's tile removed",
            )
            tracks = await session.page.evaluate("() => window.tongke.tracks")
            assert sorted(t["source"] for t in tracks.values()) == [
                "classroom_mic",
                "courseware",
                "teacher_camera",
            ]
            await wait_in_page(session, "() => window.tongke.phase === 'live'", "still live")

            # Another point goes live: the server re-uses the idle VP8 transceiver (same
            # mid, a `tracks` message instead of a renegotiation); the tile follows it.
            point_mid = await session.page.evaluate(
                "() => Object.keys(window.tongke.inbound).find("
                "(mid) => !(mid in window.tongke.tracks))"
            )
            before = await session.page.evaluate(
                "(mid) => window.tongke.inbound[mid].framesDecoded", point_mid
            )
            other = LessonClient(
                server.url, room, server.token(room, "p-dashan", "point", name="大山教学点")
            )
            await other.connect()
            try:
                await other.publish([Publication(VideoStreamTrack(), "point_camera", codec="vp8")])
                await wait_in_page(
                    session,
                    """([mid, before]) => window.tongke.tracks[mid]?.name === "大山教学点"
                        && window.tongke.inbound[mid]?.framesDecoded > before""",
                    "the re-used transceiver showing the new point's frames",
                    arg=[point_mid, before],
                )
                tiles = await session.page.evaluate(TILES)
                assert ("Teaching point camera", "大山教学点") in {
                    (t["label"], t["name"]) for t in tiles if t["mid"] == point_mid
                }
                assert len(tiles) == 4
            finally:
                await other.close()
    finally:
        await point.close()


async def test_viewer_reconnects_after_the_socket_drops(
    server: ServerProcess, room: str, master: LessonClient
) -> None:
    token = server.token(room, "sup-county", "observer", name="县教研室")
    async with open_page() as session:
        await session.page.goto(lesson_url(server.url, room, token))
        await wait_in_page(session, MEDIA_FLOWING, "media before the drop")
        first = await session.page.evaluate("() => window.tongke.joined.participant")
        # Kill the socket as a network drop would (not a clean leave).
        await session.page.evaluate("() => window.tongke.signalling.ws.close(4000, 'test drop')")
        await wait_in_page(
            session,
            "(first) => window.tongke.joined && window.tongke.joined.participant !== first"
            " && window.tongke.connects >= 2",
            "a new session after the drop",
            arg=first,
        )
        await wait_in_page(session, MEDIA_FLOWING, "media after reconnecting")


def _bad_tokens(server: ServerProcess, room: str) -> dict[str, tuple[str, str]]:
    """code -> (room in the link, token), one per way a link can be wrong."""
    forged = server.token(room, "x", "observer")
    header, payload, _ = forged.split(".")
    return {
        "token_missing": (room, ""),
        "token_invalid": (room, f"{header}.{payload}.AAAA"),
        "token_expired": (room, server.token(room, "x", "observer", ttl_s=-60)),
        "token_wrong_room": (room, server.token("another-lesson", "x", "observer")),
        "unknown_room": ("no-such-lesson", server.token("no-such-lesson", "x", "observer")),
    }


EXPECTED_TITLES = {
    "token_missing": "链接中缺少课堂令牌",
    "token_invalid": "课堂链接无效",
    "token_expired": "课堂链接已过期",
    "token_wrong_room": "该链接属于另一节课",
    "unknown_room": "未找到该课堂",
}


async def test_bad_links_show_clear_errors_and_the_lesson_goes_on(
    server: ServerProcess, room: str
) -> None:
    publisher = LessonClient(server.url, room, server.token(room, "c-master-01", "master"))
    await publisher.connect()
    await publisher.publish([Publication(VideoStreamTrack(), "teacher_camera", codec="vp8")])
    try:
        async with chromium() as browser:
            for code, (link_room, token) in _bad_tokens(server, room).items():
                async with open_page(browser) as session:
                    await session.page.goto(lesson_url(server.url, link_room, token))
                    await wait_in_page(
                        session, "() => window.tongke?.phase === 'error'", f"the {code} error"
                    )
                    error = session.page.locator("#error")
                    assert await error.is_visible()
                    assert await error.get_attribute("role") == "alert"
                    assert (
                        await session.page.locator("#error-title").inner_text()
                        == (EXPECTED_TITLES[code])
                    )
                    assert code in await session.page.locator("#error-code").inner_text()
                    state = await session.page.evaluate(
                        "() => ({error: window.tongke.error, connects: window.tongke.connects})"
                    )
                    assert state["error"]["code"] == code
                    # No retry loop against a link that cannot work (a link without a
                    # token is refused before connecting at all).
                    assert state["connects"] == (0 if code == "token_missing" else 1)
                    retry = session.page.locator("#retry")
                    assert await retry.is_visible() == (code == "unknown_room")

        # The refused viewers did not disturb the lesson: a new subscriber gets the camera.
        got_track: asyncio.Future[RemoteTrack] = asyncio.get_running_loop().create_future()

        def on_track(remote: RemoteTrack) -> None:
            if remote.source == "teacher_camera" and remote.track and not got_track.done():
                got_track.set_result(remote)

        watcher = LessonClient(
            server.url,
            room,
            server.token(room, "sup-county", "observer"),
            events=ClientEvents(on_track=on_track),
        )
        await watcher.connect()
        try:
            remote = await asyncio.wait_for(got_track, 20)
            assert remote.track is not None
            frame = await asyncio.wait_for(remote.track.recv(), 20)
            assert frame.width > 0
        finally:
            await watcher.close()
        room_state = server.api("GET", f"/api/rooms/{room}")
        assert [t["source"] for t in room_state["tracks"]] == ["teacher_camera"]
        assert json.dumps(room_state)  # the server still answers its API
    finally:
        await publisher.close()


async def test_a_lesson_opened_later_is_joined_with_try_again(server: ServerProcess) -> None:
    """A teacher who opens the link before the lesson is open retries from the error page."""
    room = f"later-{time.monotonic_ns()}"
    token = server.token(room, "sup-county", "observer")
    async with open_page() as session:
        await session.page.goto(lesson_url(server.url, room, token))
        await wait_in_page(session, "() => window.tongke?.error?.code === 'unknown_room'", "error")
        server.open_room(room, title="四年级数学 · 分数的意义")
        await session.page.get_by_role("button", name="重试 / Try again").click()
        await wait_in_page(session, "() => window.tongke.phase === 'waiting'", "the joined lesson")
        assert not await session.page.locator("#error").is_visible()
        assert await session.page.locator("#lesson-title").inner_text() == "四年级数学 · 分数的意义"
        assert await session.page.locator("#empty").is_visible()


async def test_a_paused_picture_is_covered_and_labelled_never_left_frozen(
    server: ServerProcess, room: str, master: LessonClient
) -> None:
    """The server's `allocation` reaches the page: a paused source is shown as paused."""
    viewer = server.token(room, "p-xiaohe", "point", name="小河教学点")
    async with open_page() as session:
        await session.page.goto(lesson_url(server.url, room, viewer))
        await wait_in_page(session, MEDIA_FLOWING, "every track flowing")
        await wait_in_page(
            session,
            "() => (window.tongke?.allocation?.tracks || []).length === 3",
            "the server's allocation",
        )
        track = await session.page.evaluate(
            """() => window.tongke.allocation.tracks.find((t) =>
                 t.track.endsWith("/courseware")).track"""
        )
        covered = f'#grid .tile[data-track="{track}"].is-paused .tile-paused'
        assert await session.page.locator(covered).count() == 0
        await session.page.evaluate(
            """(track) => window.tongke.signalling.send(
                 {type: "set_subscription", track, paused: true})""",
            track,
        )
        await wait_in_page(
            session,
            "(sel) => document.querySelector(sel)?.textContent === '画面已暂停 / Paused'",
            "the courseware tile covered as paused",
            arg=covered,
        )
        paused = await session.page.evaluate(
            "(t) => window.tongke.allocation.tracks.find((x) => x.track === t)", track
        )
        assert paused["paused"] and paused["reason"] == "subscriber"
        # The other pictures still run, and are not covered.
        assert await session.page.locator("#grid .tile.is-paused").count() == 1
        await session.page.evaluate(
            """(track) => window.tongke.signalling.send(
                 {type: "set_subscription", track, paused: false})""",
            track,
        )
        await wait_in_page(
            session,
            "() => document.querySelectorAll('#grid .tile.is-paused').length === 0",
            "the courseware running again",
        )
