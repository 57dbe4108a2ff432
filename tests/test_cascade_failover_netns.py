"""The origin of a cascaded lesson dies: its edge follows the lesson to its new node.

Three `tongke serve` hosts in network namespaces share a Redis of the test's own
(tests/cluster_hosts.py). The master classroom (a real agent) is on host 1, the origin;
a teaching point joins through host 2, whose front makes host 2 an edge of host 1
(`edge_participants = 1`). Host 1 is killed: the master's agent reconnects through
host 3, which re-places the lesson there; host 2 hears that the room moved and dials
host 3, and the point, whose own connection never dropped, gets the lesson again.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiortc.mediastreams import MediaStreamError

from classroom_agent.agent import ClassroomAgent
from classroom_agent.client import ClientEvents, LessonClient
from tests.cluster_hosts import Hosts, kill
from tests.impair import netns_available
from tests.media import wait_for
from tests.test_agent import running, small_master
from tongke.cluster.registry import Registry
from tongke.ice import use_host_addresses

# The target: edge viewers get media again within 5 s of the origin's death.
RECOVERY_TARGET_S = 5.0


def teacher_track(client: LessonClient, but: str | None = None) -> Any:
    """The point's teacher camera (another than the track `but`), once it has a track."""
    return next(
        (
            r
            for r in client.active_tracks()
            if r.source == "teacher_camera" and r.track is not None and r.info.get("track") != but
        ),
        None,
    )


async def test_the_edge_follows_its_lesson_when_the_origin_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    monkeypatch.setenv("TONGKE_EDGE_PARTICIPANTS", "1")
    hosts = Hosts("ef", 3, subnet=234).start()
    nodes = []
    use_host_addresses(["127.0.0.1", hosts.gateway])
    point: LessonClient | None = None
    try:
        nodes = [hosts.serve(i, tmp_path / f"host{i}") for i in (1, 2, 3)]
        origin, edge, spare = nodes
        room = "county-cascade"
        origin.open_room(room)

        def nodes_live() -> set[str]:
            return {n["id"] for n in origin.api("GET", "/api/cluster")["nodes"]}

        await wait_for(lambda: nodes_live() == {"host1", "host2", "host3"}, 30, "three live nodes")
        # The lesson is placed on host 1 before its master joins, as a scheduler would: the
        # least loaded node is host 1 only while its heartbeat is fresh, and under a whole
        # suite's load it may briefly not be.
        registry = Registry(hosts.redis_url, prefix=f"cl-{hosts.tag}", ttl_s=2.0)
        try:
            assert await registry.claim(room, "host1") == "host1"
        finally:
            await registry.close()
        master_cfg = small_master(origin, room)
        master_cfg.server_url = f"{origin.url},{spare.url}"
        master = ClassroomAgent(master_cfg, record=False)
        async with running(master):

            def cluster() -> dict[str, Any]:
                return dict(edge.api("GET", "/api/cluster"))

            def origin_busy() -> bool:
                c = cluster()
                busy = {n["id"]: n["participants"] for n in c["nodes"]}
                return c["rooms"].get(room) == "host1" and busy.get("host1", 0) >= 1

            # Heartbeats carry the participant counts; under a whole suite's load the
            # master's first join can take several heartbeats to show.
            try:
                await wait_for(origin_busy, 60, "the lesson placed on host 1, its master there")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the cluster said {cluster()}") from None
            messages: list[dict[str, Any]] = []
            point = LessonClient(
                edge.url,
                room,
                edge.token(room, "p-xiaohe", "point", name="小河教学点"),
                events=ClientEvents(on_message=messages.append),
            )
            await point.connect()
            await wait_for(lambda: teacher_track(point) is not None, 30, "the lesson on the edge")
            first = teacher_track(point)
            # Every decoded picture's arrival, from whichever track the slot has now: a
            # frame buffered before the kill cannot pass for one from the new origin.
            pictures: list[float] = []

            async def watch() -> None:
                while True:
                    remote = teacher_track(point)  # type: ignore[arg-type]
                    if remote is None:
                        await asyncio.sleep(0.02)
                        continue
                    try:
                        await asyncio.wait_for(remote.track.recv(), 0.5)
                        pictures.append(time.monotonic())
                    except (TimeoutError, MediaStreamError):
                        await asyncio.sleep(0.02)

            watcher = asyncio.ensure_future(watch())
            await wait_for(lambda: len(pictures) >= 5, 15, "pictures from host 1")
            # Host 2 serves the point as host 1's edge, and host 1's lesson counts it.
            relay = edge.api("GET", "/api/relay")
            assert [(e["room"], e["state"]) for e in relay["edges"]] == [(room, "linked")]
            assert relay["edges"][0]["origin"] == origin.url
            present = origin.api("GET", f"/api/rooms/{room}/attendance")["attendance"]
            assert any(a["classroom"] == "p-xiaohe" and a["present"] for a in present)

            # (The point's slot for the camera is reused for the new origin's: keep the id.)
            before = str(first.info["track"])
            kill(origin)
            killed = time.monotonic()

            def new_teacher() -> bool:
                return teacher_track(point, but=before) is not None  # type: ignore[arg-type]

            try:
                await wait_for(new_teacher, 30, "the lesson's camera from the new origin")
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}: edge relay {edge.api('GET', '/api/relay')}, cluster {cluster()}, "
                    f"point tracks {[r.info for r in point.remote.values()]}"
                ) from None
            # The slot names the new origin's camera from here on (a picture still in the
            # decoder when host 1 died was drained before this).
            changed = time.monotonic()
            await wait_for(lambda: any(t > changed for t in pictures), 30, "a picture from host 3")
            recovered = next(t for t in pictures if t > changed) - killed
            watcher.cancel()
            print(f"edge viewer's picture back {recovered:.2f} s after the origin died")

            # The point's own connection never dropped; the lesson now lives on host 3,
            # host 2 relays it from there, and the point is a member of it there.
            assert not point.closed.is_set()
            assert cluster()["rooms"][room] == "host3"
            relay = edge.api("GET", "/api/relay")
            assert relay["edges"][0]["origin"] == spare.url
            assert relay["edges"][0]["state"] == "linked"
            await wait_for(
                lambda: any(
                    a["classroom"] == "p-xiaohe" and a["present"]
                    for a in spare.api("GET", f"/api/rooms/{room}/attendance")["attendance"]
                ),
                10,
                "the point present in the lesson on host 3",
            )
            # Which half was slow, when it is: the new origin's camera reaching the point's
            # slot (the master's failover, the edge's relink), or its first picture.
            assert recovered <= RECOVERY_TARGET_S, (
                f"picture back {recovered:.2f} s after the kill: the new origin's camera in"
                f" the point's slot after {changed - killed:.2f} s, its first picture"
                f" {recovered - (changed - killed):.2f} s later"
            )
    finally:
        use_host_addresses(["127.0.0.1"])
        if point is not None:
            await point.close()
        for n in nodes:
            n.stop()
        hosts.close()


if sys.platform != "linux":  # pragma: no cover - namespaces are a Linux thing
    pytestmark = pytest.mark.skip("Linux only")
