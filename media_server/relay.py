"""Cascading a lesson across nodes: this node's relay links, and how they are opened.

A node becomes an *edge* of another (the lesson's *origin*) for one room with
`POST /api/relay/edges {"room": R, "origin": "http://A:8080"}` (or `RelayService.add_edge`
from the cluster's placement): it opens the room locally, dials the origin's control
socket (`GET /api/relay/link`, a WebSocket), and both nodes then run one RelayLink
(media_server/relay_link.py) for the room: the origin's sources fanned out to the edge's
participants, the edge's publishers (teaching points' cameras and microphones) back to
the origin, media as relay datagrams on each node's one relay UDP socket. The edge keeps
the link up: a broken control socket is dialled again every second.

Trust: the first message on the control socket is a hello signed with the secret the
nodes share (the one that signs room tokens), and the origin's welcome is signed back;
each link's datagram key is derived from both. A datagram that names no link we have,
comes from another address than the link's peer, or fails its tag is dropped and
counted by reason (`GET /api/relay`), never delivered.

The edge mirrors the origin's classroom state that its receive policy needs (phase,
who is called on, which points are muted), and its participants are members of the
origin's lesson (hands, chat, attendance, device reports: media_server/relay_classroom.py).
While a node is an edge for a room its director shows the origin's program instead of
cutting one of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from media_server import relay_wire as wire
from media_server.classroom import Phase
from media_server.relay_classroom import EdgeClassroom, OriginMembers
from media_server.relay_link import RelayLink
from media_server.room import LessonInfo, Room
from tongke.tokens import Claims

if TYPE_CHECKING:
    from media_server.sfu import Sfu
    from tongke.app import AppContext

log = logging.getLogger(__name__)

LINK_PATH = "/api/relay/link"
HANDSHAKE_TIMEOUT_S = 10.0
REDIAL_S = 1.0
HEARTBEAT_S = 10.0


class RelayRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # a few hundred ms of a node's relayed lessons
READS_PER_WAKEUP = 64


class RelaySocket:
    """The node's one relay UDP socket, read in batches.

    asyncio's datagram transport reads one datagram per loop turn; one socket carrying
    every relayed stream of a node must drain what has arrived each time it is ready.
    Sending never blocks: a full send buffer drops the datagram (NACK repairs it).
    """

    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int], int], None]) -> None:
        self._on_datagram = on_datagram
        self._sock: socket.socket | None = None
        self.send_dropped = 0

    def open(self, host: str, port: int) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        sock.setblocking(False)
        sock.bind((host, port))
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read_ready)
        return int(sock.getsockname()[1])

    def _read_ready(self) -> None:
        sock, deliver = self._sock, self._on_datagram
        if sock is None:
            return
        # Read what has arrived, then deliver it: the datagrams' read time is when they
        # left the socket, not after the fan-out of the ones before them.
        batch = []
        for _ in range(READS_PER_WAKEUP):
            try:
                batch.append(sock.recvfrom(2048))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP unreachable from a peer that left
                log.debug("relay socket: %s", exc)
                break
        read_us = wire.now_us()
        for data, addr in batch:
            deliver(data, addr, read_us)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.send_dropped += 1
        except OSError as exc:
            self.send_dropped += 1
            log.debug("relay socket: %s", exc)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None


class EdgeDialer:
    """Keeps this node an edge of `origin` for `room`: dials, serves the link, redials."""

    def __init__(self, service: RelayService, room: str, origin: str) -> None:
        self.service = service
        self.room = room
        self.origin = origin
        self.state = "connecting"
        self.error: str | None = None
        self.link: RelayLink | None = None
        self.links_opened = 0
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                last = self.error
                try:
                    await self._dial(session)
                    self.error = None
                except RelayRefused as exc:
                    self.error = f"{exc.code}: {exc.message}"
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    self.error = f"unreachable: {exc!r}"
                if self.error and self.error != last:  # once per new reason, not per second
                    log.warning("relay edge of %s for %s: %s", self.origin, self.room, self.error)
                self.state = "connecting"
                await asyncio.sleep(REDIAL_S)

    async def _dial(self, session: aiohttp.ClientSession) -> None:
        service = self.service
        url = str(URL(self.origin).with_path(LINK_PATH))
        async with session.ws_connect(url, heartbeat=HEARTBEAT_S) as ws:
            nonce = secrets.token_hex(16)
            sent_at = time.time()
            await ws.send_json(
                {
                    "type": "hello",
                    "node": service.node,
                    "room": self.room,
                    "sent_at": sent_at,
                    "nonce": nonce,
                    "port": service.port,
                    "mac": wire.hello_mac(
                        service.secret, service.node, self.room, sent_at, nonce, service.port
                    ),
                }
            )
            reply = await ws.receive_json(timeout=HANDSHAKE_TIMEOUT_S)
            if not isinstance(reply, dict) or reply.get("type") != "welcome":
                error = reply.get("error", {}) if isinstance(reply, dict) else {}
                raise RelayRefused(str(error.get("code")), str(error.get("message")))
            link_id, origin_node = reply.get("link"), str(reply.get("node"))
            origin_nonce, port = str(reply.get("nonce")), reply.get("port")
            if not isinstance(link_id, int) or not isinstance(port, int):
                raise RelayRefused("relay_refused", "the origin's welcome has no link and port")
            expected = wire.welcome_mac(
                service.secret, origin_node, link_id, nonce, origin_nonce, port
            )
            if not hmac.compare_digest(str(reply.get("mac")), expected):
                raise RelayRefused("relay_refused", "the origin's welcome is not signed by us")
            lesson = reply.get("lesson")
            info = lesson if isinstance(lesson, dict) else {}
            room = service.sfu.rooms.get(self.room) or service.sfu.rooms.open(
                LessonInfo(
                    room=self.room,
                    title=str(info.get("title", "")),
                    master=str(info.get("master", "")),
                    points=[p for p in info.get("points", []) if isinstance(p, str)],
                )
            )
            upstream = service.install_edge(room)
            peer = ws.get_extra_info("peername")
            link = RelayLink(
                room=room,
                link_id=link_id,
                key=wire.link_key(service.secret, link_id, nonce, origin_nonce),
                peer_node=origin_node,
                own_node=service.node,
                peer_addr=(peer[0], port),
                transport=service.transport,
                role="edge",
            )
            self.link, self.state = link, "linked"
            self.links_opened += 1
            service.links[link.link_id] = link

            async def from_origin(message: dict[str, Any]) -> None:
                if not await upstream.handle(message):
                    await apply_classroom(room, message)

            upstream.attach(link)
            try:
                await serve_while_open(service, link, ws, from_origin)
            finally:
                upstream.detach(link)
                service.links.pop(link.link_id, None)
                self.link = None

    def describe(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "origin": self.origin,
            "state": self.state,
            "error": self.error,
            "links_opened": self.links_opened,
            "link": self.link.link_id if self.link is not None else None,
        }

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _ws_receive(ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> Any:
    async def receive() -> str | None:
        msg = await ws.receive()
        if msg.type == WSMsgType.TEXT:
            return str(msg.data)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None
        return ""  # binary or ping: not a control message; refused and counted

    return receive


async def serve_while_open(
    service: RelayService,
    link: RelayLink,
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    on_message: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> None:
    """Serve `link` until its control socket closes or its room is closed on this node."""
    serving = asyncio.ensure_future(link.serve(_ws_receive(ws), ws.send_str, on_message))
    try:
        while not serving.done():
            if service.sfu.rooms.rooms.get(link.room.id) is not link.room:
                log.info("relay link %s: lesson %s closed here", link.link_id, link.room.id)
                await ws.close()
                break
            await asyncio.wait([serving], timeout=1.0)
        await serving
    finally:
        serving.cancel()


# -- classroom state the edge's receive policy needs --------------------------------------


def classroom_state(room: Room) -> dict[str, Any]:
    c = room.classroom
    return {
        "type": "classroom",
        "phase": c.phase.value,
        "called_on": c.called_on,
        "muted": sorted(c.muted),
    }


async def apply_classroom(room: Room, message: dict[str, Any]) -> None:
    """The origin's classroom state, applied on the edge's receive policy (the members
    hear of the change from the origin's classroom itself)."""
    if message.get("type") != "classroom":
        raise ValueError(f"unknown control message type {message.get('type')!r}")
    phase, called_on, muted = message.get("phase"), message.get("called_on"), message.get("muted")
    if phase not in {p.value for p in Phase}:
        raise ValueError("classroom.phase must be a lesson phase")
    if called_on is not None and not isinstance(called_on, str):
        raise ValueError("classroom.called_on must be a classroom id or null")
    if not isinstance(muted, list) or not all(isinstance(m, str) for m in muted):
        raise ValueError("classroom.muted must be a list of classroom ids")
    c = room.classroom
    c.phase, c.called_on, c.muted = Phase(phase), called_on, set(muted)
    room.router.resubscribe()


# -- the service ---------------------------------------------------------------------------


class RelayService:
    def __init__(self, sfu: Sfu, *, secret: str, host: str, port: int = 0) -> None:
        self.sfu = sfu
        self.secret = secret
        self.host = host
        self.port = port
        # Cluster placement may name nodes itself; standalone, host name and process.
        self.node = f"{socket.gethostname()}-{os.getpid()}"[:64].replace(":", "-")
        self.links: dict[int, RelayLink] = {}
        self.edges: dict[str, EdgeDialer] = {}
        self.dropped: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.socket = RelaySocket(self.on_datagram)
        self._open = False

    @property
    def transport(self) -> RelaySocket:
        if not self._open:
            raise RuntimeError("the relay socket is not open (RelayService.start)")
        return self.socket

    async def start(self) -> None:
        self.port = self.socket.open(self.host, self.port)
        self._open = True

    # -- datagrams: the hot path ------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: tuple[str, int], read_us: int | None = None) -> None:
        arrival = time.perf_counter_ns()
        link_id = wire.link_of(data)
        if link_id is None:
            self.dropped["not_relay"] += 1
            return
        link = self.links.get(link_id)
        if link is None:
            self.dropped["unknown_link"] += 1
            return
        if addr[0] != link.peer_addr[0]:
            self.dropped["wrong_source"] += 1
            return
        if not wire.authentic(link.key, data) or data[1] not in wire.KINDS:
            self.dropped["bad_tag"] += 1
            return
        link.on_datagram(data, arrival, read_us)

    # -- the origin's side of a link --------------------------------------------------------

    async def accept(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=self.sfu.max_message_bytes)
        await ws.prepare(request)
        try:
            hello = await ws.receive_json(timeout=HANDSHAKE_TIMEOUT_S)
            room, link = self._open_link(hello, request.remote or "")
        except RelayRefused as exc:
            self.refused[exc.code] += 1
            log.warning("relay link from %s refused: %s", request.remote, exc.message)
            await ws.send_json(
                {"type": "error", "error": {"code": exc.code, "message": exc.message}}
            )
            await ws.close(code=4403)
            return ws
        except (ValueError, TypeError, TimeoutError):
            self.refused["bad_hello"] += 1
            await ws.close(code=4400)
            return ws
        log.info("relay link %s: %s is an edge of %s", link.link_id, link.peer_node, room.id)

        sent = classroom_state(room)

        def mirror(kind: str, fields: dict[str, Any]) -> None:
            # Every timeline event calls this (joins, chat...); only a change is news.
            nonlocal sent
            state = classroom_state(room)
            if state != sent:
                sent = state
                link.post(state)

        room.classroom.listeners.append(mirror)
        link.post(sent)
        members = OriginMembers(link, room)
        try:
            await serve_while_open(self, link, ws, members.handle)
        finally:
            with contextlib.suppress(ValueError):
                room.classroom.listeners.remove(mirror)
            self.links.pop(link.link_id, None)
            await members.close()
            await ws.close()
        return ws

    def _open_link(self, hello: Any, remote: str) -> tuple[Room, RelayLink]:
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            raise RelayRefused("bad_hello", "the first message must be a hello")
        node, room_id, nonce = hello.get("node"), hello.get("room"), hello.get("nonce")
        sent_at, port = hello.get("sent_at"), hello.get("port")
        if not isinstance(node, str) or not wire.NODE_RE.match(node):
            raise RelayRefused("bad_hello", "node must match [A-Za-z0-9_.-]{1,64}")
        if not isinstance(room_id, str) or not isinstance(nonce, str) or len(nonce) != 32:
            raise RelayRefused("bad_hello", "room and a 32-character nonce are required")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise RelayRefused("bad_hello", "port must be the edge's relay UDP port")
        if (
            not isinstance(sent_at, int | float)
            or abs(time.time() - sent_at) > wire.HELLO_MAX_AGE_S
        ):
            raise RelayRefused("stale_hello", "the hello is too old (or the clocks disagree)")
        expected = wire.hello_mac(self.secret, node, room_id, sent_at, nonce, port)
        if not hmac.compare_digest(str(hello.get("mac")), expected):
            raise RelayRefused(
                "relay_refused", "the hello is not signed with this service's secret"
            )
        if node == self.node:
            raise RelayRefused("self_link", "a node cannot be an edge of itself")
        room = self.sfu.rooms.get(room_id)
        if room is None:
            raise RelayRefused("unknown_room", f"lesson {room_id!r} is not open on this node")
        for old in [k for k, v in self.links.items() if v.peer_node == node and v.room is room]:
            # The same edge again (it restarted, or its socket died unseen): the new link wins.
            log.warning("relay: %s linked %s again; closing its old link", node, room_id)
            self.links.pop(old).close()
        link_id = secrets.randbits(32)
        while link_id in self.links or link_id == 0:
            link_id = secrets.randbits(32)
        ours = secrets.token_hex(16)
        link = RelayLink(
            room=room,
            link_id=link_id,
            key=wire.link_key(self.secret, link_id, nonce, ours),
            peer_node=node,
            own_node=self.node,
            peer_addr=(remote, port),
            transport=self.transport,
            role="origin",
        )
        self.links[link_id] = link
        link.post(
            {
                "type": "welcome",
                "node": self.node,
                "link": link_id,
                "nonce": ours,
                "port": self.port,
                "mac": wire.welcome_mac(self.secret, self.node, link_id, nonce, ours, self.port),
                "lesson": asdict(room.info),
            }
        )
        return room, link

    # -- the edge's side ----------------------------------------------------------------------

    async def add_edge(self, room: str, origin: str) -> EdgeDialer:
        """Make this node an edge of `origin` for `room` (again: the new origin wins; the
        same origin again keeps the link it has)."""
        url = URL(origin)
        if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
            raise ValueError("origin must be a node's base URL, e.g. http://10.0.0.2:8080")
        old = self.edges.get(room)
        if old is not None and old.origin == str(url.origin()):
            return old
        if old is not None:
            log.info("relay edge for %s: origin %s replaces %s", room, url.origin(), old.origin)
            self.edges.pop(room)
            await old.close()
        dialer = self.edges[room] = EdgeDialer(self, room, str(url.origin()))
        here = self.sfu.rooms.rooms.get(room)
        if here is not None:
            self.install_edge(here)
        return dialer

    async def remove_edge(self, room: str) -> bool:
        """Stop relaying `room`; a lesson still open here goes on as this node's own (it
        was re-placed here, or the edge was removed by hand)."""
        dialer = self.edges.pop(room, None)
        if dialer is None:
            return False
        await dialer.close()
        here = self.sfu.rooms.rooms.get(room)
        if here is not None:
            await self._uninstall_edge(here)
        return True

    def install_edge(self, room: Room) -> EdgeClassroom:
        """The room's classroom forwards to the origin; its director shows the origin's."""
        upstream = room.classroom.upstream
        if not isinstance(upstream, EdgeClassroom) or upstream.room is not room:
            upstream = room.classroom.upstream = EdgeClassroom(room)
        room.director.set_relayed(True)
        return upstream

    async def _uninstall_edge(self, room: Room) -> None:
        upstream = room.classroom.upstream
        if upstream is None:
            return
        room.classroom.upstream = None
        if isinstance(upstream, EdgeClassroom):
            upstream.close()
        room.director.set_relayed(False)
        for p in list(room.participants.values()):  # members of this node's lesson now
            try:
                await room.classroom.joined(p)
            except Exception:
                log.exception("relay: %s joining %s here failed", p.id, room.id)

    def room_opened(self, room: Room) -> None:
        if room.id in self.edges:
            self.install_edge(room)

    def is_edge(self, room: str) -> bool:
        return room in self.edges

    def describe(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "port": self.port,
            "edges": [d.describe() for d in self.edges.values()],
            "links": [link.describe() for link in self.links.values()],
            "dropped": dict(self.dropped),
            "send_dropped": self.socket.send_dropped,
            "refused": dict(self.refused),
        }

    async def close(self) -> None:
        for room in list(self.edges):
            await self.remove_edge(room)
        for link in list(self.links.values()):
            link.close()
        self.links.clear()
        self.socket.close()
        self._open = False


RELAY = web.AppKey("relay", RelayService)


def setup(
    app: web.Application,
    ctx: AppContext,
    sfu: Sfu,
    require: Callable[..., Claims],
    json_error: Callable[[int, str, str], web.Response],
    read_body: Callable[[web.Request], Any],
) -> RelayService:
    from media_server.http import ROOM_RE
    from tongke.audit import AUDIT

    relay = app[RELAY] = RelayService(
        sfu, secret=ctx.secret, host=ctx.config.host, port=ctx.config.relay_port
    )
    audit = app[AUDIT]
    # A room opened (by the front, a join) while this node is its edge is one here.
    sfu.rooms.opened.append(relay.room_opened)

    async def link(request: web.Request) -> web.StreamResponse:
        return await relay.accept(request)

    async def status(request: web.Request) -> web.Response:
        require(request)
        return web.json_response(relay.describe())

    async def add_edge(request: web.Request) -> web.Response:
        claims = require(request)
        body = await read_body(request)
        room, origin = body.get("room"), body.get("origin")
        if not isinstance(room, str) or not ROOM_RE.match(room):
            return json_error(400, "bad_request", "room must match [A-Za-z0-9_.:-]{1,128}")
        if not isinstance(origin, str) or len(origin) > 256:
            return json_error(400, "bad_request", "origin must be the origin node's base URL")
        try:
            dialer = await relay.add_edge(room, origin)
        except ValueError as exc:
            return json_error(400, "bad_request", str(exc))
        audit.record("relay_edge_added", claims=claims, room=room, ip=request.remote, origin=origin)
        return web.json_response(dialer.describe(), status=201)

    async def remove_edge(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        claims = require(request)
        if not await relay.remove_edge(room):
            return json_error(404, "unknown_room", f"this node is no edge for {room!r}")
        audit.record("relay_edge_removed", claims=claims, room=room, ip=request.remote)
        return web.json_response({"removed": room})

    async def on_startup(app: web.Application) -> None:
        await relay.start()

    async def on_shutdown(app: web.Application) -> None:
        await relay.close()

    app.router.add_get(LINK_PATH, link)
    app.router.add_get("/api/relay", status)
    app.router.add_post("/api/relay/edges", add_edge)
    app.router.add_delete("/api/relay/edges/{room}", remove_edge)
    app.on_startup.append(on_startup)
    app.on_shutdown.insert(0, on_shutdown)
    return relay


__all__ = ["RELAY", "RelayService", "setup"]
