"""A send-side, delay-based downlink estimate from transport-cc feedback. No I/O.

The idea is Google Congestion Control's (draft-ietf-rmcat-gcc): when we send faster
than the subscriber's link carries, the modem's queue grows, and packets sent at an even
pace arrive ever further apart. We group the packets the receiver reports by when we
sent them (bursts of 5 ms), take for each group how much longer it took to arrive than
to send, accumulate and smooth that, and fit a line through the last 20 points: its
slope is the queue's growth. A slope above an adaptive threshold (it follows the slope's
usual size, so a jittery radio link does not read as congestion) for more than one
report is overuse. Overuse lowers the estimate only when the link is what sets the pace:
the packets that arrived over the last half second took longer to arrive than to send
(`SATURATED`). A busy machine's stall (ours, the receiver's, or an emulated link's
pump) delays packets and then lets them through in a burst, which bends the trend but
delivers at least as fast as we sent; and a false reading while we send well below the
link would otherwise cut the estimate to 85% of our own, low, rate, again and again.
On confirmed overuse the estimate drops to 85% of what the receiver actually got over
the last half second, at most once a round trip, and that rate is kept as the link's
measured capacity (after a cut the queue drains faster than we send: not confirmed). Below the negative threshold the queue is draining: hold.
Otherwise the estimate grows 8% a second, at most to 1.5 times what arrives plus a
packet. Packets sent during a probe cluster and while its queue drains (`exclude`) are
left out of the trend: the probe's own queue is no news (media_server/probe.py judges
the cluster by rates).

Written from the draft's description; the subscriber's control loop combines it with
REMB and receiver-report loss (media_server/estimator.py).
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from operator import itemgetter
from typing import NamedTuple

from media_server.twcc import PacketResult

GROUP_S = 0.005
WINDOW = 20
REBASE = 1000  # points between the trend line's exact recomputations
SMOOTHING = 0.9
TREND_GAIN = 4.0
THRESHOLD_START_MS = 12.5
THRESHOLD_MIN_MS, THRESHOLD_MAX_MS = 6.0, 600.0
K_UP, K_DOWN = 0.0087, 0.039
OVERUSE_MS = 10.0
# A rising trend is overuse only once a standing queue has formed: the smoothed delay
# this far above its recent floor. A keyframe burst that crosses a busy machine's event
# loop bends the trend for a moment but leaves no queue behind.
QUEUE_MS = 25.0
# The first seconds of a subscription are its first keyframes, sent in a burst, and a
# trend fitted through few points: no reading yet.
WARMUP_SAMPLES = 200
FLOOR_RISE_MS_PER_S = 1.0  # the floor follows clock drift slowly upwards
DECREASE = 0.85
GROWTH_PER_S = 1.08
ACKED_WINDOW_US = 500_000
# Arrival slower than this share of the send rate, over the same packets: a queue is
# really growing somewhere on the path.
SATURATED = 0.97
# The newest arrivals, to tell a queue (arriving slower than sent) from the catch-up after
# a stall (arriving faster than sent, at the link's rate).
RECENT_PACKETS = 10
# A peak read over less than this is a receiver's batching, not the link (ten packets of
# 1,200 bytes in 8 ms are 12 Mbit/s: far above a rural line).
MIN_PEAK_SPAN_S = 0.008
# Missing packets remembered in case a later report has them (sequence numbers back).
MAX_MISSING = 4096
# Arriving at under this share of what we send, twice in a row: overuse, trend or not.
FLOODED = 0.7
# The newest packets' loss share, read over this many received ones, above which a
# drop-tail queue is overflowing now (random loss on a rural line stays far below it).
FLOOD_PACKETS = 20
RECENT_FLOOD_LOSS = 0.25
# A cut's reading from fewer bytes than this in the window (a stall, a flood's tail, a
# few audio packets) bounds the cut but is not taken as the link's capacity.
MIN_CAPACITY_BYTES = 12_000
# A break in arrivals longer than this is a stall, not a queue's steady overflow (one
# 1,200-byte packet takes 100 ms at 96 kbit/s).
FLOOD_GAP_US = 100_000
MIN_BPS = 64_000


class Usage(Enum):
    NORMAL = "normal"
    OVERUSE = "overuse"
    UNDERUSE = "underuse"


class _Recent(NamedTuple):
    ratio: float  # arrival over send rate of the newest received packets
    loss: float  # share of the newest reported packets lost
    arrival_bps: float


class Cut(NamedTuple):
    """One decrease and what it was read from (for the ops page and the benchmarks)."""

    at: float
    acked_bps: float
    peak_bps: float
    sent_bps: float  # lost packets included
    recent_loss: float | None
    why: str
    to_bps: float  # the decrease asked for (85 % of the link's rate as read)


class _Line:
    """A least-squares line through the last WINDOW points, in constant time per point.

    Running sums, taken about an origin that moves to the newest point every REBASE
    points (sums are recomputed there): a 45-minute lesson's milliseconds squared would
    otherwise cost the slope its precision.
    """

    __slots__ = ("_origin", "_points", "_since", "_sx", "_sxx", "_sxy", "_sy", "last_x")

    def __init__(self) -> None:
        self._points: deque[tuple[float, float]] = deque()
        self._origin = (0.0, 0.0)
        self._since = 0
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        self.last_x: float | None = None  # the newest point's x, None before the first

    def add(self, x: float, y: float) -> float | None:
        """Take a point in; the slope once the line holds WINDOW points, else None (one
        call per point: it runs for every group of packets every subscriber reports)."""
        points = self._points
        ox, oy = self._origin
        sx, sy, sxx, sxy = self._sx, self._sy, self._sxx, self._sxy
        if len(points) == WINDOW:
            px, py = points.popleft()
            px -= ox
            py -= oy
            sx -= px
            sy -= py
            sxx -= px * px
            sxy -= px * py
        points.append((x, y))
        self.last_x = x
        self._since += 1
        if self._since >= REBASE:
            self._rebase(x, y)
        else:
            x -= ox
            y -= oy
            self._sx = sx = sx + x
            self._sy = sy = sy + y
            self._sxx = sxx = sxx + x * x
            self._sxy = sxy = sxy + x * y
        return self.slope() if len(points) == WINDOW else None

    def _rebase(self, ox: float, oy: float) -> None:
        self._origin = (ox, oy)
        self._since = 0
        xs = [x - ox for x, _ in self._points]
        ys = [y - oy for _, y in self._points]
        self._sx, self._sy = sum(xs), sum(ys)
        self._sxx = sum(x * x for x in xs)
        self._sxy = sum(x * y for x, y in zip(xs, ys, strict=True))

    def slope(self) -> float:
        n = len(self._points)
        den = n * self._sxx - self._sx * self._sx
        return (n * self._sxy - self._sx * self._sy) / den if den else 0.0


class DelayEstimate:
    def __init__(self, initial_bps: float) -> None:
        self.bps = float(initial_bps)
        self.usage = Usage.NORMAL
        self.lost = 0  # reported as not received
        self.received = 0
        self._highest = -1  # highest transport seq taken in (duplicates are skipped)
        # Groups of packets sent within GROUP_S of the first: the open one, as (first
        # sent, last sent, latest arrival us), and the last closed one, as (last sent,
        # latest arrival us). Plain tuples: a hundred groups a second per subscriber.
        self._group: tuple[float, float, int] | None = None
        self._previous: tuple[float, int] | None = None
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._line = _Line()  # the trend: the smoothed delay's last WINDOW points
        self._first_arrival_us: int | None = None
        self._floor: float | None = None  # the smoothed delay's recent minimum
        self._samples = 0
        self._threshold = THRESHOLD_START_MS
        self._last_arrival_ms: float | None = None
        self._overuse_ms = 0.0
        self._overuse_count = 0
        self._trend = 0.0
        # Every reported packet of the last half second, lost ones too (at the arrival of
        # the packet received before them): (arrival us, size sent, sent, size received).
        # Entries are lists, [arrival us, size sent, sent, size received, late]: a packet
        # reported missing and later received is marked received (and late) in place; a
        # trimmed entry's received size becomes -1.
        self._window: deque[list[float]] = deque()
        self._window_sent = 0.0
        self._window_received = 0.0
        self._last_arrival_us: int | None = None
        # Seqs reported missing, in case they come late, with their window entries.
        self._missing: dict[int, list[float] | None] = {}
        self._last_decrease = float("-inf")
        self.overused_at = float("-inf")
        # Set by the feedback that confirmed overuse: the rate to drop to, and what the
        # link was measured to deliver meanwhile; None otherwise.
        self.decrease_to: float | None = None
        self.capacity_bps: float | None = None
        self.false_overuse = 0  # overuse readings while the link kept up with us
        self._was_saturated = False
        self._confirmed = False  # overuse, and the link confirms it
        self._excluded: tuple[float, float] = (0.0, -1.0)  # send times left out
        self._last_update: float | None = None
        self.cuts: deque[Cut] = deque(maxlen=8)

    # -- input ------------------------------------------------------------------------

    def exclude(self, start: float, end: float) -> None:
        """Leave packets sent between `start` and `end` (a probe cluster) out of the trend."""
        self._excluded = (start, end)

    def on_feedback(self, results: list[PacketResult], now: float, rtt_s: float = 0.1) -> None:
        """One feedback report's packets (send times matched); updates `bps` and `usage`.

        This runs for every packet every subscriber receives: one pass, in locals, and
        the trend's work only once per group of packets.
        """
        self.decrease_to = None
        highest = self._highest
        fresh = [r for r in results if r[0] > highest]
        missing = self._missing
        if missing and len(fresh) < len(results):
            # A browser reports a packet again once it arrives after a report that
            # listed it missing (our audio overtakes video waiting in the pacer, so the
            # receiver sees holes that fill a moment later): it was late, not lost.
            # Its entry in the window becomes a received one: otherwise the window would
            # count it lost and its bytes undelivered, and after a cut (the pacer holds
            # video back while audio overtakes it) read a flood and a link far slower
            # than the one that delivered it.
            for r in results:
                if r[3] is not None and r[0] in missing:
                    entry = missing.pop(r[0])
                    self.lost -= 1
                    self.received += 1
                    if entry is not None and entry[3] == 0:
                        entry[3] = r[2]
                        entry[4] = 1  # its arrival stamp is not its own: no timing
                        self._window_received += r[2]
        if not fresh:
            return
        self._highest = max(map(_seq, fresh))
        if len(missing) > MAX_MISSING:
            floor = self._highest - MAX_MISSING
            self._missing = missing = {seq: e for seq, e in missing.items() if seq > floor}
        fresh.sort(key=_sent)
        append = self._window.append
        last_arrival = self._last_arrival_us
        sent_bytes = received_bytes = lost = 0
        excluded_from, excluded_to = self._excluded
        first_sent, last_sent, group_arrival = self._group or (-1.0, 0.0, 0)
        # Groups closed by this report, in order; None: a probe's queue, pair nothing
        # across it. The detector reads them after the loop, in one pass.
        closed: list[tuple[float, int] | None] = []
        for seq, sent, size, arrival in fresh:
            if arrival is None:
                lost += 1
                entry = None
                if last_arrival is not None:
                    entry = [last_arrival, size, sent, 0, 0]
                    append(entry)
                    sent_bytes += size
                missing[seq] = entry
                continue
            if last_arrival is None or arrival > last_arrival:
                last_arrival = arrival
            append([arrival, size, sent, size, 0])
            sent_bytes += size
            received_bytes += size
            # Groups: packets sent within GROUP_S of a group's first.
            if excluded_from <= sent <= excluded_to:
                # A probe's queue: close what came before, and pair nothing across it.
                if first_sent >= 0:
                    closed.append((last_sent, group_arrival))
                first_sent = -1.0
                closed.append(None)
            elif first_sent < 0:
                first_sent = last_sent = sent
                group_arrival = arrival
            elif sent - first_sent <= GROUP_S:
                if sent > last_sent:
                    last_sent = sent
                if arrival > group_arrival:
                    group_arrival = arrival
            else:
                closed.append((last_sent, group_arrival))
                first_sent = last_sent = sent
                group_arrival = arrival
        self._group = (first_sent, last_sent, group_arrival) if first_sent >= 0 else None
        if closed:
            self._detect(closed)
        self._last_arrival_us = last_arrival
        self.lost += lost
        self.received += len(fresh) - lost
        self._window_sent += sent_bytes
        self._window_received += received_bytes
        self._control(now, rtt_s)

    # -- detection ----------------------------------------------------------------------

    def _detect(self, groups: list[tuple[float, int] | None]) -> None:
        """The trend of the queue's delay, and overuse read from it, group by group.

        Each group, (last sent, latest arrival us), is paired with the one before it:
        how much later it arrived than it was sent adds to the accumulated delay, whose
        smoothed value's slope over the last WINDOW groups is the trend. The state lives
        in locals for the pass (a hundred groups a second per subscriber) and is written
        back once.
        """
        previous = self._previous
        first_arrival_us = self._first_arrival_us
        samples, accumulated, smoothed = self._samples, self._accumulated, self._smoothed
        floor = self._floor
        line = self._line
        last_ms = self._last_arrival_ms
        threshold = self._threshold
        overuse_ms, overuse_count = self._overuse_ms, self._overuse_count
        trend, usage = self._trend, self.usage
        for group in groups:
            pair, previous = previous, group
            if group is None or pair is None:
                continue
            arrival_us = group[1]
            arrival_ms = (arrival_us - pair[1]) / 1000
            if arrival_ms < 0:
                continue  # reordered across groups: no reading from this pair
            delta_ms = arrival_ms - (group[0] - pair[0]) * 1000
            if first_arrival_us is None:
                first_arrival_us = arrival_us
            samples += 1
            accumulated += delta_ms
            smoothed = SMOOTHING * smoothed + (1 - SMOOTHING) * accumulated
            at_ms = (arrival_us - first_arrival_us) / 1000
            last_x = line.last_x
            if floor is None or smoothed < floor:
                floor = smoothed
            elif last_x is not None:
                floor = floor + FLOOR_RISE_MS_PER_S * max(0.0, at_ms - last_x) / 1000
            slope = line.add(at_ms, smoothed)
            if slope is None:
                continue
            new_trend = slope * min(samples, 60) * TREND_GAIN
            # Detection, per group: the queue's growth against the adaptive threshold.
            step_ms = 0.0 if last_ms is None else min(at_ms - last_ms, 100)
            last_ms = at_ms
            if new_trend > threshold:
                if samples >= WARMUP_SAMPLES and smoothed - floor >= QUEUE_MS:
                    overuse_ms += step_ms
                    overuse_count += 1
                    if overuse_ms > OVERUSE_MS and overuse_count > 1 and new_trend >= trend:
                        usage = Usage.OVERUSE
                # else: rising, but no queue yet: keep the current reading
            elif new_trend < -threshold:
                overuse_ms, overuse_count = 0.0, 0
                usage = Usage.UNDERUSE
            else:
                overuse_ms, overuse_count = 0.0, 0
                usage = Usage.NORMAL
            trend = new_trend
            # The threshold follows the trend's usual size, slowly up and faster down; a
            # spike far above it (a route change, a stall) does not drag it along.
            size = abs(trend)
            excess = size - threshold
            if excess <= 15:
                k = K_DOWN if size < threshold else K_UP
                threshold += k * excess * max(step_ms, 0.0)
                threshold = min(max(threshold, THRESHOLD_MIN_MS), THRESHOLD_MAX_MS)
        self._previous = previous
        self._first_arrival_us = first_arrival_us
        self._samples, self._accumulated, self._smoothed = samples, accumulated, smoothed
        self._floor = floor
        self._last_arrival_ms = last_ms
        self._threshold = threshold
        self._overuse_ms, self._overuse_count = overuse_ms, overuse_count
        self._trend, self.usage = trend, usage

    # -- rate -------------------------------------------------------------------------

    def acked_bps(self) -> float | None:
        """What the receiver got over the last half second of its own clock."""
        rates = self._rates()
        return rates[0] if rates is not None else None

    def _rates(self) -> tuple[float, float] | None:
        """(arrived, sent) bits per second over the packets of the last half second.

        Sent counts the lost packets too: behind a full drop-tail queue the survivors
        arrive as fast as they were sent, and only the losses show we sent too much.
        """
        window = self._window
        if len(window) < 2:
            return None
        newest = window[-1][0]
        oldest = newest - ACKED_WINDOW_US
        if window[0][0] < oldest:
            sent = received = 0.0
            while window and window[0][0] < oldest:
                entry = window.popleft()
                sent += entry[1]
                received += entry[3]
                entry[3] = -1  # no longer in the window: a late report leaves it alone
            self._window_sent -= sent
            self._window_received -= received
            if not window:
                return None
        span_us = max(newest - window[0][0], 100_000)
        # Arrival order is close to send order (audio may overtake video): the ends
        # of the window give its send span without a pass over it.
        sent_s = max(window[-1][2] - window[0][2], 0.05)
        return self._window_received * 8 * 1e6 / span_us, self._window_sent * 8 / sent_s

    def _longest_arrival_gap_us(self) -> int:
        """The longest time between two packets received in the window."""
        longest = 0
        previous = None
        for e in self._window:
            if e[3] > 0 and not e[4]:
                if previous is not None:
                    longest = max(longest, int(e[0] - previous))
                previous = e[0]
        return longest

    def _peak_arrival_bps(self) -> float:
        """The fastest the link delivered `RECENT_PACKETS` received packets in the window.

        Packets that waited in its queue leave it back to back, at its rate; the newest
        ones may be a sparse audio stream behind a drained queue, which says nothing.
        """
        window = [e for e in self._window if e[3] > 0 and not e[4]]
        best = 0.0
        if len(window) < RECENT_PACKETS:
            return best
        # The bytes of each run's packets but its first (which took no arrival time),
        # slid along the window: sizes are whole bytes, so the sum stays exact.
        size = sum(e[3] for e in window[1:RECENT_PACKETS])
        for i in range(len(window) - RECENT_PACKETS + 1):
            first, last = window[i], window[i + RECENT_PACKETS - 1]
            if i:
                size += last[3] - first[3]
            span_s = (last[0] - first[0]) / 1e6
            if span_s >= MIN_PEAK_SPAN_S:
                best = max(best, size * 8 / span_s)
        return best

    def _recent(self) -> _Recent | None:
        """How the newest reported packets fared: the link now, not half a second ago.

        Their timing is read from the received ones only, so random loss does not make
        a link we underuse look slower than what we send. Behind a queue they arrive
        back to back: their rate is the link's, where the half-second average also holds
        the quiet moments before a burst. Their loss share tells a drop-tail queue that
        overflows now from the tail of a flood that has already stopped (those losses
        stay in the half-second window after we sent less).
        """
        window = self._window
        got = lost = timed_n = 0
        timed = 0.0
        first = last = None
        for i in range(len(window) - 1, -1, -1):
            entry = window[i]
            if not entry[3]:
                lost += 1
                continue
            got += 1
            if timed_n < RECENT_PACKETS and not entry[4]:
                timed_n += 1
                last = last or entry
                first = entry
                timed += entry[3]
            if got >= FLOOD_PACKETS and timed_n >= RECENT_PACKETS:
                break
        if first is None or last is None or timed_n < RECENT_PACKETS:
            return None
        arrival_s = (last[0] - first[0]) / 1e6
        sent_s = last[2] - first[2]
        if arrival_s <= 0 or sent_s <= 0:
            return None
        # The first packet took no arrival time, the last no send time.
        arrival_bps = (timed - first[3]) * 8 / arrival_s
        sent_bps = (timed - last[3]) * 8 / sent_s
        return _Recent(arrival_bps / sent_bps, lost / (lost + got), arrival_bps)

    def _control(self, now: float, rtt_s: float) -> None:
        rates = self._rates()
        acked = rates[0] if rates is not None else None
        elapsed = 0.0 if self._last_update is None else min(now - self._last_update, 1.0)
        self._last_update = now
        # Saturated: the link, not we, sets the pace now and over the last half second.
        # Over the half second it delivered less than we sent; the newest packets (read
        # only then: most reports on a link we do not fill skip that pass) arrive slower
        # than they left, or a full queue drops them at its tail.
        behind = rates is not None and rates[0] < SATURATED * rates[1]
        recent = self._recent() if behind else None
        saturated = recent is not None and (recent.ratio < 1.0 or recent.loss > RECENT_FLOOD_LOSS)
        confirmed = saturated and self._was_saturated
        self._was_saturated = saturated
        # A queue that filled where the trend could not see it (during a probe's blind
        # spot, or faster than the groups) stops growing once full: the delay is flat,
        # but the link delivers far less than we send, and the rest is lost at its tail.
        # Only while that goes on for the newest packets: once we send less, the flood's
        # losses linger in the window beside arrivals at our new, lower rate, and a cut
        # read from them would follow our own rate down, halving after halving.
        # And only while the link delivers without a break: an overflowing queue sends
        # its survivors back to back, where a stall (a loaded machine's link relay or
        # receiver, a radio fade) delivers nothing for a while and loses what came
        # meanwhile, whatever we send.
        flooded = (
            confirmed
            and rates is not None
            and rates[0] < FLOODED * rates[1]
            and recent is not None
            and recent.loss > RECENT_FLOOD_LOSS
            and self._longest_arrival_gap_us() <= FLOOD_GAP_US
        )
        self._confirmed = confirmed and (self.usage is Usage.OVERUSE or flooded)
        if self.usage is Usage.OVERUSE and not confirmed:
            # The trend rose, but the link is not (or not twice in a row) delivering
            # slower than we send: a stall and its catch-up, not a queue. No news.
            self.false_overuse += 1
        if self._confirmed:
            self.overused_at = now
            # Each decrease follows what arrives, at most once a round trip (a cut
            # shows in the feedback one round trip later). A queue still draining after
            # a cut delivers faster than we now send: the check above stops there.
            if acked is not None and now - self._last_decrease > max(0.2, rtt_s):
                # The link's rate: the newest packets came out of its queue back to back
                # (a keyframe's short queue on a link we otherwise underuse must not cut
                # the estimate to our own average rate).
                # Flooded, the link was the bottleneck for the whole window: what arrived
                # is its rate (a peak read from a receiver's batched arrival stamps would
                # leave the cut far above it).
                peak = self._peak_arrival_bps()
                link = acked if flooded else max(acked, peak)
                self.decrease_to = DECREASE * link
                self.bps = min(self.bps, self.decrease_to)
                # A reading from a handful of packets (a stall, the tail of a flood) is
                # not the link's capacity: the cut is bounded (the estimator at most
                # halves), but growth must not stop at it.
                thin = self._window_received < MIN_CAPACITY_BYTES
                self.capacity_bps = None if thin else link
                self._last_decrease = now
                assert rates is not None
                self.cuts.append(
                    Cut(
                        now,
                        acked,
                        peak,
                        rates[1],
                        recent.loss if recent is not None else None,
                        "flooded" if flooded else "overuse",
                        self.decrease_to,
                    )
                )
        if self.usage is Usage.NORMAL:
            grown = self.bps * GROWTH_PER_S**elapsed
            if acked is not None:
                grown = min(grown, max(self.bps, 1.5 * acked + 10_000))
            self.bps = grown
        self.bps = max(self.bps, MIN_BPS)

    @property
    def queue_ms(self) -> float:
        """How far the smoothed one-way delay stands above its recent floor: the queue."""
        return 0.0 if self._floor is None else max(0.0, self._smoothed - self._floor)

    @property
    def ready(self) -> bool:
        """Past the start-up readings: overuse can be told from noise."""
        return self._samples >= WARMUP_SAMPLES

    @property
    def overusing(self) -> bool:
        """Overuse the link confirms (what the estimate acts on)."""
        return self._confirmed


_seq = itemgetter(0)
_sent = itemgetter(1)
