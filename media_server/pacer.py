"""A subscriber's pacer: video leaves at the estimated rate, audio never waits.

A keyframe or a burst of retransmissions is tens of packets at once; on a 1 Mbit/s line
they fill the modem's queue, delay everything behind them (audio too) and are lost at
its tail. The pacer is a PacketSink in front of the wire: while the token bucket has
room, packets go straight out (the common case reads no clock: the bucket is refilled
only when a packet finds it short, crediting the whole time since the last refill, so a
burst can reach twice `BURST_S` at worst); a burst beyond it is queued and drained every few milliseconds at `PACING_FACTOR` times the estimate
(one timer drains every subscriber's queue).
Audio goes through `send_rtp_now`, ahead of any queue. A queue that would hold more
than `MAX_QUEUE_S` of sending is cut at its tail: late video is worth less than a
keyframe request.

For a subscriber with transport-wide congestion control, the pacer notes when each
stamped packet really leaves (`history`, media_server/twcc.py): the delay-based estimate
must see the link's queue, not ours.

The fast path is public so that a DownTrack can take it in line, without a call per
packet per subscriber (media_server/downtrack.py): while `open` (nothing queued), a
video packet that fits `tokens` spends them and goes straight to `sink`, and so does
any audio packet (`PriorityLane`); the DownTrack notes its own transport-wide number in
`history`. Every other case goes through `send_rtp` or `send_rtp_now`, which decide
exactly the same for those cases.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from media_server.sink import PacketSink
from media_server.twcc import SEQ_OFFSET, SendHistory

PACING_FACTOR = 1.5
# A video frame (not a keyframe) fits in the burst and goes straight out; anything
# bigger waits here, where audio overtakes it, not in the modem's queue, where audio
# waits behind it: 60 ms of bursts put ~70 ms spikes into the audio's arrival times on
# a 2 Mbit/s point, and Chromium's jitter buffers (the teacher video's too, lip-synced
# to the audio) grew to match.
BURST_S = 0.02
MIN_BURST_BYTES = 6000
DRAIN_INTERVAL_S = 0.005
MAX_QUEUE_S = 0.5


class Pacer:
    def __init__(self, sink: PacketSink, rate_bps: int) -> None:
        self.sink = sink
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.dropped = 0
        self._rate = 0.0  # bytes per second
        self._burst = 0.0
        self.tokens = 0.0  # bytes that may leave now
        self._last = time.monotonic()
        self.set_rate(rate_bps)
        self.tokens = self._burst
        self.history: SendHistory | None = None
        self._tcc_byte = -1  # the first extension element's id/len byte when stamped
        # Nothing queued: a packet within `tokens` may go straight to `sink`. Kept up to
        # date wherever the queue changes.
        self.open = True

    def note_transport_cc(self, history: SendHistory, ext_id: int) -> None:
        """From now on, record when each packet stamped with `ext_id` leaves."""
        self.history = history
        self._tcc_byte = (ext_id << 4) | 1

    def _note(self, packet: bytes) -> None:
        if len(packet) > SEQ_OFFSET + 1 and packet[SEQ_OFFSET - 1] == self._tcc_byte:
            self.history.record(packet, time.monotonic())  # type: ignore[union-attr]

    def set_rate(self, estimate_bps: int) -> None:
        self._rate = estimate_bps * PACING_FACTOR / 8
        self._burst = max(self._rate * BURST_S, MIN_BURST_BYTES)

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self._burst, self.tokens + (now - self._last) * self._rate)
        self._last = now

    def send_rtp(self, packet: bytes) -> None:
        size = len(packet)
        if not self.queue:
            # This runs once per packet per subscriber: no clock while tokens last.
            if self.tokens < size:
                self._refill()
            if self.tokens >= size:
                self.tokens -= size
                if self.history is not None:
                    self._note(packet)
                self.sink.send_rtp(packet)
                return
        if self.queued_bytes + size > self._rate * MAX_QUEUE_S:
            self.dropped += 1
            return
        self.queue.append(packet)
        self.queued_bytes += size
        self.open = False
        _DRAINER.add(self)

    def send_rtp_now(self, packet: bytes) -> None:
        """Audio: out at once; it still spends tokens so video makes room for it."""
        self.tokens -= len(packet)
        if self.history is not None:
            self._note(packet)
        self.sink.send_rtp(packet)

    def send_rtcp(self, packet: bytes) -> None:
        self.sink.send_rtcp(packet)

    def drain(self) -> bool:
        """Send what the bucket allows; True while packets are still queued."""
        self._refill()
        queue = self.queue
        while queue and self.tokens >= len(queue[0]):
            packet = queue.popleft()
            size = len(packet)
            self.tokens -= size
            self.queued_bytes -= size
            if self.history is not None:
                self._note(packet)
            self.sink.send_rtp(packet)
        if queue:
            return True
        self.open = True
        return False

    def close(self) -> None:
        self.queue.clear()
        self.queued_bytes = 0
        self.open = True
        _DRAINER.discard(self)


class PriorityLane:
    """The pacer's front door for audio: straight out, ahead of any queued video.

    Its methods are the pacer's own, bound once: no extra call per audio packet.
    """

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.send_rtp = pacer.send_rtp_now
        self.send_rtcp = pacer.send_rtcp


class _Drainer:
    """One timer for every pacer with a queue: 150 subscribers must not mean 150 timers."""

    def __init__(self) -> None:
        self.active: set[Pacer] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, pacer: Pacer) -> None:
        self.active.add(pacer)
        loop = asyncio.get_running_loop()
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_later(DRAIN_INTERVAL_S, self._run)

    def discard(self, pacer: Pacer) -> None:
        self.active.discard(pacer)

    def _run(self) -> None:
        self._timer = None
        for pacer in list(self.active):
            if not pacer.drain():
                self.active.discard(pacer)
        if self.active and self._loop is not None and not self._loop.is_closed():
            self._timer = self._loop.call_later(DRAIN_INTERVAL_S, self._run)


_DRAINER = _Drainer()
