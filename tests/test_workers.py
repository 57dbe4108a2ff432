"""`tongke serve --workers N`: rooms live on media worker processes behind one front.

Real processes and real aiortc peers: a master agent publishes, a point agent receives;
the worker hosting the lesson is killed (SIGKILL) and the lesson must go on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from classroom_agent.agent import ClassroomAgent
from classroom_agent.client import LessonClient, LessonError, ws_url
from classroom_agent.config import AgentConfig, default_sources
from tests.lesson_server import ServerProcess, start_server_process
from tests.media import wait_for
from tests.test_agent import packet_times, running, small_master

CAMERA = "城关小学 · Teacher camera"


def point_agent(server: ServerProcess, room: str, reports: list[dict[str, Any]]) -> ClassroomAgent:
    cfg = AgentConfig(
        server_url=server.url,
        token=server.token(room, "xiaohe", "point", name="小河教学点"),
        role="point",
        classroom_id="xiaohe",
        synthetic=True,
        sources=[s for s in default_sources("point", synthetic=True) if s.kind == "audio"],
    )
    return ClassroomAgent(cfg, on_quality=reports.append, report_interval_s=0.25, record=False)


def camera_frames(reports: list[dict[str, Any]]) -> int:
    if not reports or not reports[-1]["connected"]:
        return 0
    for track in reports[-1]["tracks"]:
        if track["name"] == CAMERA:
            return int(track["frames"])
    return 0


def owner_of(server: ServerProcess, room: str) -> dict[str, Any]:
    cluster = server.api("GET", "/api/cluster")
    node_id = cluster["rooms"][room]
    return next(n for n in cluster["nodes"] if n["id"] == node_id)


async def test_rooms_are_spread_over_workers_and_reached_through_the_front(
    tmp_path: Path,
) -> None:
    server = start_server_process(tmp_path / "data", extra=["--workers", "2"])
    clients: list[LessonClient] = []
    try:
        # A worker whose load report was late on a busy machine is left out of placement
        # until its next report: start when both report.
        deadline = time.monotonic() + 20
        while len(server.api("GET", "/api/cluster")["nodes"]) < 2:
            assert time.monotonic() < deadline, "both workers never reported"
            await asyncio.sleep(0.1)
        for room in ("lesson-a", "lesson-b"):
            server.open_room(room)
            client = LessonClient(server.url, room, server.token(room, f"v-{room}", "observer"))
            await client.connect()
            clients.append(client)
        cluster = server.api("GET", "/api/cluster")
        assert cluster["mode"] == "cluster" and len(cluster["nodes"]) == 2
        # Least loaded at first placement: two lessons, two workers.
        assert cluster["rooms"]["lesson-a"] != cluster["rooms"]["lesson-b"]
        # Room-scoped HTTP reaches the worker: it lists the participant connected there.
        described = server.api("GET", "/api/rooms/lesson-a")
        assert [p["classroom"] for p in described["participants"]] == ["v-lesson-a"]
        # Sticky: a second participant of lesson-a lands on the same worker.
        second = LessonClient(server.url, "lesson-a", server.token("lesson-a", "v2", "observer"))
        await second.connect()
        clients.append(second)
        assert (
            server.api("GET", "/api/cluster")["rooms"]["lesson-a"] == cluster["rooms"]["lesson-a"]
        )
        assert len(server.api("GET", "/api/rooms/lesson-a")["participants"]) == 2
        # The front's lists and statistics add up its workers'.
        listed = {r["room"]: r["participants"] for r in server.api("GET", "/api/rooms")}
        assert listed == {"lesson-a": 2, "lesson-b": 1}
        stats = server.stats()
        assert stats["sessions"] == 3 + 0 and len(stats["nodes"]) == 2
        assert set(stats["rooms"]) >= {"lesson-a", "lesson-b"}
        assert stats["decoders"] == 0 and stats["encoders"] == 0
        # Before the join the front answers like a node; a bad token is refused as before.
        with_bad_token = LessonClient(server.url, "lesson-a", "not-a-token")
        try:
            await with_bad_token.connect()
            raise AssertionError("a bad token joined")
        except LessonError as exc:
            assert exc.code == "token_invalid"
        finally:
            await with_bad_token.close()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url(server.url)) as ws:
                await ws.send_str('{"type": "publish"}')
                reply = await ws.receive_json(timeout=5)
                assert reply["code"] == "not_joined"
                await ws.send_str("{not json")
                assert (await ws.receive_json(timeout=5))["code"] == "bad_json"
        # Closing the lesson on the front closes it on its worker: participants are told.
        server.api("DELETE", "/api/rooms/lesson-b")
        await wait_for(lambda: clients[1].closed.is_set(), 10, "lesson-b's viewer to be closed")
    finally:
        for client in clients:
            await client.close()
        server.stop()


async def test_a_worker_killed_mid_lesson_is_replaced_and_agents_are_back_within_seconds(
    tmp_path: Path,
) -> None:
    server = start_server_process(tmp_path / "data", extra=["--workers", "2"])
    room = "workers-failover"
    server.open_room(room)
    reports: list[dict[str, Any]] = []
    # The master keeps its safety copy and uploads it through the front at the end.
    master = ClassroomAgent(small_master(server, room, recordings=tmp_path / "agent"))
    point = point_agent(server, room, reports)
    try:
        async with running(master), running(point):
            await wait_for(lambda: camera_frames(reports) > 15, 40, "the point to see the lesson")
            # The lesson is live: the phase must survive the move (timeline on disk).
            victim = owner_of(server, room)
            before = camera_frames(reports)
            os.kill(victim["pid"], signal.SIGKILL)
            killed = time.monotonic()
            await wait_for(
                lambda: (
                    point.status.connects >= 2
                    and master.status.connects >= 2
                    and camera_frames(reports) > before + 10
                ),
                20,
                "media to flow again after the worker died",
            )
            recovered = time.monotonic() - killed
            # The room moved to the live worker; the dead one was restarted beside it.
            assert owner_of(server, room)["id"] != victim["id"]

            def replaced() -> bool:
                nodes = server.api("GET", "/api/cluster")["nodes"]
                return len(nodes) == 2 and victim["pid"] not in [n["pid"] for n in nodes]

            await wait_for(replaced, 20, "the dead worker to be replaced")
            # Generous for a loaded 2-core CI box; bench/failover.py measures the real figure.
            assert recovered < 10, recovered
        # The recording of the agent-published tracks has no gap over a second where
        # the worker died (issue 12 item 4): the copy was recorded connected or not.
        assert master.uploaded is not None
        manifests = list((server.data_dir / "recordings").glob("*/parts/*/manifest.json"))
        assert len(manifests) == 1
        for track in json.loads(manifests[0].read_text())["tracks"]:
            times = packet_times(manifests[0].parent / track["file"])
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert max(gaps) < 1.0, (track["source"], max(gaps))
    finally:
        server.stop()


async def test_newcomers_to_a_busy_lesson_are_offered_to_an_edge_or_proxied_to_the_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cascade from the first participant on: a viewer arriving when the origin already
    # holds one is served by an edge on the other worker if the relay (media_server/
    # relay.py) is there, and by the origin itself if it is not.
    monkeypatch.setenv("TONGKE_EDGE_PARTICIPANTS", "1")
    server = start_server_process(tmp_path / "data", extra=["--workers", "2"])
    room = "busy-lesson"
    clients: list[LessonClient] = []
    try:
        server.open_room(room)
        master = LessonClient(server.url, room, server.token(room, "city-4a", "master"))
        await master.connect()
        clients.append(master)
        origin = owner_of(server, room)

        def origin_busy() -> bool:
            return owner_of(server, room)["participants"] >= 1

        await wait_for(origin_busy, 10, "the origin's load report")
        viewer = LessonClient(server.url, room, server.token(room, "county", "observer"))
        joined = await viewer.connect()
        clients.append(viewer)
        assert joined["room"] == room
        # Either way the lesson counts both, and the room's origin has not moved.
        listed = {r["room"]: r["participants"] for r in server.api("GET", "/api/rooms")}
        assert listed[room] == 2
        assert owner_of(server, room)["id"] == origin["id"]
    finally:
        for client in clients:
            await client.close()
        server.stop()
