"""A lesson client speaking the public signalling protocol (docs/protocol.md).

The classroom agent, the teaching-point agent, the tests and the benchmarks all join
lessons through this class, exactly as a browser does: one WebSocket, a publish
PeerConnection we offer, a subscribe PeerConnection the server offers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from classroom_agent.tracks import add_encoded_track
from classroom_agent.transport_feedback import ArrivalLog, TransportFeedback
from tongke import rtc_internals
from tongke.codecs import answered_transport_cc, offer_transport_cc
from tongke.errors import CodedError
from tongke.heartbeat import HEARTBEAT_S
from tongke.turn import order_for_aiortc

log = logging.getLogger(__name__)


class LessonError(CodedError):
    """The server answered a request with an error (docs/protocol.md, 3.3)."""


@dataclass
class Publication:
    track: MediaStreamTrack
    source: str
    layer: str = "h"
    label: str = ""
    codec: str | None = None  # "h264", "vp8", "opus": restricts what we offer
    bitrate_kbps: int | None = None  # what it is encoded at, for the server's allocator


@dataclass
class RemoteTrack:
    mid: str
    info: dict[str, Any]
    track: MediaStreamTrack | None = None

    @property
    def source(self) -> str:
        return str(self.info.get("source", ""))

    @property
    def active(self) -> bool:
        return bool(self.info.get("active"))


@dataclass
class ClientEvents:
    on_track: Callable[[RemoteTrack], None] | None = None
    on_tracks_changed: Callable[[dict[str, RemoteTrack]], None] | None = None
    on_message: Callable[[dict[str, Any]], None] | None = None
    on_keyframe_request: Callable[[str], None] | None = None  # source name
    on_subscribe_pc: Callable[[RTCPeerConnection], None] | None = None
    # Called after each subscribe offer is applied, before answering: the place to
    # replace receivers (a benchmark that counts packets instead of decoding them).
    on_subscribe_transceivers: Callable[[RTCPeerConnection], None] | None = None


def rtc_configuration(ice_servers: list[dict[str, Any]] | None = None) -> RTCConfiguration:
    """The PeerConnection configuration, with the TURN servers ``joined`` handed us.

    max-bundle, as on the server: aiortc's balanced policy leaves a second transceiver of
    one kind on an unbundled transport when both are created before the first offer.
    """
    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in order_for_aiortc(ice_servers or [])
        if isinstance(s, dict) and s.get("urls")
    ]
    return RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def ws_url(base_url: str) -> str:
    return (
        base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1).rstrip("/") + "/ws"
    )


class LessonClient:
    def __init__(
        self,
        base_url: str,
        room: str,
        token: str,
        *,
        name: str | None = None,
        events: ClientEvents | None = None,
        transport_feedback: bool = True,
    ) -> None:
        # The datagram guard and long-RTT consent protect the agent's connections too.
        rtc_internals.install(receive_times=True)
        self.base_url = base_url
        self.room = room
        self.token = token
        self.name = name
        self.events = events or ClientEvents()
        self.joined: dict[str, Any] = {}
        self.rtc_config = rtc_configuration()
        self.remote: dict[str, RemoteTrack] = {}
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc: RTCPeerConnection | None = None
        # Transport-cc reports on the subscribe connection, once the offer has it (off:
        # a benchmark's subscribers that send no RTCP at all, bench/fanout.py).
        self.transport_feedback = transport_feedback
        self.feedback: TransportFeedback | None = None
        self.errors: list[dict[str, Any]] = []
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._sub_lock = asyncio.Lock()
        self._publications: list[Publication] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        self.close_code: int | None = None

    # -- connection -----------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._session.ws_connect(ws_url(self.base_url), heartbeat=HEARTBEAT_S)
        except Exception:
            await self._session.close()
            raise
        self._reader = asyncio.ensure_future(self._read())
        message: dict[str, Any] = {"type": "join", "room": self.room, "token": self.token}
        if self.name:
            message["name"] = self.name
        self.joined = await self.request(message, timeout=timeout)
        self.rtc_config = rtc_configuration(self.joined.get("ice_servers"))
        return self.joined

    async def send(self, message: dict[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            raise ConnectionError("not connected")
        await self._ws.send_str(json.dumps(message, ensure_ascii=False))

    async def request(self, message: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        ref = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self.send({**message, "id": ref})
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ref, None)
        if reply.get("type") == "error":
            raise LessonError(reply.get("code", "error"), reply.get("message", ""))
        return reply

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(msg.data)
                await self._dispatch(message)
        except Exception:
            log.exception("lesson client reader failed")
        finally:
            self.close_code = self._ws.close_code
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the server closed the connection"))
            self.closed.set()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        ref = message.get("id")
        if kind == "error":
            self.errors.append(message)
        if ref is not None and ref in self._pending:
            self._pending[ref].set_result(message)
            return
        if kind == "error" and not ref:
            # An unsolicited error (e.g. join refused) answers the oldest request.
            for future in self._pending.values():
                if not future.done():
                    future.set_result(message)
                    return
        if kind == "subscribe_offer":
            task = asyncio.ensure_future(self._on_subscribe_offer(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "tracks":
            self._update_tracks(message["tracks"])
        if self.events.on_message is not None:
            self.events.on_message(message)

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, publications: list[Publication]) -> None:
        """Offer every publication on the publish PeerConnection (renegotiates if needed)."""
        if self.publish_pc is None:
            self.publish_pc = RTCPeerConnection(self.rtc_config)
        pc = self.publish_pc
        for pub in publications:
            add_encoded_track(
                pc, pub.track, pub.codec, on_keyframe_request=self._keyframe_callback(pub.source)
            )
            self._publications.append(pub)
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        tracks = []
        for transceiver in pc.getTransceivers():
            pub = next(p for p in self._publications if p.track is transceiver.sender.track)
            tracks.append(
                {
                    "mid": transceiver.mid,
                    "source": pub.source,
                    "kind": pub.track.kind,
                    "layer": pub.layer,
                    "label": pub.label,
                }
            )
            if pub.bitrate_kbps:
                tracks[-1]["bitrate_bps"] = pub.bitrate_kbps * 1000
        reply = await self.request(
            {"type": "publish", "sdp": pc.localDescription.sdp, "tracks": tracks}
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))

    def _keyframe_callback(self, source: str) -> Callable[[], None] | None:
        report = self.events.on_keyframe_request
        return None if report is None else lambda: report(source)

    # -- subscribing --------------------------------------------------------------------

    async def _on_subscribe_offer(self, message: dict[str, Any]) -> None:
        async with self._sub_lock:
            if self.subscribe_pc is None:
                pc = self.subscribe_pc = RTCPeerConnection(self.rtc_config)
                if self.events.on_subscribe_pc is not None:
                    self.events.on_subscribe_pc(pc)
            pc = self.subscribe_pc
            await pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="offer"))
            if self.events.on_subscribe_transceivers is not None:
                self.events.on_subscribe_transceivers(pc)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            sdp = self._accept_transport_cc(pc, message["sdp"], pc.localDescription.sdp)
            await self.send({"type": "subscribe_answer", "sdp": sdp})
            for transceiver in pc.getTransceivers():
                mid = transceiver.mid
                if mid is None:
                    continue
                remote = self.remote.get(mid)
                if remote is None:
                    remote = self.remote[mid] = RemoteTrack(mid=mid, info={})
                if remote.track is None and transceiver.receiver.track is not None:
                    remote.track = transceiver.receiver.track
            self._update_tracks(message.get("tracks", []))

    def _accept_transport_cc(self, pc: RTCPeerConnection, offer: str, answer: str) -> str:
        """Where the SFU offers transport-cc, accept it and report arrivals: the SFU's
        delay-based estimate then sees this point's line fill before it loses a
        packet (classroom_agent/transport_feedback.py)."""
        ext_id = answered_transport_cc(offer)
        transceivers = [t for t in pc.getTransceivers() if t.mid is not None]
        if ext_id is None or not transceivers or not self.transport_feedback:
            return answer
        if self.feedback is None:
            dtls = rtc_internals.dtls_of(transceivers[0])
            arrivals = ArrivalLog(ext_id, time.monotonic())

            async def send(packet: bytes) -> None:
                if dtls.state in ("closed", "failed"):
                    raise ConnectionError("the subscribe transport is closed")
                if dtls.state == "connected":
                    await rtc_internals.send_rtcp(dtls, packet)

            rtc_internals.tap_arrivals(dtls, arrivals.on_packet)
            self.feedback = TransportFeedback(arrivals, send)
            self.feedback.start()
        self.feedback.log.ext_id = ext_id
        if answered_transport_cc(answer) is not None:
            return answer
        return offer_transport_cc(answer, ext_id)

    def _update_tracks(self, tracks: list[dict[str, Any]]) -> None:
        for info in tracks:
            mid = info.get("mid")
            if mid is None:
                continue
            remote = self.remote.setdefault(mid, RemoteTrack(mid=mid, info={}))
            was_active = remote.active and remote.info.get("track")
            remote.info = info
            if remote.active and remote.info.get("track") != was_active:
                if self.events.on_track is not None:
                    self.events.on_track(remote)
        if self.events.on_tracks_changed is not None:
            self.events.on_tracks_changed(self.remote)

    def active_tracks(self) -> list[RemoteTrack]:
        return [r for r in self.remote.values() if r.active]

    # -- teardown -----------------------------------------------------------------------

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._ws is not None and not self._ws.closed:
                await self.send({"type": "leave"})
                await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        if self.feedback is not None:
            await self.feedback.stop()
            self.feedback = None
        for pc in (self.publish_pc, self.subscribe_pc):
            if pc is not None:
                await pc.close()
        self.publish_pc = self.subscribe_pc = None
        if self._session is not None:
            await self._session.close()
        self.closed.set()
