"""The front: pages and APIs here, each room's signalling proxied to its media node.

A participant's first `join` names the room; the front places the room (or finds where
it is), hands that node the lesson's facts, and from then on pipes the socket both ways.
Everything before the join is answered here exactly as a node would (same Session code),
so a client cannot tell a front from a single-process server. When the node goes away,
the client's socket closes with 1012 (service restart) and the client's reconnection
lands on the room's new node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

from media_server.http import ROOM_RE, SFU
from media_server.room import LessonInfo, Rooms
from media_server.sfu import Sfu
from media_server.signalling import Session
from tongke.audit import AUDIT
from tongke.cluster.auth import client_headers, internal_headers
from tongke.cluster.nodes import NodeInfo
from tongke.cluster.placement import EDGE_POLICY, Placement
from tongke.cluster.registry import Registry, RegistryUnavailable
from tongke.heartbeat import HEARTBEAT_S
from tongke.ratelimit import RATE_LIMITS
from tongke.tokens import Role, TokenError, issue_token, verify_token

log = logging.getLogger(__name__)

# Close code when the node behind a socket went away: "service restart, come back".
NODE_LOST = 1012
TRY_AGAIN = 1013
ROOM_PATH = re.compile(r"^/api/rooms/(?P<room>[^/]+)(?P<rest>/attendance)?$")
CONNECT_TRIES = 3


class _Join(Exception):
    def __init__(self, room: str, message: dict[str, Any]) -> None:
        self.room = room
        self.message = message


class _PreJoin(Session):
    """A Session whose join is not handled here but handed to the room's node.

    What a node would refuse without looking at the room (no room, a bad token) is
    refused here by the node's own code, rate limit included, so that nothing is placed
    for it.
    """

    async def on_join(self, message: dict[str, Any]) -> dict[str, Any] | None:
        room, token = message.get("room"), message.get("token")
        if not isinstance(room, str) or not room:
            return await super().on_join(message)
        try:
            verify_token(self.sfu.secret, token if isinstance(token, str) else None, room=room)
        except TokenError:
            return await super().on_join(message)
        raise _Join(room, message)

    async def refuse(self, message: dict[str, Any]) -> None:
        """The single server's answer to a join for a lesson nobody knows."""
        await Session.on_join(self, message)


class Front:
    def __init__(
        self,
        app: web.Application,
        *,
        secret: str,
        placement: Placement,
        local: Callable[[], list[NodeInfo]],
        registry: Registry | None = None,
        own_node: str | None = None,
    ) -> None:
        self.secret = secret
        # With --workers 1 and Redis this process is a node too: its rooms are served here.
        self.own_node = own_node
        # This host's media nodes: what /api/stats and /api/rooms add up.
        self.local = local
        self.sfu: Sfu = app[SFU]
        self.rooms: Rooms = self.sfu.rooms
        self.placement = placement
        self.registry = registry
        self.client: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # room -> (edge node, origin node) this front has asked the cascade for.
        self._edges: dict[str, tuple[str, str]] = {}
        # Rooms being opened because another front said so: not announced back.
        self._from_cluster: set[str] = set()
        if registry is not None:
            self.rooms.opened.append(lambda room: self._share_facts(room.info))

    async def start(self) -> None:
        self.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0, connect=1.0))
        if self.registry is not None:
            # Rooms this front opened before (rooms.json) are known to the whole service.
            for room in list(self.rooms.rooms.values()):
                self._share_facts(room.info)
            self._spawn(self.registry.listen(self._on_event))

    async def _on_event(self, event: dict[str, Any]) -> None:
        """Every host keeps every lesson's facts (tokens, lists, facts for recordings)."""
        room = event.get("room")
        if not isinstance(room, str) or not ROOM_RE.match(room) or self.registry is None:
            return
        if event["type"] == "room_opened" and room not in self.rooms.rooms:
            with contextlib.suppress(RegistryUnavailable):
                info = await self.registry.facts(room)
                if info is not None and info.room == room:
                    self._from_cluster.add(room)
                    try:
                        self.rooms.open(info)
                    finally:
                        self._from_cluster.discard(room)
        elif event["type"] == "room_closed" and room in self.rooms.rooms and not self.own_node:
            # (With a node in this process the node evicts the room: it also closes the
            # participants' sockets.)
            await self.rooms.close(room)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.client is not None:
            await self.client.close()

    def _share_facts(self, info: LessonInfo) -> None:
        assert self.registry is not None
        registry = self.registry
        if info.room in self._from_cluster:
            return

        async def put() -> None:
            with contextlib.suppress(RegistryUnavailable):
                await registry.put_facts(info)

        self._spawn(put())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def facts(self, room: str) -> LessonInfo | None:
        local = self.rooms.get(room)  # this host's rooms.json and the scheduler
        if local is not None:
            return local.info
        if self.registry is None:
            return None
        try:
            info = await self.registry.facts(room)
        except RegistryUnavailable:
            return None
        if info is not None:
            self._from_cluster.add(room)
            try:
                self.rooms.open(info)
            finally:
                self._from_cluster.discard(room)
        return info

    async def _open_on(self, node: NodeInfo, info: LessonInfo) -> None:
        assert self.client is not None
        async with self.client.post(
            node.url + "/_cluster/rooms",
            json=asdict(info),
            headers=internal_headers(self.secret),
        ) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message=await resp.text()
                )

    def _may_edge(self, info: LessonInfo, token: object) -> bool:
        """Whether this participant may be served by an edge: not the master classroom."""
        if not isinstance(token, str):
            return False
        try:
            claims = verify_token(self.secret, token, room=info.room)
        except TokenError:
            return False  # the node refuses it with the right error
        if claims.role is Role.MASTER or claims.classroom == info.master:
            return False
        return claims.role in (Role.POINT, Role.AGENT, Role.OBSERVER, Role.STUDENT)

    async def _make_edge(self, room: str, edge: NodeInfo, origin: NodeInfo) -> bool:
        """Ask `edge` to relay `room` from `origin` (media_server/relay.py's API)."""
        assert self.client is not None
        if self._edges.get(room) == (edge.id, origin.id):
            return True
        token = issue_token(self.secret, room="*", classroom="cluster", role=Role.ADMIN, ttl_s=60)
        try:
            async with self.client.post(
                edge.url + "/api/relay/edges",
                json={"room": room, "origin": origin.url},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                if resp.status in (200, 201):
                    self._edges[room] = (edge.id, origin.id)
                    log.info("room %s: node %s serves as an edge of %s", room, edge.id, origin.id)
                    return True
                log.warning(
                    "room %s: node %s cannot be an edge of %s (HTTP %d); proxying to the origin",
                    room,
                    edge.id,
                    origin.id,
                    resp.status,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning(
                "room %s: edge %s unreachable (%s); proxying to the origin", room, edge.id, exc
            )
        return False

    async def _follow_origin(self, room: str, origin: NodeInfo) -> None:
        """The room was re-placed (its origin died): the edge this front made for it
        relays from the new origin, or stops relaying if the room moved onto it.

        (With Redis the edge node follows the registry itself, tongke/cluster/node.py;
        this covers the workers of one host, which have no registry.)"""
        known = self._edges.get(room)
        if known is None or known[1] == origin.id:
            return
        edge = next((n for n in self.local() if n.id == known[0]), None)
        if edge is None:
            self._edges.pop(room, None)
            return
        if edge.id == origin.id:
            self._edges.pop(room, None)
            assert self.client is not None
            token = issue_token(
                self.secret, room="*", classroom="cluster", role=Role.ADMIN, ttl_s=60
            )
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with self.client.delete(
                    f"{edge.url}/api/relay/edges/{room}",
                    headers={"Authorization": f"Bearer {token}"},
                ):
                    pass
            log.warning("room %s moved onto its edge %s: relaying stopped", room, edge.id)
            return
        log.warning("room %s: edge %s follows its origin to %s", room, edge.id, origin.id)
        await self._make_edge(room, edge, origin)

    async def connect(
        self, info: LessonInfo, remote: str | None, token: object = None
    ) -> tuple[aiohttp.ClientWebSocketResponse, NodeInfo] | None:
        """A socket to the node hosting the lesson, placing or re-placing it as needed."""
        assert self.client is not None
        room = info.room
        may_edge = bool(EDGE_POLICY) and self._may_edge(info, token)
        for _ in range(CONNECT_TRIES):
            route = await self.placement.route(room, may_edge=may_edge)
            if route is None:
                log.error("no live media node to place room %s on", room)
                return None
            await self._follow_origin(room, route.origin)
            node = route.origin
            if route.edge is not None and await self._make_edge(room, route.edge, route.origin):
                node = route.edge
            try:
                await self._open_on(node, info)
                ws = await self.client.ws_connect(
                    node.url + "/_cluster/ws",
                    headers=client_headers(self.secret, remote),
                    heartbeat=10.0,
                    max_msg_size=self.sfu.max_message_bytes * 4,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                )
                return ws, node
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning(
                    "media node %s (%s) unreachable for room %s: %s; placing the room elsewhere",
                    node.id,
                    node.url,
                    room,
                    exc or type(exc).__name__,
                )
                await self.placement.failed(room, node)
        return None

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(
            heartbeat=HEARTBEAT_S, max_msg_size=self.sfu.max_message_bytes * 4
        )
        await ws.prepare(request)
        session = _PreJoin(
            ws,
            self.sfu,
            remote=request.remote,
            limits=request.app.get(RATE_LIMITS),
            audit=request.app.get(AUDIT),
        )
        upstream: aiohttp.ClientWebSocketResponse | None = None
        pump: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if upstream is not None:
                    if msg.type == WSMsgType.TEXT:
                        await upstream.send_str(msg.data)
                    elif msg.type == WSMsgType.BINARY:
                        await upstream.send_bytes(msg.data)
                    elif msg.type == WSMsgType.ERROR:
                        break
                    continue
                if msg.type == WSMsgType.TEXT:
                    try:
                        await session.handle_text(msg.data)
                    except _Join as join:
                        info = await self.facts(join.room)
                        if info is None:
                            await session.refuse(join.message)
                            break
                        connected = await self.connect(
                            info, request.remote, join.message.get("token")
                        )
                        if connected is None:
                            await session.error(
                                "unavailable", "no media server can take this lesson right now"
                            )
                            await ws.close(code=TRY_AGAIN, message=b"unavailable")
                            break
                        upstream, node = connected
                        await upstream.send_str(msg.data)
                        pump = asyncio.ensure_future(self._pump(upstream, ws, join.room, node))
                elif msg.type == WSMsgType.BINARY:
                    await session.error("bad_json", "send JSON text frames, not binary")
                elif msg.type == WSMsgType.ERROR:
                    break
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            log.info("signalling proxy ended: %s", exc)
        finally:
            await session.close()  # (never joined here; nothing to remove but in a race)
            if upstream is not None:
                await upstream.close()
            if pump is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            if not ws.closed:
                await ws.close()
        return ws

    async def _pump(
        self,
        upstream: aiohttp.ClientWebSocketResponse,
        ws: web.WebSocketResponse,
        room: str,
        node: NodeInfo,
    ) -> None:
        reason = b""
        try:
            while True:
                msg = await upstream.receive()
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
                elif msg.type == WSMsgType.CLOSE:
                    reason = str(msg.extra or "").encode()[:120]
                    break
                else:  # CLOSING, CLOSED, ERROR
                    break
        except (ConnectionError, RuntimeError) as exc:
            log.debug("signalling proxy to the client ended: %s", exc)
        if ws.closed:
            return
        code = upstream.close_code
        if code is None or code in (1006, 1011, NODE_LOST):
            # The node died or dropped the room: come back, the room is re-placed.
            log.warning(
                "media node %s lost a participant of room %s (close %s)", node.id, room, code
            )
            await ws.close(code=NODE_LOST, message=b"node_lost")
        else:
            await ws.close(code=code, message=reason)

    async def proxy_get(self, request: web.Request, room: str) -> web.StreamResponse | None:
        """A room-scoped GET answered by the room's node (participants, attendance)."""
        assert self.client is not None
        node = await self.placement.owner(room)
        if node is None or node.id == self.own_node:
            return None
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        headers.update(client_headers(self.secret, request.remote))
        try:
            async with self.client.get(node.url + request.path_qs, headers=headers) as resp:
                body = await resp.read()
                return web.Response(body=body, status=resp.status, content_type=resp.content_type)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("media node %s unreachable for %s: %s", node.id, request.path, exc)
            return None

    async def _from_nodes(self, request: web.Request) -> list[Any] | web.Response:
        """The same admin GET answered by each of this host's nodes (or the first refusal)."""
        assert self.client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        answers = []
        for node in self.local():
            try:
                async with self.client.get(node.url + request.path, headers=headers) as resp:
                    if resp.status != 200:
                        return web.Response(
                            body=await resp.read(),
                            status=resp.status,
                            content_type=resp.content_type,
                        )
                    answers.append(await resp.json())
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("media node %s did not answer %s: %s", node.id, request.path, exc)
        return answers

    async def stats(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """/api/stats of the front plus every node of this host, added up."""
        own = await handler(request)
        if own.status != 200 or not isinstance(own, web.Response) or own.body is None:
            return own
        answers = await self._from_nodes(request)
        if isinstance(answers, web.Response):
            return answers
        merged = merge_stats([json.loads(bytes(own.body)), *answers])  # type: ignore[arg-type]
        merged["nodes"] = [
            {
                "id": n.id,
                "url": n.url,
                "pid": n.pid,
                "rooms": n.rooms,
                "participants": n.participants,
            }
            for n in self.local()
        ]
        return web.json_response(merged)

    async def list_rooms(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """/api/rooms with each room's participants counted where they are."""
        own = await handler(request)
        if own.status != 200 or not isinstance(own, web.Response) or own.body is None:
            return own
        answers = await self._from_nodes(request)
        if isinstance(answers, web.Response):
            return answers
        counts: dict[str, int] = {}
        for answer in answers:
            for room in answer:
                counts[room["room"]] = counts.get(room["room"], 0) + int(room["participants"])
        rooms = json.loads(bytes(own.body))  # type: ignore[arg-type]
        for room in rooms:
            room["participants"] = counts.get(room["room"], room["participants"])
        return web.json_response(rooms)

    async def room_closed(self, room: str) -> None:
        node = await self.placement.closed(room)
        if node is None or self.client is None:
            return
        try:
            async with self.client.delete(
                f"{node.url}/_cluster/rooms/{room}", headers=internal_headers(self.secret)
            ):
                pass
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("could not tell media node %s that room %s closed: %s", node.id, room, exc)

    async def describe(self) -> dict[str, Any]:
        return {"mode": "cluster", **(await self.placement.describe())}


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


FRONT = web.AppKey("cluster_front", Front)


@web.middleware
async def front_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    front = request.app.get(FRONT)
    if front is None:
        return await handler(request)
    if request.path == "/ws" and request.method == "GET":
        return await front.websocket(request)
    if request.path == "/api/stats" and request.method == "GET":
        return await front.stats(request, handler)
    if request.path == "/api/rooms" and request.method == "GET":
        return await front.list_rooms(request, handler)
    match = ROOM_PATH.match(request.path)
    if match is None or not ROOM_RE.match(match["room"]):
        return await handler(request)
    room = match["room"]
    if request.method == "GET":
        response = await front.proxy_get(request, room)
        return response if response is not None else await handler(request)
    response = await handler(request)
    if request.method == "DELETE" and match["rest"] is None and response.status == 200:
        await front.room_closed(room)
    return response


def setup_routes(app: web.Application) -> None:
    """`GET /api/cluster` (admin): nodes, their load, where each room is."""

    async def cluster(request: web.Request) -> web.Response:
        try:
            verify_token(
                request.app[SFU].secret, _bearer(request), room="*", roles=frozenset({Role.ADMIN})
            )
        except TokenError as exc:
            status = 401 if exc.code in ("token_missing", "token_invalid", "token_expired") else 403
            return web.json_response(
                {"error": {"code": exc.code, "message": exc.message}}, status=status
            )
        front = request.app.get(FRONT)
        if front is None:
            return web.json_response({"mode": "single", "nodes": [], "rooms": {}})
        return web.json_response(await front.describe())

    app.router.add_get("/api/cluster", cluster)


def merge_stats(parts: list[Any]) -> Any:
    """Add up /api/stats answers: counts summed, rooms united, latencies the worst."""
    first = parts[0]
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, int | float):
        return sum(p for p in parts if isinstance(p, int | float) and not isinstance(p, bool))
    if isinstance(first, list):
        return [item for p in parts if isinstance(p, list) for item in p]
    if isinstance(first, dict):
        keys = {k for p in parts if isinstance(p, dict) for k in p}
        merged = {}
        for key in keys:
            values = [p[key] for p in parts if isinstance(p, dict) and key in p]
            if key == "latency_ms":
                merged[key] = {
                    q: max((v.get(q) or 0 for v in values if isinstance(v, dict)), default=None)
                    for q in ("p50", "p99")
                }
            else:
                merged[key] = merge_stats(values)
        return merged
    return first
