"""A publisher's uplink, read from how its packets arrive: the receive side of GCC.

Loss alone cannot size a rural uplink: a 256 kbit/s line with 10 % random loss loses as
much when it carries half its rate as when its modem's queue overflows, so a loss-only
estimate settles wherever the sender happens to be, and a point agent's camera kept its
queue full (211-460 kbit/s into 256). Every packet the queue holds delays the lesson
WebSocket behind it too, until its heartbeat gives up and the point rejoins.

The publisher stamps each packet with abs-send-time when it sends it (aiortc and Chromium
both do); we note when it arrives. Those are the two clocks a transport-cc report gives
a sender, so the send-side detector (media_server/delay_estimate.py) reads them the same
way: a growing gap between sending and arrival is a queue on the publisher's link. The
packets are batched as a report would be (every `REPORT_S`), with a sequence number of
our own: only received packets are known here, and the loss the receiver reports counts
the rest (media_server/publisher.py). No I/O.
"""

from __future__ import annotations

from media_server.delay_estimate import QUEUE_MS, DelayEstimate
from media_server.estimator import DownlinkEstimator
from media_server.rtpbytes import AST_UNITS_PER_S, AST_WRAP, one_byte_extension
from media_server.twcc import PacketResult

REPORT_S = 0.1


class UplinkDelay:
    def __init__(self, ext_id: int, initial_bps: float) -> None:
        self.ext_id = ext_id
        self.estimate = DelayEstimate(initial_bps)
        self._pending: list[PacketResult] = []
        self._seq = 0
        self._last_ast: int | None = None
        self._sent_s = 0.0

    def add(self, data: bytes, arrival_ns: int) -> bool:
        """Note one received packet; True when it is the first since the last `report`."""
        value = one_byte_extension(data, self.ext_id)
        if value is None or len(value) != 3:
            return False
        ast = int.from_bytes(value, "big")
        if self._last_ast is not None:
            # 24 bits wrap every 64 s; a packet overtaken on the way steps back a little.
            step = (ast - self._last_ast) % AST_WRAP
            if step >= AST_WRAP // 2:
                step -= AST_WRAP
            self._sent_s += step / AST_UNITS_PER_S
        self._last_ast = ast
        self._seq += 1
        self._pending.append((self._seq, self._sent_s, len(data), arrival_ns // 1000))
        return len(self._pending) == 1

    def report(self, estimator: DownlinkEstimator, now: float, rtt_s: float) -> bool:
        """Hand the packets noted since the last report to the detector, and its reading
        to `estimator`; True when it calls for a cut (the publisher should hear now)."""
        pending, self._pending = self._pending, []
        if not pending:
            return False
        e = self.estimate
        e.on_feedback(pending, now, rtt_s)
        estimator.on_delay(e.bps, e.overusing, now, e.decrease_to, e.capacity_bps)
        return e.decrease_to is not None

    def on_loss(self, estimator: DownlinkEstimator, fraction: float, now: float) -> None:
        """One second's loss on the uplink, before repair.

        A point's camera sends 15-30 packets a second: on a line with 10 % random loss
        every other second counts more than 10 %, and the loss rule would halve the
        estimate again and again. Where the detector sees no standing queue, loss is the
        line's own and at most holds the estimate; an overflowing queue stands, and then
        loss counts in full.
        """
        if self.queue_free:
            estimator.on_line_loss(fraction, now)
        else:
            estimator.on_loss(fraction, now)

    @property
    def queue_free(self) -> bool:
        """The detector has a reading and sees no standing queue on the link."""
        e = self.estimate
        return e.ready and e.queue_ms < QUEUE_MS and not e.overusing
