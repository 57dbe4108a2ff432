"""GET /metrics from a real server while a real lesson runs: who may scrape, what moves."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from classroom_agent.client import Publication
from tests.lesson_server import ServerProcess, start_server_process
from tests.media import PatternTrack, ToneTrack, first_frames, wait_for
from tests.test_datagram_guard import attack, server_ports
from tests.test_sfu_forwarding import join
from tongke.tokens import Role

METRICS_TOKEN = "scrape-me-0123456789"
FAMILIES = {
    "tongke_rooms",
    "tongke_participants",
    "tongke_forwarded_packets",
    "tongke_forwarded_bytes",
    "tongke_retransmitted_packets",
    "tongke_paused_sources",
    "tongke_classroom_downlink_estimate_bps",
    "tongke_classroom_downlink_loss_ratio",
    "tongke_classroom_rtt_seconds",
    "tongke_classroom_received_fps",
    "tongke_classroom_paused_sources",
    "tongke_classroom_uplink_packets",
    "tongke_classroom_uplink_lost",
    "tongke_server_decoders",
    "tongke_server_encoders",
    "tongke_event_loop_lag_seconds",
    "tongke_event_loop_lag_max_seconds",
    "tongke_replay_jobs",
    "tongke_recording_disk_bytes",
    "tongke_datagrams_dropped",
    "process_cpu_seconds",
}


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("metrics-data")
    # An old recording on disk: the disk-use gauge must count it.
    (data / "recordings" / "old-lesson").mkdir(parents=True)
    (data / "recordings" / "old-lesson" / "teacher.ts").write_bytes(b"\x47" * 188_000)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TONGKE_METRICS_TOKEN", METRICS_TOKEN)
        env.setenv("TONGKE_OPS_SAMPLE_S", "1")
        server = start_server_process(data)
    yield server
    server.stop()


def fetch(server: ServerProcess, token: str | None) -> tuple[int, str]:
    req = urllib.request.Request(server.url + "/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, and each family's name under ("family:", ())."""
    status, text = fetch(server, METRICS_TOKEN)
    assert status == 200
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        out[("family:" + family.name, ())] = 1.0
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_only_the_metrics_token_and_global_admins_may_scrape(metered: ServerProcess) -> None:
    assert fetch(metered, None)[0] == 401
    assert fetch(metered, "not-the-token")[0] == 403
    assert fetch(metered, metered.token("some-lesson", "ops", Role.ADMIN))[0] == 403
    assert fetch(metered, metered.token("some-lesson", "p-1", Role.POINT))[0] == 403
    assert fetch(metered, METRICS_TOKEN)[0] == 200
    assert fetch(metered, metered.admin_token)[0] == 200


async def test_a_running_lesson_shows_and_moves_in_the_metrics(metered: ServerProcess) -> None:
    room = "metrics-lesson"
    metered.open_room(room)
    before = scrape(metered)
    assert {"family:" + f for f in FAMILIES} <= {k[0] for k in before}, "families missing"
    assert value(before, "tongke_recording_disk_bytes", area="recordings") == 188_000
    assert value(before, "tongke_replay_jobs", state="queued") == 0

    master = await join(metered, room, "c-master", "master")
    await master.publish(
        [
            Publication(PatternTrack(320, 240), "teacher_camera", codec="vp8"),
            Publication(ToneTrack(), "classroom_mic"),
        ]
    )
    points = [await join(metered, room, f"p-{i}", "point") for i in range(2)]
    try:
        for point in points:
            await first_frames(point, {"teacher_camera", "classroom_mic"})
        now = scrape(metered)
        assert value(now, "tongke_participants", role="master") == 1
        assert value(now, "tongke_participants", role="point") == 2
        assert value(now, "tongke_server_decoders") == 0
        assert value(now, "tongke_server_encoders") == 0
        first = value(now, "tongke_forwarded_packets_total") or 0
        assert first > 0
        assert (value(now, "tongke_forwarded_bytes_total") or 0) > first * 100

        point_labels = {"room": room, "classroom": "p-0", "role": "point"}
        state: dict = {}

        def classroom_figures_arrive() -> bool:
            state["s"] = s = scrape(metered)
            return (
                (value(s, "tongke_forwarded_packets_total") or 0) > first
                and (value(s, "tongke_classroom_rtt_seconds", **point_labels) or 0) > 0
                and (value(s, "tongke_classroom_received_fps", **point_labels) or 0) > 5
                and (value(s, "tongke_classroom_uplink_packets_total", room=room, classroom="c-master", role="master") or 0) > 0
            )  # fmt: skip

        await wait_for(classroom_figures_arrive, 20, "RTT, frame rate and counters moving")
        s = state["s"]
        assert (value(s, "tongke_classroom_downlink_estimate_bps", **point_labels) or 0) > 0
        assert value(s, "tongke_classroom_paused_sources", **point_labels) == 0
        assert 0 <= (value(s, "tongke_classroom_downlink_loss_ratio", **point_labels) or 0) < 0.05
        assert 0 <= (value(s, "tongke_event_loop_lag_max_seconds") or 0) < 5

        # Stray datagrams at the media ports are counted per reason.
        assert master.publish_pc is not None
        attack(server_ports(master.publish_pc.remoteDescription.sdp))

        def drops_counted() -> bool:
            s = scrape(metered)
            return sum(v for (n, _), v in s.items() if n == "tongke_datagrams_dropped_total") > 0

        await wait_for(drops_counted, 10, "dropped datagrams in the metrics")
        moving = value(scrape(metered), "tongke_forwarded_packets_total") or 0
    finally:
        for c in [*points, master]:
            await c.close()

    def everyone_gone() -> bool:
        state["s"] = s = scrape(metered)
        return value(s, "tongke_participants", role="point") == 0

    await wait_for(everyone_gone, 15, "participants leaving")
    # The subscribers are gone, their packets are still counted: a counter never falls.
    assert (value(state["s"], "tongke_forwarded_packets_total") or 0) >= moving
    assert ("tongke_classroom_rtt_seconds", tuple(sorted(point_labels.items()))) not in state["s"]


async def test_the_replay_queue_depth_counts_waiting_and_held_jobs(tmp_path: Path) -> None:
    from recording.jobs import SqliteJobQueue

    queue = SqliteJobQueue(tmp_path / "jobs.sqlite3")
    assert await queue.depth() == {"queued": 0, "running": 0}
    for i in range(3):
        await queue.submit(tmp_path / f"rec-{i}", tmp_path / "replays")
    assert queue._claim() is not None  # a worker holds one
    assert await queue.depth() == {"queued": 2, "running": 1}


@pytest.mark.redis
async def test_the_redis_queue_depth_counts_unread_and_pending_entries(tmp_path: Path) -> None:
    import uuid

    from recording.jobs import RedisJobQueue

    stream = f"tongke:test-depth:{uuid.uuid4().hex[:8]}"
    queue = RedisJobQueue("redis://127.0.0.1:6379/15", stream=stream, outbox=tmp_path / "o.db")
    try:
        try:
            await queue.redis.ping()
        except Exception:
            pytest.skip("no Redis on 127.0.0.1:6379")
        assert await queue.depth() == {"queued": 0, "running": 0, "waiting_for_redis": 0}
        for i in range(3):
            await queue.submit(tmp_path / f"rec-{i}", tmp_path / "replays")
        assert await queue._next() is not None  # a worker read one and holds it
        assert await queue.depth() == {"queued": 2, "running": 1, "waiting_for_redis": 0}
    finally:
        keys = [k async for k in queue.redis.scan_iter(f"{stream}*")]
        if keys:
            await queue.redis.delete(*keys)
        await queue.close()


async def test_a_front_includes_its_workers_metrics_labelled_by_process(tmp_path: Path) -> None:
    """The seam for `tongke serve --workers N`: workers listen on ports Prometheus does not
    know, so the front's /metrics reads theirs and labels every sample by process."""
    import socket

    from aiohttp.test_utils import TestClient, TestServer

    from tongke.app import create_app
    from tongke.config import Config
    from tongke.metrics import PEERS
    from tongke.tokens import issue_token

    secret = "front-secret-0123456789abcdef-0123"
    admin = issue_token(secret, room="*", classroom="ops", role=Role.ADMIN)
    clients = []
    for name in ("front", "w1", "w2"):
        config = Config(data_dir=tmp_path / name, secret=secret, metrics_token="prom")
        clients.append(TestClient(TestServer(create_app(config))))
    front, w1, w2 = clients
    with socket.socket() as s:  # a worker that died: nothing listens here
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    try:
        for client in (w1, w2):
            await client.start_server()
        peers = [("w1", str(w1.make_url("/"))), ("w2", str(w2.make_url("/"))), ("w3", dead)]
        front.app[PEERS] = lambda: peers  # type: ignore[index]
        await front.start_server()
        headers = {"Authorization": f"Bearer {admin}"}
        opened = await w1.post("/api/rooms", json={"room": "on-w1"}, headers=headers)
        assert opened.status == 201
        resp = await front.get("/metrics", headers={"Authorization": "Bearer prom"})
        assert resp.status == 200
        text = await resp.text()
    finally:
        for client in clients:
            await client.close()
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types)), "a family twice in one exposition"
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert value(samples, "tongke_rooms", phase="waiting", process="w1") == 1
    assert value(samples, "tongke_rooms", phase="waiting", process="w2") == 0
    assert value(samples, "tongke_rooms", phase="waiting", process="front") == 0
    assert value(samples, "tongke_metrics_peer_up", peer="w2", process="front") == 1
    assert value(samples, "tongke_metrics_peer_up", peer="w3", process="front") == 0
    assert value(samples, "tongke_forwarded_packets_total", process="w1") == 0
