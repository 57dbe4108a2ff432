"""Nodes coordinated through Redis: registry, placement, bad input, hosts that die.

The registry tests use the real Redis on 127.0.0.1 (a key prefix of their own); the
failover test runs nodes as separate hosts in network namespaces with a redis-server of
its own. Each skips cleanly where Redis or namespaces are not available.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from classroom_agent.agent import ClassroomAgent
from classroom_agent.client import LessonClient
from tests.cluster_hosts import Hosts, kill
from tests.impair import netns_available
from tests.media import wait_for
from tests.test_agent import running, small_master
from tests.test_workers import camera_frames, point_agent
from tongke.cluster.nodes import NodeInfo
from tongke.cluster.placement import RedisPlacement
from tongke.cluster.registry import Registry, RegistryUnavailable
from tongke.ice import use_host_addresses

REDIS = "redis://127.0.0.1:6379/0"


def redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), 0.5).close()
        return True
    except OSError:
        return False


@contextlib.asynccontextmanager
async def registry(url: str = REDIS, ttl_s: float = 3.0) -> AsyncIterator[Registry]:
    reg = Registry(url, prefix=f"test-cluster-{uuid.uuid4().hex[:8]}", ttl_s=ttl_s)
    try:
        yield reg
    finally:
        with contextlib.suppress(Exception):
            keys = await reg.redis.keys(reg.prefix + ":*")
            if keys:
                await reg.redis.delete(*keys)
        await reg.close()


def node(node_id: str, participants: int = 0, instance: str = "") -> NodeInfo:
    return NodeInfo(
        id=node_id,
        url=f"http://127.0.0.1:{9000 + len(node_id)}",
        instance=instance or uuid.uuid4().hex[:12],
        participants=participants,
    )


needs_redis = pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")


@needs_redis
async def test_placement_is_least_loaded_atomic_and_sticky() -> None:
    async with registry() as reg:
        busy, idle = node("busy", participants=40), node("idle", participants=3)
        assert await reg.announce(busy) and await reg.announce(idle)
        placement = RedisPlacement(reg, lambda: [])
        route = await placement.route("lesson-1")
        assert route is not None and route.node.id == "idle"
        # Twenty fronts placing one new lesson at once agree on one node.
        owners = await asyncio.gather(*(reg.claim("lesson-2", f"node-{i}") for i in range(20)))
        assert len(set(owners)) == 1
        # Sticky: once placed, load does not move it.
        idle.participants = 500
        await reg.announce(idle)
        placement._nodes_at = 0.0
        again = await placement.route("lesson-1")
        assert again is not None and again.node.id == "idle"


@needs_redis
async def test_a_node_announcing_itself_twice_stays_out_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with registry() as reg:
        first, second = node("county-a"), node("county-a")
        assert await reg.announce(first)
        with caplog.at_level(logging.ERROR):
            assert await reg.announce(second) is False
            assert await reg.announce(second) is False  # logged once, not every beat
        errors = [r for r in caplog.records if "announced twice" in r.getMessage()]
        assert len(errors) == 1 and second.instance in errors[0].getMessage()
        # The first keeps its place: the registry lists the first instance only.
        assert [n.instance for n in await reg.nodes()] == [first.instance]
        # A restarted first (same instance re-announcing) is not a duplicate.
        assert await reg.announce(first)


@needs_redis
async def test_stale_and_unreadable_heartbeats_are_ignored_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with registry(ttl_s=2.0) as reg:
        live, stale = node("live"), node("stale")
        await reg.announce(live)
        stale.at = time.time() - 600
        await reg.redis.set(reg.key("node", "stale"), stale.to_json(), px=60_000)
        await reg.redis.set(reg.key("node", "garbage"), "{not json", px=60_000)
        await reg.redis.set(
            reg.key("node", "evil"),
            '{"id": "evil", "url": "file:///etc", "instance": "x", "at": 1}',
            px=60_000,
        )
        await reg.redis.sadd(reg.key("nodes"), "stale", "garbage", "evil", "expired")
        with caplog.at_level(logging.ERROR):
            assert [n.id for n in await reg.nodes()] == ["live"]
        text = caplog.text
        assert "stale heartbeat" in text and "bad announcement" in text
        # Expired ids leave the set, so the registry does not grow with dead nodes.
        assert "expired" not in await reg.redis.smembers(reg.key("nodes"))
        # Unreadable facts are not a lesson.
        await reg.redis.hset(reg.key("facts"), "lesson-x", '{"room": 5}')
        assert await reg.facts("lesson-x") is None


async def silent_server(answer: bytes | None) -> tuple[asyncio.AbstractServer, int]:
    """A TCP server that never answers (None) or answers every request with `answer`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(4096):
                if answer is not None:
                    writer.write(answer)
                    await writer.drain()
        except ConnectionError:
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("answer", [None, b"-ERR the disk is full\r\n"], ids=["silent", "errors"])
async def test_a_redis_that_errs_or_does_not_answer_never_stops_placement(
    answer: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    server, port = await silent_server(answer)
    reg = Registry(f"redis://127.0.0.1:{port}/0", prefix="test-broken", ttl_s=2.0)
    here = node("this-host")
    try:
        with caplog.at_level(logging.WARNING):
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable):
                await reg.announce(here)
            assert time.monotonic() - started < 3.5  # bounded, never a hang
            # The front keeps placing lessons on its own host's node and says so.
            placement = RedisPlacement(reg, lambda: [here])
            route = await placement.route("lesson-in-outage")
            assert route is not None and route.node.id == "this-host"
            again = await placement.route("lesson-in-outage")
            assert again is not None and again.node.id == "this-host"
        assert "unavailable" in caplog.text
    finally:
        server.close()
        await reg.close()


# -- separate hosts -------------------------------------------------------------------------


def camera_of(reports: list[dict[str, Any]]) -> int:
    return camera_frames(reports)


async def test_a_node_killed_mid_lesson_moves_its_room_and_redis_may_restart(
    tmp_path: Path,
) -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    hosts = Hosts("t", 2, subnet=231).start()
    nodes = []
    # The agents (in this process) must offer an address the namespaces can reach.
    use_host_addresses(["127.0.0.1", hosts.gateway])
    try:
        nodes = [hosts.serve(i, tmp_path / f"host{i}") for i in (1, 2)]
        room = "county-open-lesson"
        # Opened on host 1; the facts travel through Redis to host 2.
        nodes[0].open_room(room)
        both = f"{nodes[0].url},{nodes[1].url}"
        master_cfg = small_master(nodes[0], room)
        master_cfg.server_url = both
        reports: list[dict[str, Any]] = []
        point = point_agent(nodes[1], room, reports)
        point.config.server_url = f"{nodes[1].url},{nodes[0].url}"
        point._servers = point.config.server_urls
        master = ClassroomAgent(master_cfg, record=False)
        async with running(master), running(point):
            await wait_for(lambda: camera_of(reports) > 15, 40, "the point to see the lesson")
            # Host 2's front knows the lesson opened on host 1: it mints its tokens.
            assert "token" in nodes[1].api(
                "POST", f"/api/rooms/{room}/tokens", {"role": "observer"}
            )
            assert master._client is not None
            await master._client.request({"type": "lesson_start"})
            assert nodes[1].api("GET", f"/api/rooms/{room}/attendance")["phase"] == "live"
            cluster = nodes[1].api("GET", "/api/cluster")
            owner = cluster["rooms"][room]
            assert {n["id"] for n in cluster["nodes"]} == {"host1", "host2"}

            # Another lesson, its viewer on whichever host; closed from the other host's
            # front: the room event reaches the node that holds it.
            nodes[0].open_room("side-lesson")
            side = LessonClient(
                nodes[1].url, "side-lesson", nodes[1].token("side-lesson", "v", "observer")
            )
            await side.connect()
            nodes[0].api("DELETE", "/api/rooms/side-lesson")
            await wait_for(side.closed.is_set, 10, "the side lesson's viewer to be closed")
            await side.close()
            assert "side-lesson" not in nodes[1].api("GET", "/api/cluster")["rooms"]

            # Redis restarts (empty): media keeps flowing, the registry rebuilds itself.
            before = camera_of(reports)
            hosts.stop_redis()
            await wait_for(lambda: camera_of(reports) > before + 15, 15, "media during the outage")
            hosts.start_redis()

            def rebuilt() -> bool:
                c = nodes[1].api("GET", "/api/cluster")
                return (
                    c.get("redis") is True
                    and c["rooms"].get(room) == owner
                    and len(c["nodes"]) == 2
                )

            await wait_for(rebuilt, 15, "the registry to rebuild from heartbeats")
            assert point.status.connects == 1 and master.status.connects == 1

            # The owner dies mid-lesson: the room moves, both agents come back.
            victim = nodes[0] if owner == "host1" else nodes[1]
            survivor = nodes[1] if victim is nodes[0] else nodes[0]
            before = camera_of(reports)
            kill(victim)
            killed = time.monotonic()
            await wait_for(
                lambda: (
                    point.status.connects >= 2
                    and master.status.connects >= 2
                    and camera_of(reports) > before + 10
                ),
                30,
                "media to flow again on the surviving node",
            )
            recovered = time.monotonic() - killed
            assert survivor.api("GET", "/api/cluster")["rooms"][room] != owner
            # The lesson goes on where it was: live, with both classrooms present.
            report = survivor.api("GET", f"/api/rooms/{room}/attendance")
            assert report["phase"] == "live"
            assert recovered < 15, recovered
    finally:
        use_host_addresses(["127.0.0.1"])
        for n in nodes:
            n.stop()
        hosts.close()
