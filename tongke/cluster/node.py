"""A media node: hosts rooms (signalling, PeerConnections, ICE ports) for a front.

Run as a worker process (`tongke media-node`, started by `tongke serve --workers N`), or
inside the front's own process (`--workers 1` with a `redis_url`). The front opens a room
here with its facts before it proxies a participant's signalling to `/_cluster/ws`; with
Redis the node announces itself (heartbeat with its load), re-asserts the rooms it
hosts, and follows the cluster's room events.

A node that is an *edge* of a room (media_server/relay.py) does not claim it: the room
is its origin's. When the room moves (its origin died and a reconnecting client had it
re-placed), the edge follows: it dials the new origin, or, when the room moved onto this
node itself, stops relaying and hosts the lesson as its own. The `room_moved` event
says so at once; the heartbeat checks the registry's owner, for an event missed while
Redis was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Middleware

from media_server.classroom import Classroom, Phase
from media_server.relay import RELAY, RelayService
from media_server.room import LessonInfo, Rooms
from media_server.sfu import Sfu
from media_server.signalling import websocket_handler
from tongke import rtc_internals
from tongke.app import CTX, AppContext
from tongke.audit import AUDIT, AuditLog, audit_middleware
from tongke.cluster.auth import forwarded_client_middleware, require_internal
from tongke.cluster.nodes import NodeInfo
from tongke.cluster.registry import Registry, RegistryUnavailable, lesson_from_json
from tongke.config import Config
from tongke.ice import use_host_addresses
from tongke.ratelimit import RATE_LIMITS, RateLimits, rate_limit_middleware, rates_from_config
from tongke.untrusted import json_body_guard

log = logging.getLogger(__name__)

PHASE_EVENTS = ("lesson_started", "lesson_ended")
# Close code for participants of a room that moved to another node: reconnect at once.
ROOM_MOVED = 1012


def advertised_host(config: Config) -> str:
    """The address other processes (a front, other hosts' fronts) reach our nodes at."""
    if config.node_address:
        return config.node_address
    if config.host not in ("", "0.0.0.0", "::"):
        return config.host
    if config.ice_addresses:
        return config.ice_addresses[0]
    return socket.gethostname()


def default_node_id() -> str:
    return socket.gethostname() or "node"


class MediaNode:
    """This process's rooms as the cluster sees them: load, heartbeat, events."""

    def __init__(self, info: NodeInfo, sfu: Sfu, registry: Registry | None = None) -> None:
        self.info = info
        self.sfu = sfu
        self.registry = registry
        self.registered = False
        # Redis says another live process announced our id: we take no new rooms.
        self.duplicate = False
        # Rooms whose phase changes we share through Redis.
        self._sharing: set[str] = set()
        # This node's cascade links (set with the node's routes): its edge rooms.
        self.relay: RelayService | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def snapshot(self) -> NodeInfo:
        rooms = self.sfu.rooms.rooms
        self.info.rooms = len(rooms)
        self.info.participants = sum(len(r.participants) for r in rooms.values())
        return self.info

    def hosted(self) -> list[str]:
        """Rooms with someone in them: the ones this node must keep placed on itself (not
        those it relays as an edge: they are their origin's)."""
        return [
            r.id
            for r in self.sfu.rooms.rooms.values()
            if r.participants and not self._is_edge(r.id)
        ]

    def _is_edge(self, room: str) -> bool:
        return self.relay is not None and self.relay.is_edge(room)

    async def open(self, info: LessonInfo) -> None:
        """Host a lesson; its phase comes from the timeline here, or from Redis."""
        room = self.sfu.rooms.open(info)
        if self.registry is None:
            return
        registry = self.registry
        if room.id not in self._sharing:
            self._sharing.add(room.id)

            def share_phase(kind: str, fields: dict[str, Any]) -> None:
                if kind in PHASE_EVENTS:
                    task = asyncio.ensure_future(registry.put_phase(room.id, kind, fields["wall"]))
                    task.add_done_callback(_logged)

            room.classroom.listeners.append(share_phase)
        if not room.participants:
            # Taken over from a node that died (maybe on another host): as it was there.
            phase = None
            for attempt in range(2):
                try:
                    phase = await registry.phase(room.id)
                    break
                except RegistryUnavailable as exc:
                    log.warning(
                        "lesson %s: phase not read from Redis (%s)%s",
                        room.id,
                        exc,
                        "; trying once more" if attempt == 0 else "",
                    )
                    await asyncio.sleep(0.2)
            if phase is not None:
                restore_phase(room.classroom, *phase)

    async def evict(self, room_id: str, reason: str) -> bool:
        """Close a room here; its participants' sockets close so they reconnect elsewhere.

        Also when the room is already closed (a DELETE on this process's own front closes
        the room, not the sockets).
        """
        sessions = [s for s in self.sfu.sessions if s.room is not None and s.room.id == room_id]
        if room_id not in self.sfu.rooms.rooms and not sessions:
            return False
        log.warning("node %s: closing its copy of room %s (%s)", self.info.id, room_id, reason)
        for session in sessions:
            await session.ws.close(code=ROOM_MOVED, message=reason.encode()[:120])
        await self.sfu.rooms.close(room_id)
        self._sharing.discard(room_id)
        return True

    # -- with Redis ---------------------------------------------------------------------

    def start(self) -> None:
        if self.registry is not None:
            self._tasks = [
                asyncio.ensure_future(self._heartbeat()),
                asyncio.ensure_future(self.registry.listen(self._on_event)),
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.registry is not None:
            with contextlib.suppress(RegistryUnavailable):
                await self.registry.withdraw(self.info)
            await self.registry.close()

    async def _heartbeat(self) -> None:
        assert self.registry is not None
        interval = max(0.2, self.registry.ttl_s / 3)
        while True:
            try:
                await self.beat()
            except RegistryUnavailable:
                pass  # logged by the registry; media does not wait for Redis
            except Exception:
                log.exception("node %s: heartbeat failed", self.info.id)
            await asyncio.sleep(interval)

    async def beat(self) -> None:
        """Announce ourselves and keep our rooms placed here (rebuilds a restarted Redis)."""
        assert self.registry is not None
        self.registered = await self.registry.announce(self.snapshot())
        self.duplicate = not self.registered
        if not self.registered:
            return
        await self._follow_origins()
        live: set[str] | None = None
        for room_id in self.hosted():
            classroom = self.sfu.rooms.rooms[room_id].classroom
            if classroom.phase is not Phase.WAITING:
                kind = "lesson_started" if classroom.phase is Phase.LIVE else "lesson_ended"
                wall = classroom.started_at if classroom.phase is Phase.LIVE else classroom.ended_at
                await self.registry.keep_phase(room_id, kind, wall or time.time())
            owner = await self.registry.claim(room_id, self.info.id)
            if owner == self.info.id:
                continue
            if live is None:
                live = {n.id for n in await self.registry.nodes()}
            if owner in live:
                await self.evict(room_id, f"room placed on node {owner}")
            else:
                await self.registry.move(room_id, owner, self.info.id)

    async def _follow_origins(self) -> None:
        """Each edge room of this node relays from the room's owner in the registry."""
        for room_id in [r for r in list(self.sfu.rooms.rooms) if self._is_edge(r)]:
            owner = await self.registry.owner(room_id) if self.registry is not None else None
            if owner is not None:
                await self._follow_origin(room_id, owner)

    async def _follow_origin(self, room: str, owner: str) -> None:
        """The room is placed on `owner`: relay it from there (or host it, if that is us)."""
        relay = self.relay
        if relay is None or self.registry is None or not relay.is_edge(room):
            return
        if owner == self.info.id:
            log.warning("node %s: room %s moved here; no longer an edge of it", owner, room)
            await relay.remove_edge(room)
            return
        node = next((n for n in await self.registry.nodes() if n.id == owner), None)
        if node is None or not node.url:
            return  # not announced (yet): the next heartbeat looks again
        dialer = relay.edges.get(room)
        if dialer is not None and dialer.origin != node.url.rstrip("/"):
            log.warning("node %s: room %s moved to %s; relaying it from there", self.info.id,
                        room, owner)  # fmt: skip
            await relay.add_edge(room, node.url)

    async def _on_event(self, event: dict[str, Any]) -> None:
        room = event.get("room")
        if not isinstance(room, str):
            return
        if event["type"] == "room_closed":
            if self.relay is not None:
                await self.relay.remove_edge(room)
            await self.evict(room, "lesson closed")
        elif event["type"] == "room_moved" and self._is_edge(room):
            node = event.get("node")
            if isinstance(node, str):
                try:
                    await self._follow_origin(room, node)
                except RegistryUnavailable:
                    pass  # the heartbeat follows it once Redis answers
        elif event["type"] == "room_moved" and event.get("node") != self.info.id:
            await self.evict(room, f"room moved to node {event.get('node')}")


NODE = web.AppKey("cluster_node", MediaNode)


def restore_phase(classroom: Classroom, kind: str, wall: float) -> None:
    """A lesson taken over from another host is live (or over) as it was there."""
    if kind == "lesson_started" and classroom.phase is Phase.WAITING:
        classroom.phase, classroom.started_at = Phase.LIVE, wall
    elif kind == "lesson_ended" and classroom.phase is not Phase.ENDED:
        classroom.phase, classroom.ended_at = Phase.ENDED, wall


def _logged(task: asyncio.Task[None]) -> None:
    exc = None if task.cancelled() else task.exception()
    if exc is not None:
        log.warning("lesson phase not shared with the cluster: %s", exc)


def setup_node_routes(app: web.Application, node: MediaNode, secret: str) -> None:
    """The routes a front uses: the raw signalling socket and the internal room calls."""
    app[NODE] = node
    node.relay = app.get(RELAY)

    async def ws(request: web.Request) -> web.StreamResponse:
        return await websocket_handler(request, node.sfu)

    async def describe(request: web.Request) -> web.Response:
        require_internal(request, secret)
        edges = sorted(node.relay.edges) if node.relay is not None else []
        return web.json_response(
            {**asdict(node.snapshot()), "hosted": node.hosted(), "edges": edges}
        )

    async def open_room(request: web.Request) -> web.Response:
        require_internal(request, secret)
        try:
            info = lesson_from_json(await request.read())
        except (ValueError, TypeError) as exc:
            return web.json_response(
                {"error": {"code": "bad_request", "message": f"lesson facts: {exc}"}}, status=400
            )
        await node.open(info)
        return web.json_response({"room": info.room, "node": node.info.id})

    async def close_room(request: web.Request) -> web.Response:
        require_internal(request, secret)
        closed = await node.evict(request.match_info["room"], "lesson closed")
        return web.json_response({"closed": closed})

    app.router.add_get("/_cluster/ws", ws)
    app.router.add_get("/_cluster/node", describe)
    app.router.add_post("/_cluster/rooms", open_room)
    app.router.add_delete("/_cluster/rooms/{room}", close_room)


def create_node_app(config: Config, node_id: str, instance: str, url: str) -> web.Application:
    """A worker's app: the media routes only; pages and other APIs stay on the front."""
    from media_server.http import setup as setup_media

    secret = config.ensure_secret()
    app = web.Application(
        client_max_size=config.max_message_bytes * 4,
        middlewares=cast(
            list[Middleware],
            [
                forwarded_client_middleware(secret),
                rate_limit_middleware,
                json_body_guard,
                audit_middleware(secret),
            ],
        ),
    )
    app[CTX] = AppContext(config=config, secret=secret)
    app[RATE_LIMITS] = RateLimits(rates_from_config(config.rate_limits))
    audit = app[AUDIT] = AuditLog(config.resolved_database_url())
    # Not persisted here: the front keeps the room facts; timelines are the host's.
    rooms = Rooms(None, timeline_dir=config.data_dir / "timelines")
    sfu = setup_media(app, app[CTX], rooms=rooms)
    registry = (
        Registry(config.redis_url, prefix=config.cluster_name, ttl_s=config.heartbeat_ttl_s)
        if config.redis_url
        else None
    )
    info = NodeInfo(
        id=node_id,
        url=url,
        instance=instance,
        host=config.node_id or default_node_id(),
        pid=os.getpid(),
    )
    node = MediaNode(info, sfu, registry)
    setup_node_routes(app, node, secret)
    # The worker hosts the lessons, so it records them and is where their figures are
    # measured; the archiver's packaging jobs go to the host's shared queue, which the
    # front's packaging worker runs.
    if config.server_recording:
        from recording.api import setup as setup_recording
        from recording.api import setup_server_recorder
        from scheduler.db import Database
        from tongke.lessons import lesson_facts_resolver

        lessons = lesson_facts_resolver(Database(config.resolved_database_url()), rooms)
        setup_recording(app, app[CTX], run_worker=False, lessons=lessons)
        setup_server_recorder(app, rooms)
    from media_server.ops_http import setup as setup_ops
    from tongke.metrics import setup as setup_metrics

    setup_ops(app, app[CTX], sfu)
    setup_metrics(app, app[CTX], sfu)

    async def started(app: web.Application) -> None:
        node.start()

    async def stopped(app: web.Application) -> None:
        await node.stop()
        await audit.flush()
        audit.close()

    app.on_startup.append(started)
    app.on_shutdown.append(stopped)
    return app


# -- the worker process ---------------------------------------------------------------------


def config_to_json(config: Config) -> str:
    data = {f.name: getattr(config, f.name) for f in fields(Config)}
    data["data_dir"] = str(config.data_dir)
    return json.dumps(data)


def config_from_json(text: str) -> Config:
    data = json.loads(text)
    data["data_dir"] = Path(data["data_dir"])
    return Config(**data)


async def run_worker(config: Config, node_id: str) -> None:
    """Serve as a media node until the front closes our stdin (or it dies)."""
    if config.ice_addresses:
        use_host_addresses(config.ice_addresses)
    if config.ice_port_range:
        from tongke.server import parse_port_range

        rtc_internals.use_port_range(*parse_port_range(config.ice_port_range))
    host = advertised_host(config) if config.redis_url else "127.0.0.1"
    bind = config.host if config.redis_url else "127.0.0.1"
    instance = uuid.uuid4().hex[:12]
    # The port is known once bound; the app learns its URL through the node info.
    app = create_node_app(config, node_id, instance, url="http://placeholder")
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, bind, 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    node = app[NODE]
    node.info.url = f"http://{_url_host(host)}:{port}"
    try:
        print("node ready " + node.info.to_json(), flush=True)
    except BrokenPipeError:  # the front is gone before we were ready
        await runner.cleanup()
        return
    loop = asyncio.get_running_loop()
    eof = asyncio.Event()
    # The front holds our stdin open; when it goes (even killed), so do we.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        while await reader.read(1024):
            pass
        eof.set()

    watcher = asyncio.ensure_future(watch_stdin())
    for sig in (15, 2):
        loop.add_signal_handler(sig, eof.set)
    try:
        await eof.wait()
    finally:
        watcher.cancel()
        await runner.cleanup()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def media_node_main(node_id: str) -> int:
    """`tongke media-node`: the config arrives as one JSON line on stdin."""
    line = sys.stdin.readline()
    config = config_from_json(line)
    logging.getLogger().setLevel(logging.WARNING)
    os.environ.pop("TONGKE_SECRET", None)
    asyncio.run(run_worker(config, node_id))
    return 0
