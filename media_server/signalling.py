"""The signalling WebSocket: JSON messages in, errors that name what was wrong, out.

Nothing a client sends can hurt another client: each message is validated before it
touches a room, and every failure is answered on that client's socket only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import replace
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from media_server.classroom import HANDLERS as CLASSROOM_HANDLERS
from media_server.classroom import Handler as ClassroomHandler
from media_server.participant import Participant
from media_server.publisher import SignallingError
from media_server.room import Room
from media_server.sfu import Sfu
from tongke.audit import AUDIT, AuditLog
from tongke.heartbeat import HEARTBEAT_S
from tongke.ratelimit import RATE_LIMITS, RateLimits
from tongke.tokens import PUBLISHING_ROLES, Claims, Role, TokenError, verify_token
from tongke.turn import ice_servers_for
from tongke.untrusted import BadInput, display_text, display_text_problem, loads, safe_dumps

log = logging.getLogger(__name__)

# Error codes sent to clients since start-up, by code ("internal" counts tracebacks):
# shown in /api/stats so that an operator sees abuse and the tests see no traceback.
ERRORS_SENT: Counter[str] = Counter()

TOKEN_CLOSE_CODES = {
    "token_missing": 4401,
    "token_invalid": 4401,
    "token_expired": 4401,
    "token_wrong_room": 4403,
    "token_role": 4403,
}
JOIN_ROLES = frozenset(
    {Role.MASTER, Role.POINT, Role.AGENT, Role.OBSERVER, Role.RECORDER, Role.ADMIN, Role.TUTOR}
)


class Session:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        sfu: Sfu,
        *,
        remote: str | None = None,
        limits: RateLimits | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.ws = ws
        self.sfu = sfu
        self.remote = remote
        self.limits = limits
        self.audit = audit
        self.room: Room | None = None
        self.participant: Participant | None = None
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message; the only error it raises is ConnectionError."""
        if self.ws.closed:
            raise ConnectionError("socket closed")
        text = safe_dumps(message)
        async with self._send_lock:
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError) as exc:
                # aiohttp raises RuntimeError or ConnectionResetError on a closing socket.
                raise ConnectionError(str(exc)) from exc

    async def error(self, code: str, message: str, ref: object = None) -> None:
        ERRORS_SENT[code] += 1
        payload: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if ref is not None:
            payload["id"] = ref
        try:
            await self.send(payload)
        except ConnectionError:
            pass

    async def handle_text(self, text: str) -> None:
        if len(text.encode()) > self.sfu.max_message_bytes:
            await self.error(
                "message_too_large",
                f"messages are limited to {self.sfu.max_message_bytes} bytes",
            )
            await self.ws.close(code=WSCloseCode.MESSAGE_TOO_BIG, message=b"message too large")
            return
        try:
            message = loads(text)
        except BadInput as exc:
            await self.error(exc.code, exc.message)
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.error("bad_json", "a message must be a JSON object with a string 'type'")
            return
        ref = message.get("id")
        if ref is not None and not _valid_ref(ref):
            await self.error("bad_request", "'id' must be an integer or a string of at most 64")
            return
        kind = message["type"]
        handler = getattr(self, f"on_{kind}", None) if kind.isidentifier() else None
        if handler is None and kind in CLASSROOM_HANDLERS:
            handler = self._classroom_handler(CLASSROOM_HANDLERS[kind])
        if handler is None:
            await self.error("unknown_type", f"unknown message type {kind!r}", ref)
            return
        if kind not in ("join", "ping") and self.participant is None:
            await self.error("not_joined", "send 'join' with a room token first", ref)
            return
        try:
            reply = await handler(message)
        except (SignallingError, BadInput) as exc:
            await self.error(exc.code, exc.message, ref)
            return
        if reply is not None:
            if ref is not None:
                reply["id"] = ref
            try:
                await self.send(reply)
            except ConnectionError:
                pass  # the socket closed while we worked (replaced, media failed, gone)

    def _classroom_handler(self, action: ClassroomHandler) -> Any:
        """Interaction messages (hands, chat, call-on...) live in media_server/classroom.py."""

        async def run(message: dict[str, Any]) -> dict[str, Any]:
            assert self.room is not None and self.participant is not None
            return await action(self.room.classroom, self.participant, message)

        return run

    # -- messages --------------------------------------------------------------------

    async def on_ping(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"type": "pong"}

    async def on_join(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if self.participant is not None:
            raise SignallingError("already_joined", "this socket has already joined a room")
        room_id, token = message.get("room"), message.get("token")
        if not isinstance(room_id, str) or not room_id:
            raise SignallingError("bad_request", "join needs 'room' (the lesson id)")
        if self.limits is not None:
            wait = self.limits.check(
                "join", ip=self.remote, token=token if isinstance(token, str) else None
            )
            if wait is not None:
                raise SignallingError(
                    "rate_limited", f"too many joins; try again in {max(1, round(wait))} s"
                )
        try:
            claims = verify_token(
                self.sfu.secret, token if isinstance(token, str) else None, room=room_id
            )
        except TokenError as exc:
            await self.error(exc.code, exc.message, message.get("id"))
            await self.ws.close(
                code=TOKEN_CLOSE_CODES.get(exc.code, 4401), message=exc.code.encode()
            )
            return None
        if claims.role not in JOIN_ROLES:
            raise SignallingError(
                "forbidden", f"a {claims.role.value} token cannot join a live lesson"
            )
        room = self.sfu.rooms.get(room_id)
        if room is None:
            await self.error(
                "unknown_room", f"lesson {room_id!r} is not open on this server", message.get("id")
            )
            await self.ws.close(code=4404, message=b"unknown_room")
            return None
        claims = lesson_claims(claims, room)
        try:
            room.classroom.check_join(claims)
        except SignallingError as exc:
            await self.error(exc.code, exc.message, message.get("id"))
            await self.ws.close(code=4410, message=exc.code.encode())
            return None
        name = message.get("name")
        if name is None or name == "":
            # Names inside tokens are checked when minted; older tokens fall back safely.
            name = claims.name if display_text_problem(claims.name) is None else claims.classroom
            if display_text_problem(name) is not None:
                name = claims.role.value
        else:
            name = display_text(name, "'name'")
        participant = Participant(
            participant_id=room.next_participant_id(),
            claims=claims,
            name=name,
            send_json=self.send,
            pc_factory=self.sfu.new_peer_connection,
            on_tracks=room.on_tracks,
            adaptive=self.sfu.adaptive,
            audio_red=self.sfu.audio_red,
        )
        self.room, self.participant = room, participant

        async def replaced() -> None:
            self.participant = None  # already removed from the room
            await self.error(
                "replaced",
                "this classroom joined again from another connection; this one is closed",
            )
            await self.ws.close(code=4409, message=b"replaced")

        participant.on_replaced = replaced

        async def media_failed(which: str) -> None:
            await self.error(
                "media_failed",
                f"the {which} media connection failed; join again to restore it",
            )
            await self.ws.close(code=4408, message=b"media_failed")

        participant.on_media_failed = media_failed
        try:
            await self.send(
                {
                    "type": "joined",
                    "id": message.get("id"),
                    "participant": participant.id,
                    "room": room.id,
                    "title": room.info.title,
                    "role": claims.role.value,
                    "classroom": claims.classroom,
                    "participants": [p.describe() for p in room.participants.values()],
                    # TURN (issue 8 item 8): time-limited credentials, tongke/turn.py.
                    "ice_servers": ice_servers_for(self.sfu.turn, claims.classroom),
                }
            )
        except ConnectionError:
            self.room = self.participant = None  # gone before it joined: nothing to undo
            return None
        await room.add(participant)
        return None

    async def on_publish(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.participant is not None and self.room is not None
        if self.participant.claims.role not in PUBLISHING_ROLES:
            raise SignallingError(
                "forbidden", f"a {self.participant.claims.role.value} may watch but not publish"
            )
        self.room.classroom.check_publish()
        tracks = message.get("tracks")
        if isinstance(tracks, list):
            for track in tracks:
                if isinstance(track, dict) and track.get("label") not in (None, ""):
                    display_text(track["label"], "track.label")
        sdp = await self.participant.publisher.negotiate(message.get("sdp"), tracks)
        if self.audit is not None:
            self.audit.record(
                "published",
                claims=self.participant.claims,
                room=self.room.id,
                ip=self.remote,
                sources=sorted(self.participant.sources),
            )
        await self.room.broadcast(
            {"type": "participant_updated", "participant": self.participant.describe()}
        )
        return {"type": "publish_answer", "sdp": sdp}

    async def on_unpublish(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.participant is not None
        mids = message.get("mids")
        if not isinstance(mids, list) or not all(isinstance(m, str) for m in mids):
            raise SignallingError("bad_request", "unpublish needs 'mids': a list of strings")
        removed = self.participant.publisher.unpublish(mids)
        if self.audit is not None and removed:
            assert self.room is not None
            self.audit.record(
                "unpublished",
                claims=self.participant.claims,
                room=self.room.id,
                ip=self.remote,
                mids=mids[:16],
            )
        return {
            "type": "unpublished",
            "mids": [m for m in mids if m not in self.participant.publisher.tracks],
            "count": len(removed),
        }

    async def on_subscribe_answer(self, message: dict[str, Any]) -> None:
        assert self.participant is not None
        self.participant.subscriber.on_answer(message.get("sdp"))

    async def on_set_subscription(self, message: dict[str, Any]) -> None:
        assert self.participant is not None
        track = message.get("track")
        slot = self.participant.subscriber.find(track) if isinstance(track, str) else None
        if slot is None or slot.downtrack is None:
            raise SignallingError("bad_request", f"not subscribed to track {track!r}")
        paused, layer = message.get("paused"), message.get("layer")
        if paused is not None:
            if not isinstance(paused, bool):
                raise SignallingError("bad_request", "'paused' must be true or false")
            slot.downtrack.set_paused(paused)
        if layer is not None:
            if layer not in ("h", "m", "l"):
                raise SignallingError("bad_request", "'layer' must be 'h', 'm' or 'l'")
            slot.downtrack.set_max_layer(layer)

    async def on_request_keyframe(self, message: dict[str, Any]) -> None:
        assert self.participant is not None
        track = message.get("track")
        slot = self.participant.subscriber.find(track) if isinstance(track, str) else None
        if slot is None or slot.downtrack is None:
            raise SignallingError("bad_request", f"not subscribed to track {track!r}")
        up = slot.downtrack.target or slot.downtrack.current
        if up is not None:
            up.request_keyframe()

    async def on_leave(self, message: dict[str, Any]) -> None:
        await self.ws.close(code=WSCloseCode.OK, message=b"bye")

    async def close(self) -> None:
        if self.room is not None and self.participant is not None:
            await self.room.remove(self.participant)


def lesson_claims(claims: Claims, room: Room) -> Claims:
    """An agent acts with its classroom's role in the lesson, never with more.

    The agent role exists for agents that serve a classroom; receiving every point's
    camera is the master's privilege, so a point's agent is treated as a point.
    """
    if claims.role is not Role.AGENT:
        return claims
    if claims.classroom and claims.classroom == room.info.master:
        return replace(claims, role=Role.MASTER)
    if claims.classroom in room.info.points or room.info.master:
        return replace(claims, role=Role.POINT)
    return claims


def _valid_ref(ref: object) -> bool:
    if isinstance(ref, bool):
        return False
    return isinstance(ref, int) or (isinstance(ref, str) and len(ref) <= 64)


async def websocket_handler(request: web.Request, sfu: Sfu) -> web.WebSocketResponse:
    # aiohttp's own cap is a backstop well above ours, so that an oversized message
    # still gets our clear error before the socket closes.
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=sfu.max_message_bytes * 4)
    await ws.prepare(request)
    session = Session(
        ws,
        sfu,
        remote=request.remote,
        limits=request.app.get(RATE_LIMITS),
        audit=request.app.get(AUDIT),
    )
    sfu.sessions.add(session)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    await session.handle_text(msg.data)
                except Exception:
                    log.exception("signalling message failed")
                    await session.error("internal", "the server could not handle this message")
            elif msg.type == WSMsgType.BINARY:
                await session.error("bad_json", "send JSON text frames, not binary")
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        sfu.sessions.discard(session)
        participant = session.participant
        if participant is not None and ws.close_code not in (1000, 1001):
            # A point that drops and rejoins: say why, from our side (a heartbeat that
            # went unanswered, a reset connection, media_failed), for whoever looks.
            log.warning(
                "%s (%s, %s): signalling ended, code %s%s",
                participant.id,
                participant.claims.classroom,
                participant.claims.role.value,
                ws.close_code,
                f": {ws.exception()}" if ws.exception() is not None else "",
            )
        await session.close()
    return ws
