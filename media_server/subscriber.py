"""The subscribe side of a participant: a PeerConnection the server offers.

One sendonly transceiver per subscribed source. When a source goes away its transceiver
idles and is re-used for the next source of the same kind and codec, so most changes need
only a `tracks` message, not a renegotiation. aiortc's sender is never started: its
`send()` is replaced by one that creates our DownTrack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtp import RtcpSdesPacket, RtcpSourceInfo

from media_server.bandwidth import SubscriberBandwidth
from media_server.downtrack import DownTrack
from media_server.estimator import INITIAL_BPS
from media_server.publisher import SignallingError, parse_sdp
from media_server.rtpbytes import AST_URI
from media_server.source import MediaSource
from media_server.twcc import feedback_first
from media_server.wire import Wire
from tongke import rtc_internals
from tongke.codecs import (
    answered_audio_red,
    answered_transport_cc,
    codec_capabilities,
    enable_opus_fec,
    offer_audio_red,
    offer_transport_cc,
)

log = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ANSWER_TIMEOUT_S = 20.0
CONTROL_INTERVAL_S = 1.0  # a tick costs about as much as forwarding a few hundred packets
SR_EVERY_TICKS = 1  # a sender report per DownTrack every second

SendJson = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Slot:
    transceiver: RTCRtpTransceiver
    kind: str
    codec: str
    source: MediaSource | None = None
    downtrack: DownTrack | None = None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"mid": self.transceiver.mid, "kind": self.kind, "active": False}
        if self.source is not None:
            info.update(self.source.describe())
            info["active"] = True
        return info


class Subscriber:
    def __init__(
        self,
        *,
        participant: str,
        send_json: SendJson,
        pc_factory: Callable[[], RTCPeerConnection],
        adaptive: bool = True,
        audio_red: bool = True,
        initial_bps: int = INITIAL_BPS,
    ) -> None:
        self.participant = participant
        self.adaptive = adaptive
        # Which source is the lesson's focus, for the allocator (the room sets it).
        self.focus: Callable[[MediaSource], bool] | None = None
        # How long the participant's own uplink queue stands (set by the participant):
        # the receiver reports wait in it too.
        self.uplink_queue_ms: Callable[[], float] | None = None
        self.audio_red = audio_red
        self.red: tuple[int, int] | None = None  # the answer accepted RED: (RED PT, Opus PT)
        self.initial_bps = initial_bps
        self.bandwidth: SubscriberBandwidth | None = None
        self.transport_cc_id: int | None = None  # the answer accepted transport-cc
        self._send_json = send_json
        self._pc_factory = pc_factory
        self.pc: RTCPeerConnection | None = None
        self.wire: Wire | None = None
        self.slots: list[Slot] = []
        self._desired: list[MediaSource] = []
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._answer: asyncio.Future[str] | None = None
        self._sr_task: asyncio.Task[None] | None = None
        self._closed = False
        self.renegotiations = 0

    # -- what to receive ------------------------------------------------------------------

    def update(self, sources: list[MediaSource]) -> None:
        """Receive exactly `sources` (never our own); renegotiate in the background."""
        self._desired = [s for s in sources if s.participant != self.participant]
        self._dirty = True
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            while self._dirty and not self._closed:
                self._dirty = False
                if self._assign():
                    await self._offer()
                else:
                    await self._send_json({"type": "tracks", "tracks": self.describe()})
        except SignallingError as exc:
            log.info("subscriber %s: %s", self.participant, exc.message)
        except (ConnectionError, asyncio.CancelledError):
            pass

    def _assign(self) -> bool:
        """Bind slots to desired sources; return True when new transceivers are needed."""
        wanted = {s.track_id: s for s in self._desired}
        for slot in self.slots:
            if slot.source is not None and wanted.get(slot.source.track_id) is not slot.source:
                self._bind(slot, None)
        bound = {slot.source.track_id for slot in self.slots if slot.source is not None}
        new_needed = False
        for track_id, source in wanted.items():
            if track_id in bound:
                continue
            free = next(
                (
                    s
                    for s in self.slots
                    if s.source is None and s.kind == source.kind and s.codec == source.codec
                ),
                None,
            )
            if free is None:
                free = self._add_slot(source.kind, source.codec)
                new_needed = True
            self._bind(free, source)
        return new_needed

    def _bind(self, slot: Slot, source: MediaSource | None) -> None:
        slot.source = source
        if slot.downtrack is not None:
            slot.downtrack.bind(source)

    def _add_slot(self, kind: str, codec: str) -> Slot:
        if self.pc is None:
            self.pc = self._pc_factory()
        transceiver = self.pc.addTransceiver(kind, direction="sendonly")
        transceiver.setCodecPreferences(codec_capabilities(kind, codec))
        slot = Slot(transceiver=transceiver, kind=kind, codec=codec)

        async def start(parameters: RTCRtpSendParameters) -> None:
            self._start_slot(slot, parameters)

        rtc_internals.take_over_sender(transceiver, start)
        self.slots.append(slot)
        return slot

    def _start_slot(self, slot: Slot, parameters: RTCRtpSendParameters) -> None:
        if slot.downtrack is not None or self._closed:
            return
        sender = slot.transceiver.sender
        dtls = sender.transport
        if self.wire is None or self.wire.dtls is not dtls:
            self.wire = Wire(dtls)
            if self.bandwidth is not None:
                self.bandwidth.close()
            self.bandwidth = SubscriberBandwidth(
                self.wire, adaptive=self.adaptive, initial_bps=self.initial_bps
            )
            if self.focus is not None:
                self.bandwidth.focus = self.focus
            if self.uplink_queue_ms is not None:
                self.bandwidth.uplink_queue_ms = self.uplink_queue_ms
            if self.transport_cc_id is not None and self.adaptive:
                self.bandwidth.use_transport_cc(self.transport_cc_id)
                on_rtcp = self.bandwidth.on_rtcp
                rtc_internals.tap_rtcp(
                    dtls, lambda data: on_rtcp(data, time.monotonic()), early=feedback_first
                )
        bandwidth = self.bandwidth
        assert bandwidth is not None
        ext = {e.uri: e.id for e in parameters.headerExtensions}
        downtrack = DownTrack(
            sink=bandwidth.sink_for(slot.kind),
            estimator=bandwidth.estimator,
            repair=bandwidth.repair if self.adaptive else None,
            mid=slot.transceiver.mid or "",
            ssrc=rtc_internals.sender_ssrc(sender),
            payload_type=parameters.codecs[0].payloadType or 0,
            mid_ext_id=ext.get(MID_URI),
            ast_ext_id=ext.get(AST_URI) if slot.kind == "video" else None,
            tcc_ext_id=self.transport_cc_id,
            transport_seq=bandwidth.transport_seq,
            red=self._red_for(slot, parameters),
        )
        # RTCP from the subscriber about this SSRC (NACK, PLI, REMB, RR) comes to us.
        rtc_internals.register_rtcp_recipient(dtls, downtrack, downtrack.ssrc)
        slot.downtrack = downtrack
        downtrack.bind(slot.source)
        if self._sr_task is None:
            self._sr_task = asyncio.ensure_future(self._control(parameters.rtcp.cname or ""))

    def _red_for(self, slot: Slot, parameters: RTCRtpSendParameters) -> tuple[int, int] | None:
        """RED for an Opus slot whose Opus payload type is the one RED was agreed around."""
        red = self.red
        if red is None or slot.kind != "audio" or slot.codec != "opus":
            return None
        return red if parameters.codecs and parameters.codecs[0].payloadType == red[1] else None

    # -- negotiation -------------------------------------------------------------------

    async def _offer(self) -> None:
        assert self.pc is not None
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        self._answer = asyncio.get_running_loop().create_future()
        self.renegotiations += 1
        await self._send_json(
            {
                "type": "subscribe_offer",
                "sdp": self._amend_offer(self.pc.localDescription.sdp),
                "tracks": self.describe(),
            }
        )
        try:
            sdp = await asyncio.wait_for(self._answer, ANSWER_TIMEOUT_S)
        except TimeoutError:
            raise SignallingError("timeout", "no subscribe_answer within 20 s") from None
        finally:
            self._answer = None
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    def _amend_offer(self, sdp: str) -> str:
        """What aiortc cannot offer itself: Opus FEC, transport-cc, RED."""
        sdp = offer_transport_cc(enable_opus_fec(sdp))
        return offer_audio_red(sdp) if self.audio_red else sdp

    def on_answer(self, sdp: object) -> None:
        if self._answer is None or self._answer.done():
            raise SignallingError("bad_request", "no subscribe_offer is waiting for an answer")
        parse_sdp(sdp)
        assert isinstance(sdp, str)
        if "a=fingerprint" not in sdp:
            raise SignallingError("bad_sdp", "the answer has no DTLS fingerprint")
        self.transport_cc_id = answered_transport_cc(sdp)
        self.red = answered_audio_red(sdp) if self.audio_red else None
        self._answer.set_result(sdp)

    def describe(self) -> list[dict[str, Any]]:
        return [slot.describe() for slot in self.slots]

    def find(self, track_id: str) -> Slot | None:
        return next(
            (s for s in self.slots if s.source is not None and s.source.track_id == track_id), None
        )

    # -- control: sender reports, estimate, allocation ---------------------------------

    async def _control(self, cname: str) -> None:
        sdes_items = [(1, cname.encode())]
        # Each SSRC's SDES chunk (its CNAME) never changes: built once, not every second.
        sdes: dict[int, bytes] = {}
        loop = asyncio.get_running_loop()
        ticks = 0
        while not self._closed:
            await asyncio.sleep(CONTROL_INTERVAL_S)
            ticks += 1
            wire, bandwidth = self.wire, self.bandwidth
            if wire is None or bandwidth is None:
                continue
            downtracks = [s.downtrack for s in self.slots if s.downtrack is not None]
            message = bandwidth.tick(downtracks, loop.time())
            if message is not None:
                try:
                    await self._send_json(message)
                except ConnectionError:
                    return
            if ticks % SR_EVERY_TICKS:
                continue
            for dt in downtracks:
                if dt.source is None:
                    continue
                report = dt.sender_report()
                if report is not None:
                    chunk = sdes.get(dt.ssrc)
                    if chunk is None:
                        chunk = sdes[dt.ssrc] = bytes(
                            RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=dt.ssrc, items=sdes_items)])
                        )
                    wire.send_rtcp(report + chunk)

    async def close(self) -> None:
        self._closed = True
        for task in (self._task, self._sr_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()
        for slot in self.slots:
            if slot.downtrack is not None:
                slot.downtrack.close()
        self.slots.clear()
        if self.wire is not None:
            self.wire.invalidate()
        if self.bandwidth is not None:
            self.bandwidth.close()
        if self.pc is not None:
            pc, self.pc = self.pc, None
            await pc.close()
