"""One subscription: a source's packets rewritten for one subscriber and sent.

The subscriber sees one continuous stream (one SSRC, contiguous sequence numbers and
timestamps) whatever happens upstream: layer switches, a publisher that reconnects, or
a transceiver re-used for another source. Rewriting is byte-level: a fresh 12-byte
header, our own extension block (mid, abs-send-time), the publisher's payload.
"""

from __future__ import annotations

import logging
import time
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

from media_server.rtpbytes import HEADER, abs_send_time, payload_bounds
from media_server.source import MediaSource
from media_server.uptrack import UpTrack
from media_server.wire import Wire

log = logging.getLogger(__name__)

SEQ_MAP_SIZE = 1024
SEQ_MAP_MASK = SEQ_MAP_SIZE - 1
NTP_FRACTION = float(1 << 32)


@dataclass
class DownTrackStats:
    packets: int = 0
    octets: int = 0
    nacks: int = 0
    retransmitted: int = 0
    keyframe_requests: int = 0
    fraction_lost: float = 0.0
    jitter: int = 0
    rtt_ms: float | None = None
    remb_bps: int | None = None
    layer_switches: int = 0


def _extension_block(mid: str, mid_id: int | None, ast_id: int | None) -> tuple[bytes, bytes]:
    """Split our one-byte-header extension block around the 3 abs-send-time bytes."""
    elems = b""
    if mid_id:
        raw = mid.encode()
        elems += bytes([(mid_id << 4) | (len(raw) - 1)]) + raw
    if ast_id:
        elems += bytes([(ast_id << 4) | 2])
    body_len = len(elems) + (3 if ast_id else 0)
    pad = (-body_len) % 4
    words = (body_len + pad) // 4
    prefix = b"\xbe\xde" + words.to_bytes(2, "big") + elems
    return prefix, b"\x00" * pad


class DownTrack:
    def __init__(
        self,
        *,
        wire: Wire,
        mid: str,
        ssrc: int,
        payload_type: int,
        mid_ext_id: int | None,
        ast_ext_id: int | None,
    ) -> None:
        self.wire = wire
        self.mid = mid
        self.ssrc = ssrc
        self.payload_type = payload_type
        self._ext_prefix, self._ext_pad = _extension_block(mid, mid_ext_id, ast_ext_id)
        self._has_ast = ast_ext_id is not None
        self._b0 = 0x90 if self._ext_prefix else 0x80
        self.source: MediaSource | None = None
        self.current: UpTrack | None = None
        self.target: UpTrack | None = None
        self.max_layer: str | None = None
        self.paused = False
        self.stats = DownTrackStats()
        self._seq_off = 0
        self._ts_off = 0
        self._last_seq = -1  # last sequence number sent, -1 before the first packet
        self._last_ts = 0
        self._last_sent_at = 0.0
        self._reports_sent: dict[int, float] = {}  # LSR value -> when we sent that SR
        self._seq_map = [-1] * SEQ_MAP_SIZE  # out seq -> (layer tag << 16) | in seq
        self._layer_tag = 0

    # -- binding ------------------------------------------------------------------------

    def bind(self, source: MediaSource | None) -> None:
        """Carry `source` from its next keyframe on (None: go idle)."""
        self.unbind()
        self.source = source
        if source is not None:
            self._select_layer()

    def unbind(self) -> None:
        for up in (self.current, self.target):
            if up is not None:
                up.detach(self)
        self.current = self.target = None
        self.source = None

    def set_max_layer(self, layer: str | None) -> None:
        self.max_layer = layer
        self._select_layer()

    def _select_layer(self) -> None:
        if self.source is None:
            return
        best = self.source.best_layer(self.max_layer)
        if best is None or best is self.target:
            return
        if self.target is not None and self.target is not self.current:
            self.target.detach(self)
        self.target = best
        best.attach(self)
        if best is not self.current and best.video:
            self.stats.keyframe_requests += 1
            best.request_keyframe()

    def source_closed(self, up: UpTrack) -> None:
        if up is self.current:
            self.current = None
        if up is self.target:
            self.target = None
        if self.source is not None:
            self.source.layers = {k: v for k, v in self.source.layers.items() if v is not up}
            self._select_layer()

    # -- hot path -----------------------------------------------------------------------

    def forward(
        self, up: UpTrack, payload: bytes, marker: int, seq: int, ts: int, key: bool, ast: bytes
    ) -> None:
        if up is not self.current:
            if up is not self.target or not key:
                return
            self._switch_to(up, seq, ts)
        if self.paused:
            return
        oseq = (seq + self._seq_off) & 0xFFFF
        ots = (ts + self._ts_off) & 0xFFFFFFFF
        self._seq_map[oseq & SEQ_MAP_MASK] = self._layer_tag | seq
        self._write(marker, oseq, ots, ast, payload)
        last = self._last_seq
        if last < 0 or ((oseq - last) & 0xFFFF) < 0x8000:
            self._last_seq = oseq
            self._last_ts = ots
        self.stats.packets += 1
        self.stats.octets += len(payload)

    def _write(self, marker: int, oseq: int, ots: int, ast: bytes, payload: bytes) -> None:
        """Our header, our extension block (abs-send-time `ast`), the publisher's payload."""
        self.wire.send_rtp(
            b"".join(
                (
                    HEADER.pack(self._b0, marker | self.payload_type, oseq, ots, self.ssrc),
                    self._ext_prefix,
                    ast if self._has_ast else b"",
                    self._ext_pad,
                    payload,
                )
            )
        )

    def _switch_to(self, up: UpTrack, seq: int, ts: int) -> None:
        """Start (or move to) `up` at a keyframe, keeping the outgoing stream continuous."""
        previous = self.current
        if previous is not None:
            previous.detach(self)
            self.stats.layer_switches += 1
        if self._last_seq >= 0:
            since = previous.last_packet_at if previous is not None else self._last_sent_at
            elapsed = max(1, int((time.time() - since) * up.clock_rate))
            self._seq_off = (self._last_seq + 1 - seq) & 0xFFFF
            self._ts_off = (self._last_ts + elapsed - ts) & 0xFFFFFFFF
        else:
            self._seq_off = (self.ssrc - seq) & 0xFFFF  # any start is fine; vary it
            self._ts_off = 0
        self._layer_tag = (self._layer_tag + (1 << 16)) & 0x7FFF0000
        self.current = up
        self._last_sent_at = time.time()

    # -- RTCP from the subscriber ---------------------------------------------------------

    async def _handle_rtcp_packet(self, packet: object) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            self.stats.nacks += 1
            for oseq in packet.lost:
                self._retransmit(oseq)
        elif isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self.stats.keyframe_requests += 1
                up = self.target or self.current
                if up is not None:
                    up.request_keyframe()
            elif packet.fmt == RTCP_PSFB_APP:
                try:
                    self.stats.remb_bps = unpack_remb_fci(packet.fci)[0]
                except ValueError:
                    pass
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc != self.ssrc:
                    continue
                self.stats.fraction_lost = report.fraction_lost / 256
                self.stats.jitter = report.jitter
                sent_at = self._reports_sent.get(report.lsr)
                if sent_at is not None:
                    rtt = time.monotonic() - sent_at - report.dlsr / 65536
                    self.stats.rtt_ms = max(0.0, rtt * 1000)

    def _retransmit(self, oseq: int) -> None:
        up = self.current
        entry = self._seq_map[oseq & SEQ_MAP_MASK]
        if up is None or entry < 0 or (entry & 0x7FFF0000) != self._layer_tag:
            return
        data = up.packet(entry & 0xFFFF)
        if data is None:
            return
        try:
            start, end = payload_bounds(data)
        except ValueError:
            return
        ts = int.from_bytes(data[4:8], "big")
        self._write(
            data[1] & 0x80,
            oseq,
            (ts + self._ts_off) & 0xFFFFFFFF,
            abs_send_time(time.time()),
            data[start:end],
        )
        self.stats.retransmitted += 1

    # -- sender reports -------------------------------------------------------------------

    def sender_report(self) -> bytes | None:
        """An SR whose NTP/RTP pair is the publisher's, translated into our timestamps.

        Audio and video of one publisher share its NTP clock, so a browser that lines
        them up by these reports keeps lip sync; our own clock never enters.
        """
        up = self.current
        if up is None or not up.sender_clock.known or self._last_seq < 0:
            return None
        clock = up.sender_clock
        elapsed = time.time() - clock.local
        ntp = clock.ntp + int(elapsed * NTP_FRACTION)
        rtp = (clock.rtp + int(elapsed * up.clock_rate) + self._ts_off) & 0xFFFFFFFF
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
        self.unbind()
        self.wire.invalidate()
