"""One subscriber's downlink estimate, from what the subscriber sends back.

Two signals, as in Google Congestion Control (the estimator Chromium and aiortc run):

- REMB: the receiver's own delay-based estimate (Chromium and aiortc compute it from
  the abs-send-time every DownTrack stamps) for the streams its FCI lists: Chromium
  sends one for the whole transport, aiortc one per received stream. When it falls
  below what we are actually sending on those streams, the receiver sees a queue
  building on its link: the estimate drops by that ratio at once, before packets are
  lost. aiortc's per-stream REMB measures its own event loop as much as the network
  and is not used for that. A REMB above what we send says little — Chromium never reports more than 1.5x
  what it receives — so it never holds the estimate down (a subscriber whose pictures
  are paused would otherwise never get them back). The first seconds of REMB are a
  receiver's start-up guess, not a measurement, and are not taken as congestion.
- Loss, once a second: more than 10% lost backs off multiplicatively, between 2% and
  10% holds (random loss on a rural line is not congestion), below 2% grows by 8% per
  report. With transport-wide feedback the delay-based estimate tells whether a queue
  stands on the link: 2-10% loss without one is the line's random loss and grows the
  estimate as a clean line does (a 1 Mbit/s line with 5% loss is still a 1 Mbit/s
  line); growth stops at the measured capacity, and a queue stops it. With transport-wide feedback the loss is counted over every packet the
  feedback covers (hundreds a second); otherwise it is the receiver reports' fractions.
  Growth is bounded by a multiple of what we send, so an idle subscriber's estimate
  does not run away from anything measured, and by the link's measured capacity.

- Transport-wide feedback (browsers that negotiate transport-cc, which then send no
  REMB): our own delay-based estimate (media_server/delay_estimate.py). When it detects
  a queue building on the subscriber's link, the estimate drops at once, and loss-free
  reports do not grow the estimate for `DELAY_HOLD_S` after that.
- Probes (media_server/probe.py): a cluster the link carried raises the estimate to the
  rate it was carried at; one the link spread out measures its capacity directly.

The link's capacity, when measured (a probe the link spread out, or the arrival rate at
confirmed overuse), is where growth without evidence stops: loss-free seconds bring the
estimate up to it, not past it, so a layer that does not fit is not tried every few
seconds (each try is a queue, a cut and a paused picture). Only a probe shows more.

No I/O: the subscriber's control loop feeds it (`sent_bps` each tick) and reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

INITIAL_BPS = 2_500_000  # between the rural floors (2 Mbit/s per class, 4 per point)
MIN_BPS = 64_000
MAX_BPS = 20_000_000
REMB_STALE_S = 5.0
LOSS_HIGH = 0.10
LOSS_LOW = 0.02
GROWTH = 1.08
CONGESTED = 0.85  # a REMB below this share of what we send means a queue is building
REMB_WARMUP_S = 6.0
# How far above what we send the estimate may grow without evidence.
HEADROOM_FACTOR = 2.0
HEADROOM_BPS = 1_500_000
DELAY_HOLD_S = 2.0
MAX_CUT = 0.5
# A probe the link spread out: the estimate takes this share of the measured capacity.
PROBE_SATURATED_SHARE = 0.95


@dataclass
class Estimate:
    bps: int
    remb_bps: int | None
    loss: float
    rtt_ms: float | None
    congested: bool


class DownlinkEstimator:
    def __init__(self, *, initial_bps: int = INITIAL_BPS, max_bps: int = MAX_BPS) -> None:
        self.max_bps = max_bps
        self._bps = float(initial_bps)
        self._remb: tuple[int, float] | None = None  # (bps, when)
        self.sent_bps = 0.0  # what we sent this subscriber lately (set by the caller)
        # What the subscriber would receive with every source at its top layer (set by
        # the caller): growth on a clean line may reach it, so a picture paused on a
        # line that has since recovered comes back without waiting for evidence.
        self.demand_bps = 0.0
        self.stream_bps: dict[int, float] = {}  # per outgoing SSRC (set by the caller)
        self.started_at: float | None = None  # when media first went out
        self._low_rembs: dict[tuple[int, ...], int] = {}
        self.loss = 0.0
        self._was_high = False  # the last loss reading was above LOSS_HIGH
        self.rtt_ms: float | None = None
        self.congested_at = float("-inf")
        self.delay_bps: int | None = None  # the transport-cc estimate, when there is one
        self._delay_overuse_at = float("-inf")
        self._delay_cut_at = float("-inf")
        # What the link was last measured to carry (probe or overuse); None: unknown.
        self.capacity_bps: float | None = None

    def on_remb(self, bps: int, ssrcs: list[int], now: float) -> None:
        if bps <= 0:
            return
        self._remb = (bps, now)
        if self.started_at is None or now - self.started_at < REMB_WARMUP_S:
            return
        sending = sum(1 for bps in self.stream_bps.values() if bps > 0)
        if len(ssrcs) == 1 and sending > 1:
            # aiortc's receiver: one estimator per stream, fed from its event loop, whose
            # delays under CPU load read as a queue. Seen on loopback: 43 kbit/s for a
            # 580 kbit/s stream. Such a receiver is judged by its losses alone.
            return
        covered = sum(self.stream_bps.get(s, 0.0) for s in ssrcs)
        key = tuple(ssrcs)
        if covered <= 0 or bps >= CONGESTED * covered:
            self._low_rembs.pop(key, None)
            return
        # One low REMB can be a receiver's hiccup; two in a row are a queue.
        self._low_rembs[key] = self._low_rembs.get(key, 0) + 1
        if self._low_rembs[key] < 2:
            return
        scaled = self.sent_bps * bps / covered
        if scaled < self._bps:
            self._bps = scaled
            self.congested_at = now
        self._clamp()

    def on_delay(
        self,
        bps: float,
        overusing: bool,
        now: float,
        decrease_to: float | None = None,
        capacity_bps: float | None = None,
    ) -> None:
        """The send-side delay-based estimate after one transport-cc feedback.

        `decrease_to` is set when confirmed overuse calls for a cut, with the link's
        measured delivery rate as `capacity_bps`.
        """
        self.delay_bps = int(bps)
        if not overusing:
            return
        self._delay_overuse_at = now
        if capacity_bps is not None:
            self.capacity_bps = capacity_bps
        if decrease_to is not None and decrease_to < self._bps:
            # At most halved per cut (one a round trip, while the link confirms): a rate
            # read from a few packets once left a 2 Mbit/s line at 70 kbit/s, every
            # picture paused. A 5 -> 1 step is two or three cuts, well within a second.
            self._bps = max(decrease_to, MAX_CUT * self._bps)
            self.congested_at = now
            self._delay_cut_at = now
        self._clamp()

    def on_probe(self, bps: float, saturated: bool, now: float) -> None:
        """A probe cluster arrived at `bps`; `saturated`: the link spread it out to that."""
        if saturated:
            # A reading of the link: an estimate below it rises to just under it, and
            # growth without evidence stops at it. A reading below the estimate neither
            # lowers it nor caps its growth: a receiver's (or a loaded machine's) stall
            # spreads a cluster out too, and once left a 5 Mbit/s link's estimate capped
            # at 1.5 Mbit/s for good; queues and losses are the delay and loss rules' to
            # judge.
            if bps >= self._bps:
                self.capacity_bps = bps
            self._bps = max(self._bps, PROBE_SATURATED_SHARE * bps)
        else:
            self.capacity_bps = max(self.capacity_bps or 0.0, bps)
            self._bps = max(self._bps, bps)
        self._clamp()

    def on_loss(self, fraction: float, now: float, queue_free: bool = False) -> None:
        """One interval's loss fraction (0..1), over every stream the subscriber receives.

        `queue_free`: the delay-based estimate sees no standing queue on the link, so
        moderate loss is the line's own (radio, copper), not an overflowing queue.
        """
        self.loss = fraction
        high = fraction > LOSS_HIGH
        # One second's count of a line's random loss strays above 10 % now and then (5 %
        # of 60 packets is 3 lost; 7 are 12 %): with no queue on the link, one such
        # second is noise, and only a second one in a row backs off.
        stray = high and queue_free and not self._was_high
        self._was_high = high
        if high and not stray:
            if now - self._delay_cut_at >= DELAY_HOLD_S:
                # (Right after a delay-based cut, the losses are the same queue's tail.)
                self._bps *= 1 - 0.5 * fraction
            self.congested_at = now
        elif high:
            pass  # a stray second: hold
        elif (fraction < LOSS_LOW or queue_free) and now - self._delay_overuse_at >= DELAY_HOLD_S:
            ceiling = max(
                self.sent_bps * HEADROOM_FACTOR, self.sent_bps + HEADROOM_BPS, self.demand_bps
            )
            if self.capacity_bps is not None:
                ceiling = min(ceiling, self.capacity_bps)
            self._bps = min(self._bps * GROWTH, max(ceiling, self._bps))
        self._clamp()

    def on_line_loss(self, fraction: float, now: float) -> None:
        """Loss where no queue stands (a delay reading, or a round trip at its floor,
        says so): the line's own, which at most holds the estimate. Counted in full, the
        10 % random loss of a rural line reads over 10 % every other second, and each
        such second would cut the estimate, down to its floor."""
        self.on_loss(min(fraction, LOSS_HIGH), now, queue_free=True)
        self.loss = fraction

    def on_link_capacity(self, capacity_bps: float | None) -> None:
        """A subscriber without transport-cc: what its link carried when it last
        overflowed (media_server/overflow.py), or None once that is forgotten. The
        estimate is never above it while it is known, and growth stops there."""
        self.capacity_bps = capacity_bps
        if capacity_bps is not None and self._bps > capacity_bps:
            self._bps = capacity_bps
        self._clamp()

    def on_overflow(self, capacity_bps: float) -> None:
        """The link overflowed and carried `capacity_bps` (media_server/overflow.py): the
        estimate is that, whatever the loss rule cut while the flood's reports came in
        (at connect, 2.5 Mbit/s into a 256 kbit/s line: five lossy reports cut the
        estimate to 74 kbit/s under a reading of 267, and the courseware stayed paused)."""
        self._bps = capacity_bps
        self.on_link_capacity(capacity_bps)

    def start_low(self, bps: float) -> None:
        """Start from `bps` at most (a subscriber whose path was slow to come up)."""
        self._bps = min(self._bps, bps)
        self._clamp()

    def on_rtt(self, rtt_ms: float) -> None:
        self.rtt_ms = rtt_ms if self.rtt_ms is None else 0.8 * self.rtt_ms + 0.2 * rtt_ms

    def _clamp(self) -> None:
        self._bps = min(max(self._bps, MIN_BPS), self.max_bps)

    def remb(self, now: float) -> int | None:
        if self._remb is None or now - self._remb[1] > REMB_STALE_S:
            return None
        return self._remb[0]

    def estimate(self, now: float) -> Estimate:
        return Estimate(
            bps=int(self._bps),
            remb_bps=self.remb(now),
            loss=self.loss,
            rtt_ms=self.rtt_ms,
            congested=now - self.congested_at < 1.0,
        )
