"""One subscription's I/O: a source's packets, rewritten, into one packet sink.

The Forwarder decides what is sent as which sequence number and timestamp; the DownTrack
writes it: a fresh 12-byte header (our SSRC and payload type), our own extension block
(mid, abs-send-time stamped at send time), the publisher's payload bytes, into its sink
(the SRTP wire to a subscriber, a recorder, a relay). It answers the receiver's RTCP:
NACKs from the publisher's cache, PLI/FIR as throttled keyframe requests upstream, REMB
and receiver reports into its statistics. It generates the sender reports, translated
from the publisher's NTP/RTP mapping so that receivers keep lip sync.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)

from media_server.estimator import DownlinkEstimator
from media_server.forwarder import DROP, Forwarder
from media_server.keyframes import KeyframeGate, overtaken
from media_server.pacer import Pacer, PriorityLane
from media_server.rtpbytes import HEADER, abs_send_time, payload_bounds
from media_server.sink import PacketSink
from media_server.source import MediaSource
from media_server.uptrack import UpTrack

log = logging.getLogger(__name__)

NTP_FRACTION = float(1 << 32)
DEFAULT_RTT_S = 0.1
RESENT_MEMORY = 1024
NACKED_KEPT = 2048  # a retest's packets: ~2.5 s at up to 800 packets/s
# A padding-only payload (RFC 3550 5.1): its last byte says how many bytes to drop.
PADDING = bytes(239) + bytes([240])
# Behind the last packet of a frame on a sparse stream (see DownTrack.tail_padding): the
# least padding there is, its own count.
TAIL_PADDING = bytes([1])
# A probe packet's size in RTP bytes: as large as the media it stands for. A rural
# modem's queue is counted in bytes, and a drop-tail queue short of room for a 1.2 kB
# video packet still takes a small one, so 280-byte probes lose less than media at
# their rate would (256kbit-10pct, agent: a retest padding to 280 kbit/s passed, and
# the teacher's 180p it let in stood still under "live"). RTP padding holds at most
# 255 bytes, so the rest is extension-block padding (RFC 8285 4.2: zero bytes, which
# every receiver skips), and the payload is padding only, as before.
PROBE_PACKET_BYTES = 1200
# One subscriber's repair keyframe requests (PLI/FIR, unrepairable loss): at most one a
# second, backing off to one every 4 s while it keeps asking soon after being served.
REPAIR_INTERVAL_S = 1.0
REPAIR_BACKOFF_MAX_S = 4.0


class RepairBudget:
    """How many bytes of retransmissions a subscriber may receive: a share of its estimate.

    A NACK storm on a lossy 1 Mbit/s line must not crowd out the lesson itself; past the
    budget, a loss is left to the keyframe that repairs it.
    """

    SHARE = 0.2
    WINDOW_S = 0.5

    def __init__(self, estimate_bps: int) -> None:
        self._rate = 0.0
        self._tokens = 0.0
        self._last = time.monotonic()
        self.refused = 0
        self.set_rate(estimate_bps)

    def set_rate(self, estimate_bps: int) -> None:
        self._rate = estimate_bps * self.SHARE / 8

    def take(self, size: int) -> bool:
        now = time.monotonic()
        cap = self._rate * self.WINDOW_S
        self._tokens = min(cap, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < size:
            self.refused += 1
            return False
        self._tokens -= size
        return True


@dataclass
class DownTrackStats:
    packets: int = 0
    octets: int = 0
    nacks: int = 0
    # Sequence numbers first reported lost (a receiver repeats what is still missing
    # in each NACK it sends; only numbers past the highest reported so far count).
    nacked: int = 0
    retransmitted: int = 0
    # Payload octets sent besides the media: retransmissions and padding (what the
    # link carried too, when an overflow is read).
    extra_octets: int = 0
    retransmit_refused: int = 0  # not cached, too soon after the last resend, or over budget
    probes: int = 0  # packets sent only to probe the link's headroom
    keyframe_requests: int = 0  # PLI/FIR from the receiver
    keyframes_asked: int = 0  # sent upstream for this receiver: its joins, switches, repairs
    fraction_lost: float = 0.0
    reports: int = 0  # receiver reports about this track
    # Over the sequence numbers the latest receiver report covers (since the one before):
    # how many, and how many of them the receiver NACKed (lost before our repairs).
    report_packets: int = 0
    report_nacked: int = 0
    # How long before the latest report the one before it came (0: none before): the
    # span of sending its numbers cover.
    report_span_s: float = 0.0
    jitter: int = 0
    rtt_ms: float | None = None
    remb_bps: int | None = None


def _probe_extension_block(head: bytes) -> tuple[bytes, bytes]:
    """A probe's extension block: ours (opened by `head`, see _extension_block; an
    empty one where we have none) grown with zero padding up to PROBE_PACKET_BYTES.

    Returns (head, fill): head replaces ours (its word count grown; the elements after
    it stay where the pacer reads them), fill closes the grown block.
    """
    words = int.from_bytes(head[2:4], "big") if head else 0
    fill_words = (PROBE_PACKET_BYTES - 12 - 4 * (1 + words) - len(TAIL_PADDING)) // 4
    grown = b"\xbe\xde" + (words + fill_words).to_bytes(2, "big") + head[4:]
    return grown, bytes(4 * fill_words)


def _extension_block(
    mid: str, mid_id: int | None, ast_id: int | None, tcc_id: int | None = None
) -> tuple[bytes, bytes, bytes]:
    """Our one-byte-header extension block, split around the variable bytes.

    Returns (head, middle, pad): head ends where the 2 transport-wide sequence bytes go
    (when `tcc_id` is set, its element comes first, at a fixed offset the pacer reads),
    middle ends where the 3 abs-send-time bytes go, pad closes the block.
    """
    elems = b""
    if mid_id:
        raw = mid.encode()
        elems += bytes([(mid_id << 4) | (len(raw) - 1)]) + raw
    if ast_id:
        elems += bytes([(ast_id << 4) | 2])
    tcc = bytes([(tcc_id << 4) | 1]) if tcc_id else b""
    if not elems and not tcc:
        return b"", b"", b""
    body_len = len(tcc) + (2 if tcc else 0) + len(elems) + (3 if ast_id else 0)
    pad = (-body_len) % 4
    words = (body_len + pad) // 4
    head = b"\xbe\xde" + words.to_bytes(2, "big") + tcc
    return head, elems, b"\x00" * pad


class DownTrack:
    def __init__(
        self,
        *,
        sink: PacketSink,
        ssrc: int,
        payload_type: int,
        mid: str = "",
        mid_ext_id: int | None = None,
        ast_ext_id: int | None = None,
        estimator: DownlinkEstimator | None = None,
        repair: RepairBudget | None = None,
        tcc_ext_id: int | None = None,
        transport_seq: Iterator[int] | None = None,
        red: tuple[int, int] | None = None,
        first: bool = False,
    ) -> None:
        self.sink = sink
        # Behind a pacer, the hot path takes its fast path in line (media_server/pacer.py)
        # and hands the packet to the pacer's own sink; `_out` is where it goes. Its
        # `send_rtp` is looked up per packet: a Wire swaps its own (media_server/wire.py).
        self._pacer: Pacer | None = None
        self._priority = False  # the pacer's audio lane: never queued
        if isinstance(sink, PriorityLane):
            self._pacer, self._priority = sink.pacer, True
        elif isinstance(sink, Pacer):
            self._pacer = sink
        self._out: PacketSink = self._pacer.sink if self._pacer is not None else sink
        # Served before the other DownTracks of each packet (a relay to another node):
        # the edge's whole audience waits on this one copy, so it must not queue behind
        # a local burst to dozens of subscribers.
        self.first = first
        self.estimator = estimator
        self.repair = repair
        self.loss_fresh = False  # a receiver report arrived since the control loop looked
        self._resent: dict[int, float] = {}  # out seq -> when we last resent it
        # The latest sequence numbers NACKed, each once: a retest's verdict counts what
        # the line lost of its own packets (media_server/bandwidth.py).
        self.nacked_seqs: deque[int] = deque()
        self._nacked_set: set[int] = set()
        self._reported_top: int | None = None  # the highest number the receiver reported
        self._reported_at: float | None = None  # when that report came
        # Set by the subscriber's control loop on a sparse stream over a lossy line: a
        # tiny padding packet follows each frame's last one, so a lost last packet shows
        # as a gap at once, not only with the next frame. A 3 fps courseware's lost tail
        # waited 333 ms more for its NACK, and with one more round trip the picture
        # stood still for a second, three times a minute (1mbit-5pct-300ms, agent).
        self.tail_padding = False
        self.mid = mid
        self.ssrc = ssrc
        self.payload_type = payload_type
        # RED (RFC 2198) towards a browser that accepted it: (RED PT, Opus PT inside).
        self._red_pt = red[1] if red is not None else -1
        if red is not None:
            self.payload_type = red[0]
        self._red_prev: tuple[int, bytes] | None = None  # (out timestamp, payload)
        # Transport-wide sequence numbers are counted across the subscriber's streams.
        self._tcc = transport_seq if tcc_ext_id and transport_seq is not None else None
        self._ext_head, self._ext_mid, self._ext_pad = _extension_block(
            mid, mid_ext_id, ast_ext_id, tcc_ext_id if self._tcc is not None else None
        )
        self._ext_prefix = self._ext_head + self._ext_mid
        self._has_ast = ast_ext_id is not None
        self._b0 = 0x90 if self._ext_prefix else 0x80
        self._probe_head, self._probe_fill = _probe_extension_block(self._ext_head)
        # Our header and extension block in one pack (the forwarding path and _write):
        # our 12 bytes, the block up to abs-send-time, its 3 bytes (0 wide when not
        # negotiated: the value is then dropped), the zero padding.
        self._head = struct.Struct(
            f"!BBHII{len(self._ext_prefix)}s{3 if self._has_ast else 0}s{len(self._ext_pad)}x"
        )
        # The same with the transport-wide number between the block's head and the rest.
        self._tcc_head = struct.Struct(
            f"!BBHII{len(self._ext_head)}sH{len(self._ext_mid)}s"
            f"{3 if self._has_ast else 0}s{len(self._ext_pad)}x"
        )
        self.forwarder = Forwarder(seed=ssrc)
        self.source: MediaSource | None = None
        self.stats = DownTrackStats()
        self._reports_sent: dict[int, float] = {}  # LSR value -> when we sent that SR
        self._repair_gate = KeyframeGate(REPAIR_INTERVAL_S, backoff_max_s=REPAIR_BACKOFF_MAX_S)
        self._repair_deferred: asyncio.TimerHandle | None = None
        self._repair_asked_at = 0.0

    # -- what to forward ----------------------------------------------------------------

    @property
    def current(self) -> UpTrack | None:
        return self.forwarder.current  # type: ignore[return-value]

    @property
    def target(self) -> UpTrack | None:
        return self.forwarder.target  # type: ignore[return-value]

    @property
    def paused(self) -> bool:
        return self.forwarder.paused

    def bind(self, source: MediaSource | None) -> None:
        """Carry `source` from its next keyframe on (None: go idle)."""
        self._detach_all()
        self.forwarder.current = self.forwarder.target = None
        self.source = source
        self.reselect()

    def set_max_layer(self, layer: str | None) -> None:
        """The subscriber's own ceiling (set_subscription)."""
        self.forwarder.pinned = layer
        self.reselect()

    def set_paused(self, paused: bool) -> None:
        """Paused by the subscriber (set_subscription)."""
        self.forwarder.paused_by_user = paused
        self.reselect()

    def allocate(self, layer: str | None, paused: bool) -> None:
        """The allocator's decision: a layer ceiling, or paused for bandwidth."""
        fwd = self.forwarder
        if fwd.allocated == layer and fwd.paused_by_allocator == paused:
            return
        fwd.allocated = layer
        fwd.paused_by_allocator = paused
        self.reselect()

    def reselect(self) -> None:
        """Re-apply the wanted layer after the source, a ceiling or a pause changed."""
        fwd = self.forwarder
        best = self.source.best_layer(fwd.ceiling) if self.source is not None else None
        old = (fwd.current, fwd.target)
        need_key = fwd.retarget(best)
        for up in old:
            if up is not None and up is not fwd.current and up is not fwd.target:
                up.detach(self)  # type: ignore[attr-defined]
        if fwd.target is not None:
            fwd.target.attach(self)  # type: ignore[attr-defined]
        if need_key and best is not None and best.video:
            self.stats.keyframes_asked += 1
            best.request_keyframe(urgent=True)

    def _detach_all(self) -> None:
        for up in (self.forwarder.current, self.forwarder.target):
            if up is not None:
                up.detach(self)  # type: ignore[attr-defined]

    def source_closed(self, up: UpTrack) -> None:
        self.forwarder.layer_closed(up)
        if self.source is not None:
            self.source.layers = {k: v for k, v in self.source.layers.items() if v is not up}
            self.reselect()

    # -- hot path -----------------------------------------------------------------------

    def forward(
        self, up: UpTrack, payload: bytes, marker: int, seq: int, ts: int, key: bool, ast: bytes
    ) -> None:
        fwd = self.forwarder
        if up is fwd.current:
            oseq, ots = fwd.translate_current(up, seq, ts)
        else:
            previous = fwd.current
            out = fwd.translate(up, seq, ts, key)
            if out is None:
                return
            oseq, ots = out
            if previous is not None:
                previous.detach(self)  # type: ignore[attr-defined]  # switched at this keyframe
        if self._red_pt >= 0:
            payload = self._red_wrap(ots, payload)
        stats = self.stats
        stats.packets += 1
        stats.octets += len(payload)
        # _write and the pacer's fast path, in line: this runs once per packet per
        # subscriber, and each call saved here is a few per cent of the server's cost.
        if self._tcc is not None:
            tseq = next(self._tcc) & 0xFFFF
            packet = (
                self._tcc_head.pack(
                    self._b0,
                    marker | self.payload_type,
                    oseq,
                    ots,
                    self.ssrc,
                    self._ext_head,
                    tseq,
                    self._ext_mid,
                    ast,
                )
                + payload
            )
        else:
            tseq = -1
            packet = (
                self._head.pack(
                    self._b0,
                    marker | self.payload_type,
                    oseq,
                    ots,
                    self.ssrc,
                    self._ext_prefix,
                    ast,
                )
                + payload
            )
        pacer = self._pacer
        if pacer is None:
            self._out.send_rtp(packet)
        elif self._priority or (pacer.open and pacer.tokens >= len(packet)):
            # Pacer.send_rtp_now, or Pacer.send_rtp's first case, without the call.
            size = len(packet)
            pacer.tokens -= size
            history = pacer.history
            if history is not None and tseq >= 0:
                history.note(tseq, size, time.monotonic())
            self._out.send_rtp(packet)
        else:
            pacer.send_rtp(packet)
        if marker and self.tail_padding:
            self._pad_tail()

    def _pad_tail(self) -> None:
        out = self.forwarder.pad()
        if out is None:
            return
        self._write(0, out[0], out[1], abs_send_time(time.time()), TAIL_PADDING, padded=True)
        self.stats.probes += 1
        self.stats.extra_octets += len(TAIL_PADDING)

    def _red_wrap(self, ots: int, payload: bytes) -> bytes:
        """This Opus payload, after a copy of the previous one (RFC 2198, 4-byte header)."""
        prev, self._red_prev = self._red_prev, (ots, payload)
        pt = self._red_pt
        if prev is not None:
            offset = (ots - prev[0]) & 0xFFFFFFFF
            size = len(prev[1])
            # The format carries 14 bits of offset and 10 of length; a gap (pause,
            # publisher change) or a large packet goes without its copy.
            if 0 < offset < 0x4000 and size < 0x400:
                header = bytes(
                    (0x80 | pt, offset >> 6, ((offset & 0x3F) << 2) | (size >> 8), size & 0xFF, pt)
                )
                return b"".join((header, prev[1], payload))
        return bytes((pt,)) + payload

    def _write(
        self, marker: int, oseq: int, ots: int, ast: bytes, payload: bytes, padded: bool = False
    ) -> None:
        """Our header, our extension block (abs-send-time `ast`), the publisher's payload."""
        b0 = self._b0 | 0x20 if padded else self._b0
        if self._tcc is not None:
            self.sink.send_rtp(
                self._tcc_head.pack(
                    b0,
                    marker | self.payload_type,
                    oseq,
                    ots,
                    self.ssrc,
                    self._ext_head,
                    next(self._tcc) & 0xFFFF,
                    self._ext_mid,
                    ast,
                )
                + payload
            )
            return
        self.sink.send_rtp(
            self._head.pack(
                b0, marker | self.payload_type, oseq, ots, self.ssrc, self._ext_prefix, ast
            )
            + payload
        )

    # -- RTCP from the receiver -----------------------------------------------------------

    async def _handle_rtcp_packet(self, packet: object) -> None:
        self.on_rtcp(packet)

    def on_rtcp(self, packet: object) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            self.stats.nacks += 1
            for oseq in packet.lost:
                if oseq not in self._nacked_set:
                    # Asks repeated, or late after a later one (a NACK lost on the
                    # receiver's uplink is sent again): counted once. Counting only
                    # numbers past the highest missed those, and a flood at connect read
                    # 10 % less lost than it was.
                    self.stats.nacked += 1
                    if len(self.nacked_seqs) >= NACKED_KEPT:
                        self._nacked_set.discard(self.nacked_seqs.popleft())
                    self.nacked_seqs.append(oseq)
                    self._nacked_set.add(oseq)
                self.retransmit(oseq)
        elif isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self.stats.keyframe_requests += 1
                self.request_keyframe()
            elif packet.fmt == RTCP_PSFB_APP:
                try:
                    bps, ssrcs = unpack_remb_fci(packet.fci)
                except ValueError:
                    return
                self.stats.remb_bps = bps
                # aiortc hands a REMB to every sender it lists; the first one reports it.
                if self.estimator is not None and (not ssrcs or ssrcs[0] == self.ssrc):
                    self.estimator.on_remb(bps, ssrcs or [self.ssrc], time.monotonic())
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc != self.ssrc:
                    continue
                self.stats.fraction_lost = report.fraction_lost / 256
                self.stats.jitter = report.jitter
                self.stats.reports += 1
                self.loss_fresh = True
                self._note_reported(report.highest_sequence & 0xFFFF)
                sent_at = self._reports_sent.get(report.lsr)
                if sent_at is not None:
                    rtt = time.monotonic() - sent_at - report.dlsr / 65536
                    self.stats.rtt_ms = max(0.0, rtt * 1000)
                    if self.estimator is not None:
                        self.estimator.on_rtt(self.stats.rtt_ms)

    def request_keyframe(self) -> None:
        """The receiver needs a keyframe to repair its picture (PLI/FIR, lost packets).

        Within this subscriber's repair gate: a request that must wait is deferred, and
        one that a keyframe overtakes meanwhile is not sent.
        """
        if self._repair_deferred is not None:
            return
        now = time.monotonic()
        self._repair_asked_at = now
        wait = self._repair_gate.wait(now, float("-inf"))
        if wait <= 0:
            self._send_repair(deferred=False)
            return
        self._repair_deferred = asyncio.get_running_loop().call_later(wait, self._send_repair, True)

    def _send_repair(self, deferred: bool) -> None:
        self._repair_deferred = None
        up = self.forwarder.target or self.forwarder.current
        if up is None:
            return
        if deferred and overtaken(self._repair_asked_at, up.last_keyframe_at):  # type: ignore[attr-defined]
            return
        self._repair_gate.sent(time.monotonic())
        self.stats.keyframes_asked += 1
        up.request_keyframe()  # type: ignore[attr-defined]

    def retransmit(self, oseq: int) -> bool:
        """Resend what went out as `oseq`, from the publisher's cache; never another packet.

        At most once per round trip per packet, within the repair budget; a loss the
        cache cannot repair asks the publisher for a keyframe (throttled upstream).
        """
        oseq &= 0xFFFF
        up = self.current
        if self.forwarder.padded(oseq):
            # A probe's padding: a receiver waits for every number before the next frame.
            if self.repair is not None and not self.repair.take(len(PADDING)):
                self.stats.retransmit_refused += 1
                return False
            out_ts = self.forwarder.last_ts
            self._write(0, oseq, out_ts, abs_send_time(time.time()), PADDING, padded=True)
            self.stats.retransmitted += 1
            self.stats.extra_octets += len(PADDING)
            return True
        seq = self.forwarder.source_seq(oseq)
        data = up.packet(seq) if up is not None and seq != DROP else None
        if data is None:
            self.stats.retransmit_refused += 1
            # Lost for good (not cached, and not still being recovered upstream): only
            # a keyframe repairs the picture now.
            if up is not None and up.video and (seq == DROP or seq not in up.missing):
                self.request_keyframe()
            return False
        now = time.monotonic()
        rtt_s = (self.stats.rtt_ms / 1000) if self.stats.rtt_ms else DEFAULT_RTT_S
        last = self._resent.get(oseq)
        if last is not None and now - last < rtt_s:
            self.stats.retransmit_refused += 1
            return False
        if self.repair is not None and not self.repair.take(len(data)):
            self.stats.retransmit_refused += 1
            return False
        if len(self._resent) >= RESENT_MEMORY:
            for old in list(self._resent)[: RESENT_MEMORY // 2]:
                del self._resent[old]
        self._resent[oseq] = now
        try:
            start, end = payload_bounds(data)
        except ValueError:
            return False
        ts = int.from_bytes(data[4:8], "big")
        payload = data[start:end]
        if self._red_pt >= 0:
            payload = bytes((self._red_pt,)) + payload
        self._write(
            data[1] & 0x80,
            oseq,
            (ts + self.forwarder.timestamp_offset()) & 0xFFFFFFFF,
            abs_send_time(time.time()),
            payload,
        )
        self.stats.retransmitted += 1
        self.stats.extra_octets += len(payload)
        return True

    # -- probes -----------------------------------------------------------------------------

    def probe(self) -> int:
        """Fill the link a little, for a bandwidth probe; returns the bytes sent (0: none).

        A padding-only packet takes the next sequence number, paused or forwarding: a
        repeated packet would be a replay to the receiver's SRTP, dropped before its
        transport-wide number is counted, and the probe would read as lost. Never inside
        a frame (a publisher's frame may arrive over several loop turns): Chromium
        assembles an H.264 frame only from packets with consecutive numbers, so a probe
        between two of its packets left the frame, and every frame after it, undecodable
        until the next keyframe (1-3 s without a picture, and no PLI for 3 s).
        """
        if self.source is None or self.source.kind != "video":
            return 0
        current = self.current
        if current is not None and current.mid_frame:
            return 0
        out = self.forwarder.pad()
        if out is None:
            return 0
        ast = abs_send_time(time.time())
        packet = b"".join(
            (
                HEADER.pack(0xB0, self.payload_type, out[0], out[1], self.ssrc),
                self._probe_head,
                b"" if self._tcc is None else (next(self._tcc) & 0xFFFF).to_bytes(2, "big"),
                self._ext_mid,
                ast if self._has_ast else b"",
                self._ext_pad,
                self._probe_fill,
                TAIL_PADDING,
            )
        )
        self.sink.send_rtp(packet)
        self.stats.probes += 1
        self.stats.extra_octets += len(self._probe_fill) + len(TAIL_PADDING)
        return len(packet)

    def _note_reported(self, top: int) -> None:
        """A receiver report reached `top`: what the line lost of the numbers since the
        last one's, as NACKed. A report's own count takes repaired packets as received."""
        last, self._reported_top = self._reported_top, top
        now = time.monotonic()
        then, self._reported_at = self._reported_at, now
        self.stats.report_span_s = 0.0 if then is None else now - then
        self.stats.report_packets = self.stats.report_nacked = 0
        if last is None:
            return
        span = (top - last) & 0xFFFF
        if 0 < span < 0x8000:
            self.stats.report_packets = span
            self.stats.report_nacked = self.nacked_between((last + 1) & 0xFFFF, (top + 1) & 0xFFFF)

    def next_seq(self) -> int:
        """The sequence number the next packet out will take."""
        return (self.forwarder.last_seq + 1) & 0xFFFF

    def nacked_between(self, first: int, end: int) -> int:
        """How many sequence numbers from `first` up to `end` (not included) were NACKed."""
        span = (end - first) & 0xFFFF
        return sum(1 for seq in self.nacked_seqs if (seq - first) & 0xFFFF < span)

    # -- sender reports -------------------------------------------------------------------

    def sender_report(self) -> bytes | None:
        """An SR whose NTP/RTP pair is the publisher's, translated into our timestamps.

        Audio and video of one publisher share its NTP clock, so a browser that lines
        them up by these reports keeps lip sync; our own clock never enters.
        """
        up = self.current
        if up is None or not up.sender_clock.known or self.forwarder.last_seq < 0:
            return None
        clock = up.sender_clock
        elapsed = time.time() - clock.local
        ntp = clock.ntp + int(elapsed * NTP_FRACTION)
        rtp = (
            clock.rtp + int(elapsed * up.clock_rate) + self.forwarder.timestamp_offset()
        ) & 0xFFFFFFFF
        ntp &= 0xFFFFFFFFFFFFFFFF
        if len(self._reports_sent) > 8:
            self._reports_sent.pop(next(iter(self._reports_sent)))
        self._reports_sent[(ntp >> 16) & 0xFFFFFFFF] = time.monotonic()
        return bytes(
            RtcpSrPacket(
                ssrc=self.ssrc,
                sender_info=RtcpSenderInfo(
                    ntp_timestamp=ntp,
                    rtp_timestamp=rtp,
                    packet_count=self.stats.packets & 0xFFFFFFFF,
                    octet_count=self.stats.octets & 0xFFFFFFFF,
                ),
            )
        )

    def close(self) -> None:
        if self._repair_deferred is not None:
            self._repair_deferred.cancel()
            self._repair_deferred = None
        self._detach_all()
        self.forwarder.current = self.forwarder.target = None
        self.source = None
