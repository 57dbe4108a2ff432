"""When the link of a subscriber without transport-wide feedback overflows, and what it
then carried. Pure: the caller passes the clock.

Such a subscriber (an aiortc peer: aiortc sends no transport-cc, and its per-stream REMB
is not used; the classroom agent reports transport-cc itself since
classroom_agent/transport_feedback.py, and the figures below were measured before
that, with the agent as such a subscriber) tells the SFU only its receiver reports: each stream's loss and, through
the sender report it echoes, the round trip. The loss is counted after our
retransmissions filled most holes (aiortc counts a retransmitted packet as received), so
a 1 Mbit/s line with 5 % loss reads 0-3 %, and the loss rule grows the estimate on it
to twice what we send. On 1mbit-5pct-300ms that let the teacher's 720p (1.1 Mbit/s) in
every 15-25 s; it filled the modem's queue (round trip 330 -> 500-575 ms), a quarter of
the packets were lost and every picture stood still for 2-5 s under "live" until the
back-off took the layer away again (bench/rural.py --receiver agent, main 4a0802e).

An overflow is a report with more than `LOSS_HIGH` lost (and more than the line's own
loss by `OWN_LOSS_MARGIN`) while the round trip stands
`QUEUE_MS` above the lowest of the last `FLOOR_WINDOW_S` (or, at connect, with more than
`FLOOD_LOSS` lost, see below), and while we send at least
`SENDING_SHARE` of the estimate: random loss on a line with an empty queue is not one,
nor is a queue we did not fill (sending 35 kbit/s of a 73 kbit/s estimate on a 256
kbit/s line whose round trip the point's own uplink stretched: that reading pinned the
estimate at its 64 kbit/s floor). What got through then (what left when the reported
packets did, less what the line lost of it before our repairs: `SendLog`) is the link's
capacity, and growth without evidence stops there, as it does at a capacity the
transport-cc detector measured. After `KEEP_S` the reading is retested rather than
forgotten: the subscriber's control loop pads what it sends up to a little above the
capacity for a few seconds (media_server/bandwidth.py), and up to what the next better
layer needs where that is near: a retest that climbs where the lesson wants to go.
Forgetting a reading, or a retest the line carried, let the estimate grow blindly until
the teacher's 720p came back in, a 1.1 Mbit/s layer on a 1 Mbit/s line: its picture
stood still for 5-6 s, with the courseware's, until the next overflow took it away again
(1mbit-5pct-300ms, agent, main f72dbe4). So what a retest showed the line carries is the
new capacity, and only the next retest, soon after, goes further. Each reaches at most
`RETEST_GROWTH` above the capacity: padding that overshoots the line floods its queue
until the first report says so, a second or more later, and the media in that queue is
lost with it (retests that doubled their reach after each pass padded a 1 Mbit/s line at
2.4 Mbit/s and stopped the teacher's picture for 7 s). A line that recovered climbs back
a step every `RETEST_AFTER_PASS_S` and a retest. Padding costs no picture: a
retest the line cannot carry fills its queue for a second or two (its padding stops at
the first report that says so), and then the reading stands twice as long, up to
`RETEST_KEEP_MAX_S` on a line that carried more lately (`recovering`): cheap as a retest
is, a line that has recovered must not wait minutes for its pictures; on one that never
did, up to `KEEP_MAX_S`. A layer that overflows soon after the retest that let it in
is tried ever more rarely (up to `KEEP_MAX_S`). A retest fails on loss above
`RETEST_LOSS` in its reports (or, sooner, on the NACKs the subscriber's control loop
counts).
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
# In the first `START_S` of a subscriber, this much lost is a flood whatever the round
# trip says: at connect the first round trips already come from the flooded queue, so no
# floor below them shows it (256kbit-10pct: the teacher and board stood frozen under
# "live" 7-10 % of the time until the queue rule caught up). Lost before our repairs (as
# the receiver NACKed it): a 2 Mbit/s line offered 3.2 Mbit/s dropped a third at its
# queue, our repairs brought the reports' count down to 10-20 %, and with the round
# trip standing at the queue's 340 ms from the first report on, nothing was read for the
# whole minute (2mbit-100ms-noloss, agent, main d563e17). Random
# loss on a rural line stays far below; an outage (nothing through) is no capacity
# reading. Later a floor is known, and only a standing queue says overflow: a stall of
# our own process (a starved CPU drops packets in bursts) must not cap a link for minutes.
FLOOD_LOSS = 0.3
# What a flood at connect reads (no floor below its round trips yet) is rough: its
# reports and NACKs come late, and are lost on the point's own uplink, crowded at connect
# too (1,177 kbit/s on a 1 Mbit/s line; 134 on a 256 kbit/s one). Such a reading is
# provisional: retested after PROVISIONAL_KEEP_S and climbed as a line that recovered
# until a retest fails (see recovering()).
PROVISIONAL_KEEP_S = 5.0
OUTAGE_LOSS = 0.8
START_S = 30.0
# The line's own loss before a retest (from NACKs) is read over at least this many video
# packets a second (a 256 kbit/s point gets 30-40).
RAW_LOSS_MIN_PPS = 10.0
# A receiver report covers about this long of what we sent, a round trip before it
# arrives (aiortc reports every 0.5-1.5 s).
REPORT_SPAN_S = 1.0
# A span between two reports is read within these bounds: a report lost on the point's
# uplink doubles the next one's span, and the log keeps LOG_S.
MIN_SPAN_S = 0.25
MAX_SPAN_S = 3.0
# The line's own loss, before a retest, is read over this long.
LOSS_SPAN_S = 5.0
LOG_S = 6.0
# A retest pads up to this multiple of the kept capacity (at most what the sources want).
RETEST_GROWTH = 1.3
# A retest fails on a report with more than this lost: an overflowing drop-tail queue
# loses a fifth and more of what it gets, where the line's own 10 % random loss reads
# over 10 % in nearly every other report (a retest's verdict at 10 % failed there by
# chance, and left the courseware paused at a 81 kbit/s reading all lesson).
RETEST_LOSS = 0.2
# After a retest the line carried, the next comes this soon (if the sources want more).
RETEST_AFTER_PASS_S = 1.5
# A retest that lets no layer in even if it passes (the next rise is beyond reach: a
# step towards it) while every source has a picture waits this long after a reading,
# and twice as long after each one that fails, up to KEEP_MAX_S: on a 1 Mbit/s line
# already full, padding 1.3x over it stopped the teacher's and the courseware's pictures
# for 3 s each time, and the teacher's 720p (1.46 Mbit/s with the rest) never fits
# there. After a step the line carried, the climb goes on at once: the line has grown.
# Towards a rise that an earlier reading of the same start-up saw get through, a step
# need not wait: a start-up's later flood readings read the line low (their reports
# still count the first flood's queue draining: 1 Mbit/s lines read 778 then 416
# kbit/s, 733 then 258), and with every picture shown at a low layer the teacher stayed
# at 180p all minute while the step to its 360p waited (two runs of six,
# docs/benchmarks.md, tenth December stop). Only towards such a rise, not up to the
# earlier reading: a first reading over-reads a 1 Mbit/s line as often (1,093-1,657
# kbit/s), and a step towards it from what the layers send failed and stopped the
# courseware for 3-5 s. And only while a picture is shown at the lowest of three layers
# (a thumbnail): with the teacher at 360p, steps after such an over-read ran towards the
# courseware's full layer, which a 1 Mbit/s line hardly carries, and the retest after
# them failed and stopped the courseware for 3 s (one run in three, eleventh December
# stop). A single reading sets no ceiling at all.
STEP_KEEP_S = 90.0
# A line that recovered waits at most this, a retest (~5 s) and the estimate's growth
# (~25 s from 115 kbit/s to the board's layer) for its pictures; at 60 s the board of
# tests/test_rural_link_netns.py came back in time in one run of two. A line recovers
# when it carried over RETEST_GROWTH times the reading in the last CARRIED_S.
RETEST_KEEP_MAX_S = 40.0
CARRIED_S = 300.0
# A report is lossy ("more than LOSS_HIGH") only when it also loses this much more than
# the line's own loss: the average of the reports that came with no queue standing,
# each weighing OWN_LOSS_WEIGHT. A 256 kbit/s line's own 10 % reads 5-16 % a report
# after our repairs; two such reports over a round trip that an aiortc point's event
# loop stretched read an overflow at 88 kbit/s while we sent 93, and paused the
# courseware for the last 40 s of the minute. An overflowing queue loses a fifth and
# more of what it gets.
OWN_LOSS_MARGIN = 0.08
OWN_LOSS_WEIGHT = 0.1
# The reports that come in this soon after a retest ends (and a round trip) still count
# its padding's numbers and its queue's losses: no reading of the line. One, a tick
# after a failed retest on a 256 kbit/s line, read an overflow at 51 kbit/s from the
# padding's NACKs, and every picture stayed paused for the rest of the minute (main
# 207ad6d).
RETEST_AFTERMATH_S = 2.0
# Readings and retests kept for the ops page and the benchmark's trace.
EVENTS_KEPT = 16


class OverflowWatch:
    def __init__(self) -> None:
        # (when, round trip ms), increasing round trips: the front is the window's floor.
        self._rtts: deque[tuple[float, float]] = deque()
        self._capacity: float | None = None
        self._read_at = float("-inf")  # the last overflow reading
        self._passed_at = float("-inf")  # the last retest the line carried
        self._due_at = float("inf")  # the next retest
        self._step_due_at = float("-inf")  # the next retest that is only a step
        self._step_keep_s = STEP_KEEP_S
        self._stepping = False  # the running retest is only a step
        self._flood_most = 0.0  # the most a start-up flood's reading saw get through
        # Steps towards a rise up to this need not wait (an earlier flood of this
        # start-up read more).
        self._step_ceiling: float | None = None
        self.passes_in_row = 0  # retests the line carried since its last overflow or failure
        self._keep_s = KEEP_S
        self._started_at: float | None = None
        self._retesting = False
        self._retest_failed = False
        self._failed_by = ""  # what failed the running retest (its event says)
        self._high = False  # the last report was lossy (see OWN_LOSS_MARGIN)
        self._own_loss = 0.0  # the line's own loss, from reports with no queue standing
        self._provisional = False  # the capacity is a start-up flood's, not yet retested
        # The capacity is a start-up flood's reading no retest confirmed (a retest of
        # it failed once one ended since: see flood_doubted).
        self._flood_read = False
        # (when, bits/s) the line carried without a queue, decreasing: the front is the
        # most of the last CARRIED_S (see recovering()).
        self._carried: deque[tuple[float, float]] = deque()
        self._retest_ended_at = float("-inf")
        self.overflows = 0
        self.retests_passed = 0
        self.retests_failed = 0
        # The last readings and retests, as the ops page shows them.
        self.events: deque[dict[str, float | str | bool | None]] = deque(maxlen=EVENTS_KEPT)

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

    def queue_free(self, rtt_ms: float | None) -> bool:
        """The round trip is known and stands within QUEUE_MS of its floor: no queue."""
        floor = self.floor_ms()
        return rtt_ms is not None and floor is not None and rtt_ms - floor < QUEUE_MS

    def on_report(
        self,
        loss: float,
        sent_bps: float,
        estimate_bps: float,
        rtt_ms: float | None,
        now: float,
        raw_loss: float | None = None,
    ) -> bool:
        """One tick's loss (0..1), what we sent, the estimate it was sent under and the
        latest round trip; True when it was an overflow. `raw_loss`, where known, is the
        loss before our repairs (the report's counts repaired packets as received): what
        a reading and a retest's verdict go by."""
        lost_on_line = max(loss, raw_loss or 0.0)
        floor = self.floor_ms()
        queued = rtt_ms is not None and floor is not None and rtt_ms - floor >= QUEUE_MS
        if self._retesting:
            # The padding's queue (or its losses) says the line does not carry more.
            # Not a reading: what we sent then was partly padding, counted nowhere.
            # The round trip is no verdict: an aiortc point's wanders by 300 ms with its
            # own event loop (630-915 ms on a 100 ms line at rest), and with a queue and
            # 2 % lost a 607 kbit/s reading failed its retest on a 1 Mbit/s line.
            if lost_on_line > RETEST_LOSS and not self._retest_failed:
                self._retest_failed, self._failed_by = True, "report"
            self._high = False
            return False
        aftermath = now - self._retest_ended_at < (rtt_ms or 0.0) / 1000 + RETEST_AFTERMATH_S
        # A report whose packets left before the last reading cut the rate: read against
        # what left a round trip ago, the flood's losses read the line lower at each
        # report (1,283, 419, then 272 kbit/s on a 1 Mbit/s line, a second apart, and
        # the teacher at 180p all minute; 1,125 down to 104 on a 256 kbit/s one, and
        # the courseware paused all minute: main 7d5d78e). The reading has that
        # overflow.
        if aftermath or self.draining(rtt_ms, now):
            self._high = False  # (nor is it the first of an overflow's two reports)
            return False
        starting = self._age(now) < START_S
        flooded = FLOOD_LOSS < lost_on_line < OUTAGE_LOSS and starting
        lossy = max(LOSS_HIGH, self._own_loss + OWN_LOSS_MARGIN)
        # At connect only from reports that NACKed little: a queue standing from the
        # first report on sets the floor, and its losses would pass for the line's own
        # (2mbit-100ms-noloss: nothing was read all minute). Not learned at all then, a
        # 256 kbit/s line's own 15 % at 26 s read an overflow at 70 kbit/s and paused the
        # courseware for 25 s.
        calm = not starting or (raw_loss is not None and raw_loss <= LOSS_HIGH)
        if floor is not None and rtt_ms is not None and not queued and calm:
            self._own_loss += OWN_LOSS_WEIGHT * (min(loss, FLOOD_LOSS) - self._own_loss)
        high_before, self._high = self._high, loss > lossy
        if not flooded and (loss <= lossy or not queued):
            return False
        if not (high_before or flooded):
            # One report's count strays above 10 % now and then on a line with 10 %
            # random loss (a few dozen packets a report), and an aiortc point's round
            # trip wanders: together they once read 85 kbit/s on a 256 kbit/s line that
            # carried 100 and paused the courseware. An overflowing queue loses for
            # longer than one report.
            return False
        if sent_bps < SENDING_SHARE * estimate_bps:
            return False
        if self._passed_at > self._read_at:
            # The first overflow after a retest the line carried: soon after, the layer
            # it let in does not fit after all, and the line is asked again ever more
            # rarely; long after, a new situation.
            if now - self._passed_at < self._keep_s:
                self._keep_s = min(2 * self._keep_s, KEEP_MAX_S)
            else:
                self._keep_s = KEEP_S
        # A flood at connect is read roughly (see PROVISIONAL_KEEP_S): until a retest
        # fails, the line is climbed as one that recovered.
        self._provisional = flooded and not queued
        self._flood_read = flooded
        self._capacity = sent_bps * (1 - lost_on_line)
        earlier = self._flood_most
        self._step_ceiling = earlier if flooded and earlier > self._capacity else None
        if flooded:
            self._flood_most = max(earlier, self._capacity)
        self._read_at = now
        # A rough reading is retested as soon as the flood's queue has drained: at 20 s,
        # a 1 Mbit/s line read at 488 kbit/s kept the teacher at 180p for half a minute.
        self._due_at = now + (PROVISIONAL_KEEP_S if self._provisional else self._keep_s)
        self.passes_in_row = 0
        # (A failed step may have set a later time.)
        self._step_due_at = max(self._step_due_at, now + self._step_keep_s)
        self.overflows += 1
        self.events.append(
            {
                "at": round(now, 2),
                "what": "flood" if flooded else "overflow",
                "bps": round(self._capacity),
                "sent_bps": round(sent_bps),
                "lost": round(lost_on_line, 3),
                "rtt_ms": round(rtt_ms, 1) if rtt_ms is not None else None,
                "floor_ms": round(floor, 1) if floor is not None else None,
            }
        )
        return True

    def draining(self, rtt_ms: float | None, now: float) -> bool:
        """The reports now still count packets sent before the last reading: the
        overflow it read, not a new one."""
        return now - self._read_at < (rtt_ms or 0.0) / 1000 + REPORT_SPAN_S

    def note_carried(self, bps: float, now: float) -> None:
        """The line delivered `bps` with no queue standing and little lost. Not in the
        first START_S: a flood's first reports come before its queue shows."""
        if self._age(now) < START_S:
            return
        carried = self._carried
        while carried and carried[-1][1] <= bps:
            carried.pop()
        carried.append((now, bps))
        while carried[0][0] < now - CARRIED_S:
            carried.popleft()

    def recovering(self, now: float) -> bool:
        """The line carried well over the kept capacity in the last CARRIED_S: a thin
        spell it may have come out of, worth climbing back from quickly; or its only
        reading is a start-up flood's, read roughly (363 kbit/s on a 1 Mbit/s line kept
        the teacher at 180p all minute while steps waited). A line that never carried
        more is not: steps padding a 256 kbit/s line at 1.69x the reading stopped the
        courseware, its only picture, for 3-5 s each."""
        capacity = self._capacity
        if capacity is None:
            return False
        carried = self._carried_most(now)
        return self._provisional or (carried is not None and carried > RETEST_GROWTH * capacity)

    def _carried_most(self, now: float) -> float | None:
        """The most the line carried queue-free in the last CARRIED_S (None: nothing)."""
        carried = self._carried
        while carried and carried[0][0] < now - CARRIED_S:
            carried.popleft()
        return carried[0][1] if carried else None

    def capacity(self) -> float | None:
        """What the link carried at its last overflow, or in the last retest it passed."""
        return self._capacity

    def flood_doubted(self, now: float, every_picture_shown: bool) -> float | None:
        """Where the capacity is a start-up flood's reading no retest confirmed, and a
        retest of it failed or `every_picture_shown`: what the line has carried
        queue-free since (after START_S), the most in CARRIED_S, or 0.0 where nothing
        yet; None while the reading is not doubted.

        A flood's NACKs come late and are lost on the point's crowded uplink: 11 runs
        of 20 read a 1 Mbit/s line (5 % lost) at 1,139-1,535 kbit/s. Its first retest,
        1.2-1.3x above, failed and stopped the courseware or the teacher for 1-3 s (five
        runs of 13 on main 19f72be to 975407c); 40 s later the next one had padded
        there again from the 780 the layers sent, failed too, and stopped the
        courseware for 3-5 s (four runs on main cf6740c to 0fa3733;
        docs/benchmarks.md, ninth December stop). Climbing from what the line carried,
        or the layers send, a retest reaches for what is within its reach of that.
        While a picture is paused for bandwidth, an unconfirmed reading is climbed
        from until a retest fails: a picture is worth a retest's risk, and most
        256 kbit/s lines read their flood low (75-215 kbit/s on a line that takes
        about 270), where climbing from what the courseware alone sends would take a
        step more to the teacher's picture."""
        failed = self._retest_ended_at > self._read_at  # (a pass ends _flood_read)
        if not (self._flood_read and (failed or every_picture_shown)):
            return None
        return self._carried_most(now) or 0.0

    def retest_due(self, now: float) -> bool:
        """The reading has been kept its time and no retest runs: try the line again."""
        return self._capacity is not None and not self._retesting and now >= self._due_at

    def step_due(self, now: float, towards_bps: float, thumbnail: bool = False) -> bool:
        """A retest that would let no layer in, a step towards a rise that needs
        `towards_bps`, may run too (see STEP_KEEP_S); `thumbnail`: a picture is shown
        only at the lowest of three layers."""
        ceiling = self._step_ceiling
        early = thumbnail and ceiling is not None and towards_bps <= ceiling
        return now >= self._step_due_at or early

    def start_retest(self, step: bool = False) -> None:
        self._retesting = True
        self._retest_failed = False
        self._failed_by = ""
        self._stepping = step

    def fail_retest(self, by: str = "nacks") -> None:
        """The receiver's NACKs already show the padding's queue overflowing (`by`:
        which count said so, for the retest's event)."""
        if self._retesting and not self._retest_failed:
            self._retest_failed, self._failed_by = True, by

    @property
    def retest_failed(self) -> bool:
        """A retest's report already said the line does not carry it."""
        return self._retesting and self._retest_failed

    def end_retest(self, now: float, padded_to_bps: float) -> bool:
        """After the retest's reports are in: True when the line carried `padded_to_bps`
        (the new capacity; the next retest comes soon); otherwise the reading stands
        again, twice as long."""
        self._retesting = False
        self._retest_ended_at = now
        self.events.append(
            {
                "at": round(now, 2),
                "what": "retest",
                "bps": round(padded_to_bps),
                "passed": not self._retest_failed,
                "failed_by": self._failed_by or None,
                "step": self._stepping,
            }
        )
        if self._retest_failed:
            self._provisional = False
            recovering = self.recovering(now)
            if not (recovering and self._passed_at > self._read_at):
                longest = RETEST_KEEP_MAX_S if recovering else KEEP_MAX_S
                self._keep_s = max(self._keep_s, min(2 * self._keep_s, longest))
            # (Else a line that carried more lately grew since the reading, and may go
            # on growing: no longer keep. A recovered line's one failed step in a climb
            # kept it 40 s, and its board came back only after 90 s. A line that never
            # carried more is kept as after any failure: kept no longer after a pass, a
            # 256 kbit/s line's retest towards the board failed again 22-29 s after the
            # first in five runs of 24, each time stopping the courseware for up to 5 s.)
            self._due_at = now + self._keep_s
            self.passes_in_row = 0
            if self._stepping:
                self._step_keep_s = min(2 * self._step_keep_s, KEEP_MAX_S)
                self._step_due_at = now + self._step_keep_s
                self._step_ceiling = None  # the line said where it ends
            self.retests_failed += 1
            return False
        self._capacity = max(self._capacity or 0.0, padded_to_bps)
        # A flood's reading the line carried is rough no more: from here the line
        # climbs as any other, 1.3x a retest, unless it carried more lately. Still
        # provisional, the next retest reached 1.69-2.2x the pass and overflowed the
        # line for 2-3 s (256kbit-10pct and 1mbit-5pct-300ms, agent: teacher frozen
        # 6.9 % after a retest to 620 kbit/s; docs/benchmarks.md, ninth December stop).
        self._provisional = False
        self._flood_read = False
        self._passed_at = now
        self._due_at = now + RETEST_AFTER_PASS_S
        self._step_keep_s = STEP_KEEP_S
        if self._stepping:
            self._step_due_at = self._due_at  # the line grew past a step: climb on
        else:
            # A pass that let the next layer in says nothing of the line beyond it: on
            # 1mbit-5pct-300ms the courseware's full layer came in at 941 kbit/s, and a
            # step 5 s later padded 1.3x over the full line and stopped the teacher for
            # 3 s. The next step waits as after a reading.
            self._step_due_at = max(self._step_due_at, now + STEP_KEEP_S)
        self.passes_in_row += 1
        self.retests_passed += 1
        return True

    @property
    def keep_s(self) -> float:
        return self._keep_s


class SendLog:
    """What the subscriber's control loop sent, tick by tick, so that a receiver report
    is read against the packets it counts: those that left a round trip before it came.
    What was sent is every payload, repairs and padding too: all of it took the line
    (media alone read a 1 Mbit/s line at 696 kbit/s after a flood's repairs, and the
    courseware's full layer was out of a retest's reach all lesson).

    Read against what we send now, the reports after a reading still counted the
    flood's losses against the cut rate: 320, 135, 125, then 75 kbit/s on a 256 kbit/s
    line, and the courseware paused for 40 s (256kbit-10pct, agent). The loss a report
    gives counts a repaired packet as received (a flood that lost half its packets read
    15-35 %): the loss on the line is what the receiver NACKed of the numbers the report
    covers (`DownTrack.stats.report_nacked`). The video's packets and NACKs per tick
    give the line's own loss before a retest.
    """

    def __init__(self) -> None:
        # (start, end, bits/s, video packets/s, NACKed/s) of each tick.
        self._ticks: deque[tuple[float, float, float, float, float]] = deque()

    def add(self, start: float, end: float, bps: float, video_pps: float, nacked_ps: float) -> None:
        self._ticks.append((start, end, bps, video_pps, nacked_ps))
        while self._ticks and self._ticks[0][1] < end - LOG_S:
            self._ticks.popleft()

    def recent_loss(self, now: float, span_s: float = LOSS_SPAN_S) -> float | None:
        """The video's loss before repairs over the last `span_s` (None: too few packets)."""
        packets = nacked = 0.0
        for start, end, _, pps, nacked_ps in self._ticks:
            overlap = min(end, now) - max(start, now - span_s)
            if overlap > 0:
                packets += pps * overlap
                nacked += nacked_ps * overlap
        return min(1.0, nacked / packets) if packets >= RAW_LOSS_MIN_PPS * span_s else None

    def sent_then(self, now: float, rtt_s: float, span_s: float | None = None) -> float | None:
        """What left (bits/s) over the `span_s` (the time since the report before;
        REPORT_SPAN_S where unknown) before `now - rtt_s`: the time the numbers of a
        receiver report arriving now were sent in (None: not logged).

        Its loss is what the receiver NACKed of every number since the report before:
        aiortc reports every 0.5-2 s. Read against the last second alone, a report two
        seconds after a flood's reading counted the flood's first second's losses
        against the cut rate of its second, and read a 256 kbit/s line at 75-126
        kbit/s (sent 133-270 kbit/s, 44-57 % NACKed) in five runs of six (main cf6740c
        and b100223), where it carries about 240; the courseware's lowest layer did not
        fit beside the audio, and it stayed paused for most of the minute."""
        if not self._ticks:
            return None
        span_s = REPORT_SPAN_S if not span_s else min(max(span_s, MIN_SPAN_S), MAX_SPAN_S)
        hi = now - rtt_s
        lo = hi - span_s
        covered = bits = 0.0
        for start, end, bps, _, _ in self._ticks:
            overlap = min(end, hi) - max(start, lo)
            if overlap > 0:
                covered += overlap
                bits += bps * overlap
        if covered < span_s / 2:
            return None
        return bits / covered
