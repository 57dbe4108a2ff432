"""When the link of a subscriber without transport-wide feedback overflows, and what it
then carried. Pure: the caller passes the clock.

Such a subscriber (the point agent: aiortc sends no transport-cc, and its per-stream REMB
is not used) tells the SFU only its receiver reports: each stream's loss and, through
the sender report it echoes, the round trip. The loss is counted after our
retransmissions filled most holes (aiortc counts a retransmitted packet as received), so
a 1 Mbit/s line with 5 % loss reads 0-3 %, and the loss rule grows the estimate on it
to twice what we send. On 1mbit-5pct-300ms that let the teacher's 720p (1.1 Mbit/s) in
every 15-25 s; it filled the modem's queue (round trip 330 -> 500-575 ms), a quarter of
the packets were lost and every picture stood still for 2-5 s under "live" until the
back-off took the layer away again (bench/rural.py --receiver agent, main 4a0802e).

An overflow is a report with more than `LOSS_HIGH` lost while the round trip stands
`QUEUE_MS` above the lowest of the last `FLOOR_WINDOW_S` (or, at connect, with more than
`FLOOD_LOSS` lost, see below), and while we send at least
`SENDING_SHARE` of the estimate: random loss on a line with an empty queue is not one,
nor is a queue we did not fill (sending 35 kbit/s of a 73 kbit/s estimate on a 256
kbit/s line whose round trip the point's own uplink stretched: that reading pinned the
estimate at its 64 kbit/s floor). What got through then (sent, less what was lost) is the link's
capacity, and growth without evidence stops there, as it does at a capacity the
transport-cc detector measured. Nothing but another overflow measures such a link (no
probes without transport-cc), so the capacity is forgotten after `KEEP_S`, and a link
that overflows again soon after that keeps it twice as long (up to `KEEP_MAX_S`): a
layer that does not fit is tried again ever more rarely, while a line that recovered
from a thin spell gets its pictures back within seconds of `KEEP_S`.
"""

from __future__ import annotations

from collections import deque

from media_server.estimator import LOSS_HIGH

# A round trip this far above its recent floor is a standing queue (the bench's modem
# queue holds 250 ms; random jitter on the rural links is a few tens of ms).
QUEUE_MS = 100.0
FLOOR_WINDOW_S = 60.0
# 60 s kept a point that had a thin spell (350 kbit/s) at its old capacity for a minute
# after the line recovered (tests/test_rural_link_netns.py's board stayed paused).
KEEP_S = 20.0
KEEP_MAX_S = 320.0
SENDING_SHARE = 0.6
# In the first `START_S` of a subscriber, this much lost after our repairs is a flood
# whatever the round trip says: at connect the first round trips already come from the
# flooded queue, so no floor below them shows it (256kbit-10pct: the teacher and board
# stood frozen under "live" 7-10 % of the time until the queue rule caught up). Random
# loss on a rural line stays far below; an outage (nothing through) is no capacity
# reading. Later a floor is known, and only a standing queue says overflow: a stall of
# our own process (a starved CPU drops packets in bursts) must not cap a link for minutes.
FLOOD_LOSS = 0.3
OUTAGE_LOSS = 0.8
START_S = 30.0


class OverflowWatch:
    def __init__(self) -> None:
        # (when, round trip ms), increasing round trips: the front is the window's floor.
        self._rtts: deque[tuple[float, float]] = deque()
        self._capacity: float | None = None
        self._set_at = float("-inf")
        self._keep_s = KEEP_S
        self._started_at: float | None = None
        self.overflows = 0

    def _age(self, now: float) -> float:
        if self._started_at is None:
            self._started_at = now
        return now - self._started_at

    def on_rtt(self, rtt_ms: float, now: float) -> None:
        self._age(now)
        rtts = self._rtts
        while rtts and rtts[-1][1] >= rtt_ms:
            rtts.pop()
        rtts.append((now, rtt_ms))
        while rtts[0][0] < now - FLOOR_WINDOW_S:
            rtts.popleft()

    def floor_ms(self) -> float | None:
        return self._rtts[0][1] if self._rtts else None

    def on_report(
        self, loss: float, sent_bps: float, estimate_bps: float, rtt_ms: float | None, now: float
    ) -> bool:
        """One tick's loss (0..1), what we sent, the estimate it was sent under and the
        latest round trip; True when it was an overflow."""
        floor = self.floor_ms()
        queued = rtt_ms is not None and floor is not None and rtt_ms - floor >= QUEUE_MS
        flooded = FLOOD_LOSS < loss < OUTAGE_LOSS and self._age(now) < START_S
        if loss <= LOSS_HIGH or not (queued or flooded):
            return False
        if sent_bps < SENDING_SHARE * estimate_bps:
            return False
        if self.capacity(now) is None:
            forgotten_at = self._set_at + self._keep_s
            # Overflowing again soon after the capacity was forgotten: the link did not
            # grow; keep the next reading longer. Long after: a new situation.
            if now - forgotten_at < self._keep_s:
                self._keep_s = min(2 * self._keep_s, KEEP_MAX_S)
            else:
                self._keep_s = KEEP_S
        self._capacity = sent_bps * (1 - loss)
        self._set_at = now
        self.overflows += 1
        return True

    def capacity(self, now: float) -> float | None:
        """What the link carried at its last overflow, while that reading is kept."""
        if self._capacity is None or now - self._set_at >= self._keep_s:
            return None
        return self._capacity

    @property
    def keep_s(self) -> float:
        return self._keep_s
