"""One published RTP stream as the SFU sees it: cache, loss detection, fan-out.

An UpTrack never decodes. It keeps the last ~1 s of packets for subscribers' NACKs,
notices gaps and asks the publisher to resend them, remembers the publisher's
NTP/RTP mapping for lip sync, and hands every packet to the DownTracks attached to it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from media_server.keyframes import KeyframeGate, overtaken
from media_server.rtpbytes import (
    HEADER,
    SEQ_TS,
    U16,
    abs_send_time,
    is_keyframe_start,
    payload_bounds,
)

if TYPE_CHECKING:
    from media_server.downtrack import DownTrack

CACHE_SIZE = 2048  # about 1.5 s of a 1.5 Mbit/s video stream at 1200-byte packets
CACHE_MASK = CACHE_SIZE - 1
# A repair (PLI/FIR, unrepairable loss) reaches the publisher at most this often per
# layer, counted from the last request or the last keyframe that arrived; a subscriber
# that must start on this layer (a join, a switch) is served within KEYFRAME_URGENT_S.
KEYFRAME_MIN_INTERVAL_S = 1.0
KEYFRAME_URGENT_S = 0.3
# A layer's keyframes are counted over this window (several GOPs, so that one keyframe
# more or less in it moves the figure little), and over at least KEY_WINDOW_MIN_S.
KEY_WINDOW_S = 10.0
KEY_WINDOW_MIN_S = 4.0
NACK_MAX_AGE = 512  # give up on losses older than this many sequence numbers


@dataclass
class SenderClock:
    """The publisher's last sender report: NTP time, RTP time and when it arrived here."""

    ntp: int = 0
    rtp: int = 0
    local: float = 0.0

    @property
    def known(self) -> bool:
        return self.local > 0


@dataclass
class UpTrackStats:
    packets: int = 0
    bytes: int = 0
    lost: int = 0
    recovered: int = 0
    duplicates: int = 0
    malformed: int = 0
    keyframes: int = 0
    keyframe_bytes: int = 0  # bytes of packets that belong to keyframes
    keyframe_requests: int = 0  # sent to the publisher
    nacks_sent: int = 0


@dataclass
class LatencyHistogram:
    """Time a packet spends inside the SFU, in 50 us buckets up to 100 ms."""

    bucket_us: int = 50
    counts: list[int] = field(default_factory=lambda: [0] * 2001)

    def add_ns(self, ns: int) -> None:
        i = ns // (self.bucket_us * 1000)
        self.counts[i if i < 2000 else 2000] += 1

    def percentile_ms(self, q: float) -> float | None:
        total = sum(self.counts)
        if not total:
            return None
        target = q * total
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= target:
                return (i + 1) * self.bucket_us / 1000
        return None

    def reset(self) -> None:
        self.counts = [0] * 2001


# One histogram per server process: the benchmark and /api/stats read it.
SFU_LATENCY = LatencyHistogram()


class NackBatch:
    """UpTracks that found gaps during this turn of the event loop; `send` NACKs each once
    after it. A burst of packets read in one go may reveal a gap packet by packet: one
    NACK per track per turn asks for all of them together."""

    def __init__(self, send: Callable[[UpTrack], None]) -> None:
        self._send = send
        self._pending: set[UpTrack] = set()

    def add(self, up: UpTrack) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.add(up)

    def _flush(self) -> None:
        pending, self._pending = self._pending, set()
        for up in pending:
            self._send(up)


class UpTrack:
    def __init__(
        self,
        *,
        track_id: str,
        source: str,
        layer: str,
        kind: str,
        codec: str,
        clock_rate: int,
        ssrc: int,
        payload_type: int,
        rtx_ssrc: int | None,
        rtx_payload_type: int | None,
        request_keyframe: Callable[[UpTrack], None],
        request_nack: Callable[[UpTrack], None],
        label: str = "",
        on_wanted: Callable[[UpTrack], None] | None = None,
        configured_bps: int | None = None,
    ) -> None:
        self._on_wanted = on_wanted
        # What the publisher said it encodes this layer at: its cost until measured.
        self.configured_bps = configured_bps
        self.track_id = track_id
        self.label = label
        self.source = source
        self.layer = layer
        self.kind = kind
        self.codec = codec
        self.clock_rate = clock_rate
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.rtx_ssrc = rtx_ssrc
        self.rtx_payload_type = rtx_payload_type
        self.video = kind == "video"
        self.downtracks: list[DownTrack] = []
        self.stats = UpTrackStats()
        self.sender_clock = SenderClock()
        self.missing: dict[int, int] = {}  # seq -> times asked
        self.last_packet_at = 0.0
        self.highest_seq: int | None = None
        # The last packet forwarded did not end its frame (no marker): the rest of the
        # frame is on its way, and a probe must not take a number inside it.
        self.mid_frame = False
        self._cache: list[bytes | None] = [None] * CACHE_SIZE
        self._request_keyframe = request_keyframe
        self._request_nack = request_nack
        self._kf_gate = KeyframeGate(KEYFRAME_MIN_INTERVAL_S, urgent_s=KEYFRAME_URGENT_S)
        self._kf_deferred: asyncio.TimerHandle | None = None
        self._kf_deferred_at = 0.0  # when the deferred request is due
        self._kf_asked_at = 0.0  # when the oldest request it answers was asked
        # When the last keyframe arrived (monotonic) and its RTP timestamp: the packets
        # with that timestamp are the keyframe's.
        self.last_keyframe_at = float("-inf")
        self._key_ts = -1
        self.closed = False
        self._rate_mark = (0.0, 0, 0)  # (when, bytes, keyframe bytes) of the last reading
        self._delta_bps = 0.0  # smoothed rate of everything but keyframes
        self._key_bps = 0.0  # keyframe bytes over the last KEY_WINDOW_S, as a rate
        self._key_marks: deque[tuple[float, int]] = deque()  # (when, keyframe bytes)

    def bitrate_bps(self, now: float) -> int:
        """What this layer costs a receiver (bits/s, smoothed), read from the byte counters.

        The rate of the frames between keyframes, smoothed over a couple of seconds, plus
        the keyframes' bytes spread over the last KEY_WINDOW_S: a keyframe is a burst
        the pacer spreads, not a rise of the layer's rate, and a short window that
        happens to hold one read a 1.2 Mbit/s layer as 1.4-1.5 Mbit/s (the allocator
        then found the teacher's 720p too dear for a 2 Mbit/s point). More keyframes
        (requests) do raise the figure: they are a real cost.

        Called by control loops, never per packet; readings closer than 0.5 s reuse the
        last one. A layer that stops (idle, or its publisher paused it) keeps its last
        rate, which is what it will cost when it comes back.
        """
        when, count, key_count = self._rate_mark
        stats = self.stats
        if when == 0.0:
            self._rate_mark = (now, stats.bytes, stats.keyframe_bytes)
            return int(self._delta_bps + self._key_bps)
        elapsed = now - when
        if elapsed >= 0.5:
            sent = stats.bytes - count
            keys = stats.keyframe_bytes - key_count
            if sent > 0:
                rate = (sent - keys) * 8 / elapsed
                self._delta_bps = (
                    rate if self._delta_bps == 0 else 0.7 * self._delta_bps + 0.3 * rate
                )
                marks = self._key_marks
                if not marks:
                    marks.append((when, key_count))
                marks.append((now, stats.keyframe_bytes))
                while len(marks) > 2 and marks[1][0] <= now - KEY_WINDOW_S:
                    marks.popleft()
                since, base = marks[0]
                span = max(now - since, KEY_WINDOW_MIN_S)
                self._key_bps = (stats.keyframe_bytes - base) * 8 / span
            else:
                self._key_marks.clear()  # the window starts again when the layer does
            self._rate_mark = (now, stats.bytes, stats.keyframe_bytes)
        return int(self._delta_bps + self._key_bps)

    def cost_bps(self, now: float) -> int:
        """What the allocator counts this layer at: its measured rate or, before it was
        ever measured (nobody has received it yet), what its publisher encodes it at."""
        return self.bitrate_bps(now) or self.configured_bps or 0

    def frame_rate(self, window_s: float = 1.0) -> float:
        """Frames per second over the newest `window_s` of media in the packet cache.

        For the ops page and metrics, never per packet: every frame's packets share one
        RTP timestamp, so distinct timestamps within the newest window are its frames.
        0 when the layer is not flowing (nothing arrived for two windows).
        """
        newest = self.highest_seq
        if not self.video or newest is None or time.time() - self.last_packet_at > 2 * window_s:
            return 0.0
        head = self._cache[newest & CACHE_MASK]
        if head is None:
            return 0.0
        top = SEQ_TS.unpack_from(head, 2)[1]
        span = int(window_s * self.clock_rate)
        stamps = set()
        oldest = 0
        for back in range(CACHE_SIZE):
            packet = self._cache[(newest - back) & CACHE_MASK]
            if packet is None or len(packet) < 8:
                break
            age = (top - SEQ_TS.unpack_from(packet, 2)[1]) & 0xFFFFFFFF
            if age > span:
                break
            stamps.add(age)
            oldest = max(oldest, age)
        if len(stamps) < 2 or oldest == 0:
            return 0.0
        return round((len(stamps) - 1) * self.clock_rate / oldest, 1)

    # -- hot path -------------------------------------------------------------------

    def on_rtp(self, data: bytes, arrival_ns: int) -> None:
        try:
            start, end = payload_bounds(data)
        except ValueError:
            self.stats.malformed += 1
            return
        seq, ts = SEQ_TS.unpack_from(data, 2)
        highest = self.highest_seq
        if highest is None:
            self.highest_seq = seq
        else:
            diff = (seq - highest) & 0xFFFF
            if diff == 0:
                self.stats.duplicates += 1
                return
            if diff < 0x8000:
                if diff > 1:
                    self._note_gap(highest, diff)
                self.highest_seq = seq
            else:
                cached = self._cache[seq & CACHE_MASK]
                if cached is not None and cached[2:4] == data[2:4]:
                    self.stats.duplicates += 1
                    return
                if self.missing.pop(seq, None) is not None:
                    self.stats.recovered += 1
        self._cache[seq & CACHE_MASK] = data
        self.stats.packets += 1
        self.stats.bytes += len(data)
        now = time.time()
        self.last_packet_at = now
        key = is_keyframe_start(self.codec, data, start, end) if self.video else True
        if key and self.video:
            self.stats.keyframes += 1
            self._key_ts = ts
            self.last_keyframe_at = time.monotonic()
        if ts == self._key_ts:
            self.stats.keyframe_bytes += len(data)
        downtracks = self.downtracks
        if not downtracks:
            return
        payload = data[start:end]
        marker = data[1] & 0x80
        self.mid_frame = not marker
        ast = abs_send_time(now)
        for dt in downtracks:
            dt.forward(self, payload, marker, seq, ts, key, ast)
        SFU_LATENCY.add_ns(time.perf_counter_ns() - arrival_ns)

    def on_rtx(self, data: bytes, arrival_ns: int) -> None:
        """Unwrap an RFC 4588 retransmission and handle it as the original packet."""
        try:
            start, end = payload_bounds(data)
        except ValueError:
            self.stats.malformed += 1
            return
        if end - start < 2:
            return  # RTX padding-only probe
        osn = U16.unpack_from(data, start)[0]
        header = bytearray(data[:start])
        header[0] &= 0xDF  # the padding, if any, was stripped with the payload bounds
        HEADER.pack_into(
            header,
            0,
            header[0],
            (data[1] & 0x80) | self.payload_type,
            osn,
            SEQ_TS.unpack_from(data, 2)[1],
            self.ssrc,
        )
        self.on_rtp(bytes(header) + data[start + 2 : end], arrival_ns)

    # -- control ----------------------------------------------------------------------

    def _note_gap(self, highest: int, diff: int) -> None:
        lost = min(diff - 1, NACK_MAX_AGE)
        self.stats.lost += diff - 1
        for i in range(1, lost + 1):
            self.missing[(highest + i) & 0xFFFF] = 0
        if len(self.missing) > NACK_MAX_AGE:
            for seq in list(self.missing)[: len(self.missing) - NACK_MAX_AGE]:
                del self.missing[seq]
        self._request_nack(self)

    def take_nacks(self) -> list[int]:
        """Sequence numbers to ask for now; each is asked at most three times."""
        seqs = []
        for seq, asked in list(self.missing.items()):
            if asked >= 3:
                del self.missing[seq]
                continue
            self.missing[seq] = asked + 1
            seqs.append(seq)
        return seqs

    def packet(self, seq: int) -> bytes | None:
        data = self._cache[seq & CACHE_MASK]
        if data is not None and U16.unpack_from(data, 2)[0] == seq:
            return data
        return None

    def request_keyframe(self, *, urgent: bool = False) -> None:
        """Ask the publisher for a keyframe, within this layer's KeyframeGate.

        `urgent`: a subscriber must start on this layer (it joined, or switches to it)
        and a keyframe that came before it asked is no use to it. A request that must
        wait is deferred to when it may go, not dropped: whoever asked is still waiting
        for a picture; a keyframe that arrives meanwhile answers it.
        """
        if self.closed:
            return
        now = time.monotonic()
        wait = self._kf_gate.wait(now, self.last_keyframe_at, urgent=urgent)
        deferred = self._kf_deferred
        if urgent or deferred is None:
            # Only a keyframe after this ask answers it. Repairs keep the first ask's
            # time: one that lost a keyframe after it asks again, and is gated then.
            self._kf_asked_at = now
        if deferred is not None:
            if now + wait >= self._kf_deferred_at:
                return  # the request already waiting goes no later than this one could
            deferred.cancel()
            self._kf_deferred = None
        if wait <= 0:
            self._send_keyframe_request(deferred=False)
            return
        self._kf_deferred_at = now + wait
        self._kf_deferred = asyncio.get_running_loop().call_later(
            wait, self._send_keyframe_request, True
        )

    def _send_keyframe_request(self, deferred: bool) -> None:
        self._kf_deferred = None
        if self.closed:
            return
        if deferred and overtaken(self._kf_asked_at, self.last_keyframe_at):
            return
        self._kf_gate.sent(time.monotonic())
        self.stats.keyframe_requests += 1
        self._request_keyframe(self)

    def on_sender_report(self, ntp: int, rtp: int) -> None:
        self.sender_clock = SenderClock(ntp=ntp, rtp=rtp, local=time.time())

    def attach(self, downtrack: DownTrack) -> None:
        if downtrack not in self.downtracks:
            was_idle = not self.downtracks
            # Copy-on-write: the hot loop iterates the old list undisturbed. A relay's
            # DownTrack goes ahead of the local ones (see DownTrack.first).
            if downtrack.first:
                self.downtracks = [downtrack, *self.downtracks]
            else:
                self.downtracks = [*self.downtracks, downtrack]
            if was_idle and self._on_wanted is not None and not self.closed:
                self._on_wanted(self)

    def detach(self, downtrack: DownTrack) -> None:
        if downtrack in self.downtracks:
            self.downtracks = [d for d in self.downtracks if d is not downtrack]

    def close(self) -> None:
        self.closed = True
        if self._kf_deferred is not None:
            self._kf_deferred.cancel()
            self._kf_deferred = None
        for dt in self.downtracks:
            dt.source_closed(self)
        self.downtracks = []
        self._cache = [None] * CACHE_SIZE
        self.missing.clear()
