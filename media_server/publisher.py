"""The publish side of a participant: an answerer PeerConnection whose packets we route.

aiortc negotiates ICE, DTLS and SRTP; we replace what it would do with the media. Its
receivers are never started (no jitter buffer, no decoder thread), and decrypted packets
go straight from the socket callback to the UpTrack that owns their SSRC.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    pack_remb_fci,
)
from aiortc.sdp import SessionDescription

from media_server.estimator import DownlinkEstimator
from media_server.rtpbytes import AST_URI
from media_server.uplink import REPORT_S, UplinkDelay
from media_server.uptrack import NackBatch, UpTrack
from media_server.wire import Wire
from tongke import rtc_internals
from tongke.codecs import CODEC_OF_MIME, enable_opus_fec
from tongke.errors import CodedError

log = logging.getLogger(__name__)

SOURCE_RE = re.compile(r"^[a-z0-9_]{1,32}$")
LAYERS = ("h", "m", "l")
# Where a publisher's uplink estimate starts, and its ceiling (sent as REMB, which is
# what a browser's encoder obeys): enough for a 720p camera at full quality, not so much
# that one camera outgrows what a rural point can receive; loss brings it down.
PUBLISH_START_BPS = 2_500_000
# A teaching point's uplink starts where WebRTC's senders start (300 kbit/s) and grows
# from there: its camera at the configured 500 kbit/s flooded a 256 kbit/s line for the
# first 10-15 s, and its receiver reports, queued behind it, came so late that the SFU
# sent it 2 Mbit/s for that long (256kbit-10pct, agent).
POINT_PUBLISH_START_BPS = 300_000
PUBLISH_MAX_BPS = 4_000_000
RTCP_INTERVAL_S = 1.0


class SignallingError(CodedError):
    """A message we cannot act on; its code goes back to the client (docs/protocol.md)."""


@dataclass(frozen=True)
class TrackSpec:
    mid: str
    source: str
    kind: str
    layer: str
    label: str
    # What the publisher encodes this layer at (bits/s), if it said: what the layer
    # costs a receiver before the server has measured it.
    bitrate_bps: int | None = None

    @classmethod
    def parse(cls, raw: object) -> TrackSpec:
        if not isinstance(raw, dict):
            raise SignallingError("bad_request", "each track must be an object")
        mid, source, kind = raw.get("mid"), raw.get("source"), raw.get("kind")
        layer = raw.get("layer", "h")
        label = raw.get("label", "")
        if not isinstance(mid, str) or not mid:
            raise SignallingError("bad_request", "track.mid must be a non-empty string")
        if not isinstance(source, str) or not SOURCE_RE.match(source):
            raise SignallingError(
                "bad_request", "track.source must match [a-z0-9_]{1,32}, e.g. teacher_camera"
            )
        if kind not in ("audio", "video"):
            raise SignallingError("bad_request", "track.kind must be 'audio' or 'video'")
        if layer not in LAYERS:
            raise SignallingError("bad_request", "track.layer must be 'h', 'm' or 'l'")
        if not isinstance(label, str) or len(label) > 64:
            raise SignallingError("bad_request", "track.label must be a string of at most 64")
        bitrate = raw.get("bitrate_bps")
        if bitrate is not None and (
            not isinstance(bitrate, int) or isinstance(bitrate, bool) or not 0 < bitrate <= 50e6
        ):
            raise SignallingError(
                "bad_request", "track.bitrate_bps must be an integer between 1 and 50000000"
            )
        return cls(mid=mid, source=source, kind=kind, layer=layer, label=label, bitrate_bps=bitrate)


def _offered_codec(media: Any) -> str | None:
    """The codec our answer will choose: the first offered one we support."""
    for codec in media.rtp.codecs:
        name = CODEC_OF_MIME.get(codec.mimeType.lower())
        if name is not None:
            return name
    return None


def _check_layers_agree(specs: list[TrackSpec], media_by_mid: dict[str, Any]) -> None:
    """Refuse, before anything changes, a publish whose layers of one source differ."""
    seen: dict[str, tuple[str, str | None]] = {}
    for spec in specs:
        this = (spec.kind, _offered_codec(media_by_mid[spec.mid]))
        first = seen.setdefault(spec.source, this)
        if first != this:
            raise SignallingError(
                "bad_request",
                f"all layers of {spec.source} must use one kind and codec "
                f"({first[0]}/{first[1]} and {this[0]}/{this[1]} were offered)",
            )


def parse_sdp(sdp: object) -> SessionDescription:
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise SignallingError("bad_sdp", "sdp must be an SDP string starting with 'v=0'")
    try:
        return SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises ValueError, IndexError, KeyError...
        raise SignallingError("bad_sdp", f"the SDP could not be parsed: {exc}") from None


@dataclass
class PublisherStats:
    srtp_errors: int = 0  # datagrams that failed SRTP authentication or decryption


def nack_packet(ssrc: int, media_ssrc: int, seqs: list[int]) -> bytes:
    """A generic NACK (RFC 4585) for `seqs`, in any order.

    aiortc's packer subtracts each sequence number from the previous one: given losses
    across the 16-bit wrap in arrival order (65534, 65535, 0, 1) it raised ValueError,
    once per wrap of every lossy stream (a 720p camera wraps every few minutes). Sorted,
    every difference is positive; the order of FCI entries means nothing to the sender.
    """
    lost = sorted(set(seqs))
    return bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=ssrc, media_ssrc=media_ssrc, lost=lost))


class Publisher:
    def __init__(
        self,
        *,
        track_prefix: str,
        on_tracks: Callable[[list[UpTrack], list[UpTrack]], None],
        pc_factory: Callable[[], RTCPeerConnection],
        send_json: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        round_trip_ms: Callable[[], float | None] = lambda: None,
        initial_bps: int = PUBLISH_START_BPS,
    ) -> None:
        self.track_prefix = track_prefix
        self._initial_bps = initial_bps
        # The participant's round trip, as its subscriber connection measures it: a
        # cut of the uplink shows in arrivals one round trip later.
        self._round_trip_ms = round_trip_ms
        self._send_json = send_json
        self.uplink = DownlinkEstimator(initial_bps=initial_bps, max_bps=PUBLISH_MAX_BPS)
        self._feedback_sent: tuple[int, list[dict[str, str]]] | None = None
        self._feedback_soon = False
        self._loss_mark: dict[UpTrack, tuple[int, int]] = {}
        # The delay-based reading of the uplink, once the answer accepts abs-send-time.
        self.uplink_delay: UplinkDelay | None = None
        self._on_tracks = on_tracks
        self._pc_factory = pc_factory
        self.pc: RTCPeerConnection | None = None
        self.wire: Wire | None = None
        self.tracks: dict[str, UpTrack] = {}  # mid -> UpTrack
        self._by_ssrc: dict[int, UpTrack] = {}
        self._by_rtx_ssrc: dict[int, UpTrack] = {}
        self._nacks = NackBatch(self._send_nack)
        self._rtcp_task: asyncio.Task[None] | None = None
        self._rtcp_ssrc = 1
        self._lock = asyncio.Lock()
        self._last_report: dict[UpTrack, tuple[int, int]] = {}
        self.stats = PublisherStats()

    async def negotiate(self, sdp: object, raw_tracks: object) -> str:
        if not isinstance(raw_tracks, list) or not raw_tracks:
            raise SignallingError("bad_request", "tracks must be a non-empty list")
        specs = [TrackSpec.parse(t) for t in raw_tracks]
        if len({s.mid for s in specs}) != len(specs):
            raise SignallingError("bad_request", "two tracks share one mid")
        if len({(s.source, s.layer) for s in specs}) != len(specs):
            raise SignallingError("bad_request", "two tracks share one source and layer")
        offer = parse_sdp(sdp)
        media_by_mid = {m.rtp.muxId: m for m in offer.media if m.kind in ("audio", "video")}
        for spec in specs:
            media = media_by_mid.get(spec.mid)
            if media is None:
                raise SignallingError("bad_sdp", f"the offer has no media section mid={spec.mid}")
            if media.kind != spec.kind:
                raise SignallingError(
                    "bad_request", f"mid {spec.mid} is {media.kind}, not {spec.kind}"
                )
            if not media.ssrc:
                raise SignallingError("bad_sdp", f"mid {spec.mid} has no a=ssrc line")
        _check_layers_agree(specs, media_by_mid)
        async with self._lock:
            return await self._negotiate(sdp, specs, media_by_mid)  # type: ignore[arg-type]

    async def _negotiate(self, sdp: str, specs: list[TrackSpec], media_by_mid: dict) -> str:
        first = self.pc is None
        if first:
            self.pc = self._pc_factory()
        pc = self.pc
        assert pc is not None
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            for transceiver in pc.getTransceivers():
                transceiver.direction = (
                    "recvonly" if transceiver.direction != "inactive" else "inactive"
                )
                rtc_internals.disable_receiver(transceiver)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except SignallingError:
            raise
        except Exception as exc:
            if first:
                await self.close()
            raise SignallingError("bad_sdp", f"the offer could not be negotiated: {exc}") from None
        local = SessionDescription.parse(pc.localDescription.sdp)
        answered = {m.rtp.muxId: m for m in local.media}
        if self.uplink_delay is None:
            ast_id = next(
                (
                    e.id
                    for m in local.media
                    if m.kind == "video"
                    for e in m.rtp.headerExtensions
                    if e.uri == AST_URI
                ),
                None,
            )
            if ast_id is not None:
                self.uplink_delay = UplinkDelay(ast_id, self._initial_bps)
        added, removed = [], []
        wanted = {s.mid: s for s in specs}
        for mid in list(self.tracks):
            old = self.tracks[mid]
            spec = wanted.get(mid)
            if spec is None or (spec.source, spec.layer) != (old.source, old.layer):
                removed.append(self._drop(mid))
        for spec in specs:
            if spec.mid in self.tracks:
                continue
            up = self._make_uptrack(spec, media_by_mid[spec.mid], answered.get(spec.mid))
            if up is not None:
                self.tracks[spec.mid] = up
                added.append(up)
        self._install_hooks()
        if self._rtcp_task is None:
            self._rtcp_task = asyncio.ensure_future(self._rtcp_loop())
        self._on_tracks(added, removed)
        return enable_opus_fec(pc.localDescription.sdp)

    def _make_uptrack(self, spec: TrackSpec, offered, answered) -> UpTrack | None:
        if answered is None or answered.port == 0 or not answered.rtp.codecs:
            return None
        primary = next(
            (c for c in answered.rtp.codecs if c.mimeType.lower() in CODEC_OF_MIME), None
        )
        if primary is None:
            raise SignallingError(
                "bad_sdp", f"mid {spec.mid}: no supported codec (H.264, VP8 or Opus) was offered"
            )
        rtx_pt = next(
            (
                c.payloadType
                for c in answered.rtp.codecs
                if c.mimeType.lower().endswith("/rtx")
                and c.parameters.get("apt") == primary.payloadType
            ),
            None,
        )
        ssrc = offered.ssrc[0].ssrc
        rtx_ssrc = None
        for group in offered.ssrc_group:
            if group.semantic == "FID" and len(group.items) == 2:
                ssrc, rtx_ssrc = int(group.items[0]), int(group.items[1])
        up = UpTrack(
            track_id=f"{self.track_prefix}/{spec.source}/{spec.layer}",
            source=spec.source,
            layer=spec.layer,
            kind=spec.kind,
            codec=CODEC_OF_MIME[primary.mimeType.lower()],
            clock_rate=primary.clockRate,
            ssrc=ssrc,
            payload_type=primary.payloadType,
            rtx_ssrc=rtx_ssrc,
            rtx_payload_type=rtx_pt,
            request_keyframe=self._send_pli,
            request_nack=self._nacks.add,
            label=spec.label,
            on_wanted=self._wanted,
            configured_bps=spec.bitrate_bps,
        )
        self._by_ssrc[ssrc] = up
        if rtx_ssrc is not None:
            self._by_rtx_ssrc[rtx_ssrc] = up
        return up

    def _drop(self, mid: str) -> UpTrack:
        up = self.tracks.pop(mid)
        self._by_ssrc.pop(up.ssrc, None)
        if up.rtx_ssrc is not None:
            self._by_rtx_ssrc.pop(up.rtx_ssrc, None)
        self._last_report.pop(up, None)
        self._loss_mark.pop(up, None)
        up.close()
        return up

    def unpublish(self, mids: list[str]) -> list[UpTrack]:
        removed = [self._drop(mid) for mid in mids if mid in self.tracks]
        if removed:
            self._on_tracks([], removed)
        return removed

    # -- packet path ------------------------------------------------------------------

    def _install_hooks(self) -> None:
        assert self.pc is not None
        transceivers = self.pc.getTransceivers()
        if not transceivers:
            return
        dtls = rtc_internals.dtls_of(transceivers[0])
        if self.wire is not None and self.wire.dtls is dtls:
            return
        self.wire = Wire(dtls)
        by_ssrc, by_rtx = self._by_ssrc, self._by_rtx_ssrc
        perf_ns = time.perf_counter_ns
        loop = asyncio.get_running_loop()

        def route(data: bytes, arrival_ns: int) -> None:
            ssrc = int.from_bytes(data[8:12], "big")
            up = by_ssrc.get(ssrc)
            if up is not None:
                up.on_rtp(data, arrival_ns)
                # Read per packet, not once here: a publisher whose first offer had no
                # video gets its delay reading with the renegotiation that adds it,
                # and these hooks stay those of the first negotiation.
                delay = self.uplink_delay
                if delay is not None and up.video and delay.add(data, arrival_ns):
                    # The first packet since the last report: report in REPORT_S, as
                    # transport-cc feedback would, outside the packet path.
                    loop.call_later(REPORT_S, self._delay_report)
                return
            up = by_rtx.get(ssrc)
            if up is not None:
                up.on_rtx(data, arrival_ns)

        def on_srtp(data: bytes) -> bool:
            # SRTP straight from the socket callback: no queue, no task switch, and
            # the arrival time is the real one.
            rx = rtc_internals.srtp_sessions(dtls)[0]
            if rx is None:
                return False
            arrival = perf_ns()
            try:
                plain = rx.unprotect(data)
            except Exception:
                self.stats.srtp_errors += 1
                return True
            route(plain, arrival)
            return True

        def on_rtp(data: bytes) -> None:
            if len(data) >= 12:
                route(data, perf_ns())

        def on_rtcp(data: bytes) -> None:
            try:
                packets = RtcpPacket.parse(data)
            except ValueError:
                return
            for packet in packets:
                if isinstance(packet, RtcpSrPacket):
                    up = by_ssrc.get(packet.ssrc)
                    if up is not None:
                        info = packet.sender_info
                        up.on_sender_report(info.ntp_timestamp, info.rtp_timestamp)

        rtc_internals.hook_ingress(dtls, on_srtp=on_srtp, on_rtp=on_rtp, on_rtcp=on_rtcp)

    # -- RTCP to the publisher -----------------------------------------------------------

    def _send_pli(self, up: UpTrack) -> None:
        if self.wire is not None:
            self.wire.send_rtcp(
                bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self._rtcp_ssrc, media_ssrc=up.ssrc))
            )

    def _send_nack(self, up: UpTrack) -> None:
        seqs = up.take_nacks()
        if seqs and self.wire is not None:
            up.stats.nacks_sent += 1
            self.wire.send_rtcp(nack_packet(self._rtcp_ssrc, up.ssrc, seqs))

    async def _rtcp_loop(self) -> None:
        """Receiver reports, REMB, and NACK retries for losses not yet repaired."""
        while True:
            await asyncio.sleep(RTCP_INTERVAL_S)
            if self.wire is None or not self.wire.ready or not self.tracks:
                continue
            reports = []
            for up in self.tracks.values():
                if up.highest_seq is None:
                    continue
                if up.missing:
                    self._send_nack(up)
                prev_expected, prev_lost = self._last_report.get(up, (up.stats.packets, 0))
                expected = up.stats.packets + up.stats.lost
                interval_expected = max(1, expected - prev_expected)
                interval_lost = max(0, up.stats.lost - up.stats.recovered - prev_lost)
                self._last_report[up] = (expected, up.stats.lost - up.stats.recovered)
                clock = up.sender_clock
                reports.append(
                    RtcpReceiverInfo(
                        ssrc=up.ssrc,
                        fraction_lost=min(255, interval_lost * 256 // interval_expected),
                        packets_lost=max(0, up.stats.lost - up.stats.recovered),
                        highest_sequence=up.highest_seq,
                        jitter=0,
                        lsr=(clock.ntp >> 16) & 0xFFFFFFFF if clock.known else 0,
                        dlsr=int((time.time() - clock.local) * 65536) if clock.known else 0,
                    )
                )
            if not reports:
                continue
            self._measure_uplink()
            await self._feedback()
            packet = bytes(RtcpRrPacket(ssrc=self._rtcp_ssrc, reports=reports[:31]))
            video = [up.ssrc for up in self.tracks.values() if up.video]
            if video:
                packet += bytes(
                    RtcpPsfbPacket(
                        fmt=RTCP_PSFB_APP,
                        ssrc=self._rtcp_ssrc,
                        media_ssrc=0,
                        fci=pack_remb_fci(self.uplink_bps(), video),
                    )
                )
            self.wire.send_rtcp(packet)

    # -- what the publisher hears back -----------------------------------------------------

    def _delay_report(self) -> None:
        delay = self.uplink_delay
        rtt_s = (self._round_trip_ms() or 100.0) / 1000
        if delay is not None and delay.report(self.uplink, time.monotonic(), rtt_s):
            self._feedback_now()  # a queue on the uplink: not at the next second

    def describe_uplink(self) -> dict[str, Any]:
        """The uplink as we read it (for /api/stats and the benchmarks)."""
        delay = self.uplink_delay.estimate if self.uplink_delay is not None else None
        return {
            "estimate_bps": self.uplink_bps(),
            "received_bps": int(self.uplink.sent_bps),
            "loss": round(self.uplink.loss, 4),
            "delay_usage": delay.usage.value if delay is not None else None,
            "queue_ms": round(delay.queue_ms, 1) if delay is not None else None,
            # Video packets the delay reading took in (0: the publisher sends no
            # abs-send-time, or no video yet), and its latest cuts (at most 8 kept).
            "delay_packets": delay.received if delay is not None else 0,
            "recent_cuts": len(delay.cuts) if delay is not None else 0,
        }

    def uplink_bps(self) -> int:
        return self.uplink.estimate(time.monotonic()).bps

    def _measure_uplink(self) -> None:
        """Loss on the way in (before repair) drives the publisher's uplink estimate."""
        expected = lost = video = 0
        for up in self.tracks.values():
            before = self._loss_mark.get(up, (up.stats.packets + up.stats.lost, up.stats.lost))
            mark = (up.stats.packets + up.stats.lost, up.stats.lost)
            self._loss_mark[up] = mark
            expected += mark[0] - before[0]
            lost += mark[1] - before[1]
            if up.video:
                video += mark[0] - before[0]
        now = time.monotonic()
        self.uplink.sent_bps = sum(up.bitrate_bps(now) for up in self.tracks.values())
        # The estimate is the cameras' budget, and only their packets measure it: with
        # every camera idle (nobody receives it) a clean microphone grew it 8 % a second
        # to 1.7 Mbit/s on a 256 kbit/s line, and the camera that resumed at that rate
        # flooded the line until the point's lesson socket dropped (256kbit-10pct).
        if expected > 0 and video > 0:
            if self.uplink_delay is not None:
                self.uplink_delay.on_loss(self.uplink, lost / expected, now)
            else:
                self.uplink.on_loss(lost / expected, now)

    def idle_layers(self) -> list[dict[str, str]]:
        """Video layers nobody receives: the publisher may stop encoding them."""
        return sorted(
            (
                {"source": up.source, "layer": up.layer}
                for up in self.tracks.values()
                if up.video and not up.downtracks
            ),
            key=lambda x: (x["source"], x["layer"]),
        )

    def _wanted(self, up: UpTrack) -> None:
        """A layer nobody received has a receiver again: say so now, not in a second."""
        self._feedback_now()

    def _feedback_now(self) -> None:
        if self._feedback_soon:
            return
        self._feedback_soon = True
        asyncio.get_running_loop().create_task(self._feedback())

    async def _feedback(self) -> None:
        self._feedback_soon = False
        if self._send_json is None or not self.tracks:
            return
        bps, idle = self.uplink_bps(), self.idle_layers()
        last = self._feedback_sent
        if last is not None and last[1] == idle and abs(bps - last[0]) <= 0.1 * last[0]:
            return
        self._feedback_sent = (bps, idle)
        try:
            await self._send_json({"type": "publish_feedback", "bitrate_bps": bps, "idle": idle})
        except ConnectionError:
            pass

    async def close(self) -> None:
        if self._rtcp_task is not None:
            self._rtcp_task.cancel()
            self._rtcp_task = None
        for mid in list(self.tracks):
            self._drop(mid)
        if self.wire is not None:
            self.wire.invalidate()
        if self.pc is not None:
            pc, self.pc = self.pc, None
            await pc.close()
