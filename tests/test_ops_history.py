"""The ops history's parts, table-driven: frame rates read from the packet cache, the
one-hour ring, uplink loss per interval, who is sampled."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from media_server.ops import QualityHistory
from media_server.uptrack import UpTrack
from tests.test_rtp_rewrite import VP8_CONT, VP8_DELTA, VP8_KEY, make_up, rtp
from tongke.tokens import Role


def feed(up: UpTrack, frames: int, fps: float, packets_per_frame: int, seq0: int = 100) -> None:
    seq, ts = seq0, 4_294_000_000  # wraps past 2**32 on the way
    step = int(90000 / fps)
    for f in range(frames):
        for i in range(packets_per_frame):
            payload = (VP8_KEY if f == 0 else VP8_DELTA) if i == 0 else VP8_CONT
            up.on_rtp(rtp(seq & 0xFFFF, ts & 0xFFFFFFFF, up.ssrc, payload), 0)
            seq += 1
        ts += step


@pytest.mark.parametrize(
    ("fps", "packets_per_frame", "expected"),
    [(30, 1, 30), (25, 4, 25), (15, 9, 15), (5, 2, 5), (1, 3, 1)],
)
def test_the_frame_rate_counts_frames_of_the_newest_second(
    fps: float, packets_per_frame: int, expected: float
) -> None:
    up = make_up("h", 4242, [])
    feed(up, frames=int(fps * 3), fps=fps, packets_per_frame=packets_per_frame)
    assert up.frame_rate() == pytest.approx(expected, abs=0.6)


def test_a_layer_that_stopped_or_is_audio_has_no_frame_rate() -> None:
    up = make_up("h", 4243, [])
    assert up.frame_rate() == 0.0  # nothing arrived yet
    feed(up, frames=60, fps=30, packets_per_frame=2)
    up.last_packet_at -= 10  # the publisher went quiet ten seconds ago
    assert up.frame_rate() == 0.0
    audio = make_up("h", 4244, [])
    audio.video = False
    feed(audio, frames=50, fps=50, packets_per_frame=1)
    assert audio.frame_rate() == 0.0


# -- the history, over fake rooms ------------------------------------------------------------


def participant(classroom: str, role: Role, packets: int = 0, lost: int = 0) -> Any:
    up = SimpleNamespace(stats=SimpleNamespace(packets=packets, lost=lost))
    link = {"estimate_bps": 800_000, "loss": 0.01, "rtt_ms": 120.0}
    return SimpleNamespace(
        claims=SimpleNamespace(classroom=classroom, role=role),
        name=classroom,
        sources={"point_camera": SimpleNamespace(layers={"h": up})},
        subscriber=SimpleNamespace(bandwidth=SimpleNamespace(describe=lambda: link), slots=[]),
    )


def rooms_with(*people: Any) -> Any:
    room = SimpleNamespace(id="r1", participants={str(i): p for i, p in enumerate(people)})
    return SimpleNamespace(rooms={"r1": room})


def test_uplink_loss_is_per_interval_and_a_reconnect_starts_over() -> None:
    point = participant("p-1", Role.POINT, packets=100, lost=0)
    history = QualityHistory(rooms_with(point, participant("v", Role.OBSERVER)), interval_s=10)
    history.sample(now=1000)
    up = point.sources["point_camera"].layers["h"].stats
    up.packets, up.lost = 200, 10
    history.sample(now=1010)
    up.packets, up.lost = 5, 0  # it reconnected: new counters
    history.sample(now=1020)
    samples = history.lesson("r1")
    assert [c["classroom"] for c in samples] == ["p-1"]  # viewers are not classrooms
    assert [s["up_loss"] for s in samples[0]["samples"]] == [None, round(10 / 110, 4), None]
    first = samples[0]["samples"][0]
    assert first["estimate_bps"] == 800_000 and first["rtt_ms"] == 120.0
    assert first["fps"] is None and first["paused"] == 0  # it receives no video
    assert "up_packets" not in first  # running counters stay inside
    assert [s["t"] for s in history.lesson("r1", since=1010)[0]["samples"]] == [1020]


def test_the_ring_holds_an_hour_and_a_classroom_gone_for_an_hour_is_forgotten() -> None:
    rooms = rooms_with(participant("p-1", Role.POINT))
    history = QualityHistory(rooms, interval_s=10)
    for i in range(400):
        history.sample(now=i * 10.0)
    ring = history.samples[("r1", "p-1")]
    assert len(ring) == 360 and ring[0].t == 400.0  # the oldest 40 fell out
    rooms.rooms["r1"].participants.clear()
    history.sample(now=3990 + 3599)
    assert ("r1", "p-1") in history.samples
    history.sample(now=3990 + 3601)
    assert history.samples == {} and history.lesson("r1") == []


async def test_a_front_shows_the_lessons_its_media_workers_hold(tmp_path: Path) -> None:
    """`tongke serve --workers N`: each worker samples its own lessons; the front's ops
    API asks the processes it names in PEERS (a global admin token between them)."""
    from aiohttp.test_utils import TestClient, TestServer

    from tests.media import wait_for
    from tongke.app import create_app
    from tongke.config import Config
    from tongke.metrics import PEERS
    from tongke.tokens import issue_token

    secret = "ops-front-secret-0123456789abcdef"
    admin = {
        "Authorization": f"Bearer {issue_token(secret, room='*', classroom='o', role=Role.ADMIN)}"
    }
    point = issue_token(secret, room="*", classroom="p", role=Role.POINT)
    point_here = issue_token(secret, room="on-worker", classroom="p-1", role=Role.POINT)
    front, worker = (
        TestClient(TestServer(create_app(Config(data_dir=tmp_path / n, secret=secret))))
        for n in ("front", "worker")
    )
    try:
        await worker.start_server()
        front.app[PEERS] = lambda: [("w1", str(worker.make_url("/")))]  # type: ignore[index]
        await front.start_server()
        body = {"room": "on-worker", "title": "Live on w1"}
        assert (await worker.post("/api/rooms", json=body, headers=admin)).status == 201
        # A classroom in the lesson (signalling only) is what makes it worth showing.
        ws = await worker.ws_connect("/ws")
        join = {"type": "join", "room": "on-worker", "token": point_here, "id": 1}
        await ws.send_json(join)
        assert (await ws.receive_json(timeout=10))["type"] == "joined"
        listed: dict = {}

        async def listed_at_front() -> bool:
            resp = await front.get("/api/ops", headers=admin)
            listed.update(await resp.json())
            return [x["room"] for x in listed["lessons"]] == ["on-worker"]

        await wait_for(listed_at_front, 10, "the worker's live lesson at the front")
        assert listed["lessons"][0]["participants"] == 1
        resp = await front.get("/api/ops/on-worker?since=0", headers=admin)
        assert resp.status == 200 and (await resp.json())["room"] == "on-worker"
        assert (await front.get("/api/ops/nowhere", headers=admin)).status == 404
        # A room token is no way in, at the front or at a worker.
        bearer = {"Authorization": f"Bearer {point}"}
        assert (await front.get("/api/ops", headers=bearer)).status == 403
        assert (await worker.get("/api/ops", headers=bearer)).status == 403
        assert (await worker.get("/api/ops")).status == 401
        await ws.close()
    finally:
        await front.close()
        await worker.close()
