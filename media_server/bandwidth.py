"""A subscriber's bandwidth control: estimate, allocate, pace. Runs beside the hot path.

Once a second the subscriber's control loop calls `tick`: the receiver reports that
arrived since the last tick feed the loss side of the estimate, the estimate sets the
pacer's rate and the repair budget, and the allocator shares it among the subscribed
sources. What changed goes to the subscriber as an `allocation` message
(docs/protocol.md), so a paused picture is shown as paused, never as a frozen "live" one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from media_server.allocator import (
    Candidate,
    Decision,
    allocate,
    layer_bps,
    lowers,
    rank,
    rise_budgets,
    rises,
)
from media_server.delay_estimate import QUEUE_MS, DelayEstimate
from media_server.downtrack import DownTrack, RepairBudget
from media_server.estimator import INITIAL_BPS, LOSS_HIGH, DownlinkEstimator
from media_server.holds import SourceHolds
from media_server.overflow import RETEST_GROWTH, OverflowWatch, SendLog
from media_server.pacer import PACING_FACTOR, Pacer, PriorityLane
from media_server.probe import CLUSTER_S, WORTH_PROBING, Probe, ProbeController
from media_server.sink import PacketSink
from media_server.source import MediaSource
from media_server.twcc import SendHistory, feedback_in, only_feedback

# Leave room for retransmissions, RTCP and header overhead (the estimate counts IP, UDP
# and SRTP bytes, a layer's measured rate only RTP: ~4 % at our packet sizes).
ALLOCATION_SHARE = 0.9
# Bursts leave at least this much faster than the estimate, however low the capacity.
BURST_OVER_ESTIMATE = 1.1
# What is already being sent stays while it fits in this share and nothing says congested.
KEEP_SHARE = 0.97
# A layer rises only after the estimate has allowed it, without a drop, for this long;
# each drop soon after a rise doubles the wait (a link that cannot carry the next layer
# is not asked every few seconds), and a long calm period resets it.
HOLD_S = 4.0
HOLD_MAX_S = 16.0
PROBE_STEP_S = 0.01
PROBE_MAX_PACKETS = 64  # per step: 64 x ~1.2 kB in 10 ms is ~60 Mbit/s, far above any target
# The probe's own queue drains after the cluster: at most this long is left out of the
# delay trend after it.
PROBE_DRAIN_MAX_S = 0.3
# A retest of an overflow reading (subscribers without transport-cc) pads for this long:
# a 1 Mbit/s line with a 250 ms queue fills it in about a second at 1.3x, and aiortc
# reports every 0.5-1.5 s. Its verdict waits a round trip and one more report.
RETEST_S = 2.5
RETEST_REPORT_S = 1.5
# A retest stops at once when, over its last `NACK_WINDOW_S`, the receiver reported
# lost more than `NACK_LOSS` of the video packets we sent (at least `NACK_MIN` of them):
# NACKs come within a packet of the loss, receiver reports every 0.5-1.5 s. Waiting for
# a report let a failed retest overflow a 1 Mbit/s line for 1.3 s, and the repairs
# queued behind it stopped the teacher's picture for 4 s. A line's own 5 % lost reads
# 8 NACKed of 33 packets one window in thousands; an overflowing queue, a quarter.
NACK_WINDOW_S = 0.3
NACK_LOSS = 0.2
NACK_MIN = 8
# A retest fails when the line lost this much more of its own video packets than of
# those before it (counted over at least RETEST_MIN_PACKETS): a 256 kbit/s line's own
# 10 % lost reads within 2-3 points over a retest's 150-200 packets; padding 1.2x over
# it, 10-18 points more.
RETEST_EXCESS = 0.06
RETEST_MIN_PACKETS = 60
# The loss before repairs is read from what the receiver NACKed of the numbers its
# reports cover, over at least this many.
RAW_LOSS_MIN_PACKETS = 10
# During a retest, a report's NACKed share, or its own share lost, fails it
# (overflow.RETEST_LOSS) only over at least this many numbers: a retest's 1.2 kB probes
# on a thin line make reports of a dozen, where a line's own 10 % loses 3 of 12 in one
# report of nine (a retest padding a 256 kbit/s line at 99 kbit/s failed at once, and
# the courseware stayed paused for 45 s). The whole retest's own packets still give
# their verdict (RETEST_EXCESS).
RETEST_RAW_MIN_PACKETS = 30
# While the estimate stands below this share of the reading, a retest climbs from the
# estimate.
RETEST_FROM = 0.95
# No retest starts this soon after a layer changed: a rise's keyframes are still on
# their way (1mbit-5pct-300ms: the courseware's full layer came in as a retest began;
# its keyframe and the padding overflowed the line and the courseware stood still 8 s).
SETTLE_S = 5.0
# Until a subscriber has sent any feedback (a receiver report, a NACK, a keyframe
# request, transport-cc), it gets what fits this: the audio and a picture's low layer.
# Its end of the path may not be up yet: the last flight of its DTLS handshake crosses
# the same line, and lost there (a 256 kbit/s line loses 10 %), it comes again only
# after the subscriber's retransmission timer, 1, 2, 4 s and on. Flooded with the whole
# lesson at 2.5 Mbit/s meanwhile, the line dropped seven packets in eight, the
# handshake's with them: in 3 of 26 runs of bench/rural.py (256kbit-10pct, point agent)
# the point heard nothing for 16-35 s, while the SFU sent it 2 Mbit/s with no report
# back for 5-30 s; in one its lesson WebSocket died too. The first report comes within
# a round trip and about a second of the first packets. After UNHEARD_MAX_S the
# subscriber gets its lesson all the same (a client that never reports; one whose
# reports are all lost): by then a lost last flight has been sent again twice (at 1 and
# 3 s), through a line that carried only the audio.
UNHEARD_BPS = 150_000
UNHEARD_MAX_S = 5.0
# A subscriber that negotiated transport-cc reports within a round trip of its first
# packets, once its end of the path is up: until then it waits longer. After 5 s, a
# point agent whose handshake's last flight the 256 kbit/s line had lost twice got the
# whole lesson at 2 Mbit/s for 7 s before its first report, and the estimate fell from
# that flood to its 64 kbit/s floor, the courseware paused half the minute.
UNHEARD_MAX_TCC_S = 20.0
# A transport-cc subscriber first heard from only after UNHEARD_MAX_S had a path that
# would not come up (its handshake's last flight lost again and again: a thin, lossy
# line). Its estimate starts here, as GCC's does, and probes climb from it. From the
# initial 2.5 Mbit/s, the whole lesson flooded such a line for 3 s: in tcc5 c2
# (256kbit-10pct, point agent, first report 14 s after joining) audio lost 9.5 % of
# the minute and the teacher and board stood still under "live".
LATE_START_BPS = 300_000
# Transport-cc loss is read once a tick over at least this many reported packets.
MIN_LOSS_PACKETS = 20
CALM_S = 60.0
# A probe reading this far above the link's measured capacity says the link grew (a 1 ->
# 5 Mbit/s step reads 3x): the hold is lifted. Nearer, it is the same link read again.
LINK_GREW = 1.25
# A video at this many frames a second or fewer is sparse: the loss of a frame's last
# packet shows only with the next frame (DownTrack.tail_padding); on a line that loses
# this much before our repairs, each frame gets a tiny padding packet behind it.
TAIL_PAD_MAX_FPS = 10.0
TAIL_PAD_LOSS = 0.01


def link_grew(probe_bps: float, known_bps: float | None) -> bool:
    """A probe read the link well above what it was last measured to carry.

    Only such news lifts the rise hold at once. A probe that merely confirms the known
    capacity (a 1 Mbit/s link read at 0.95-1.05 Mbit/s after each cut) must not: the
    hold was doubled because rises on that link did not hold, and resetting it let the
    courseware and the board flip every 3-4 s there (merged main, steps-5-1-5-3pct).
    """
    return known_bps is None or probe_bps > LINK_GREW * known_bps


def _no_focus(source: MediaSource) -> bool:
    return False


def _heard_from(down: DownTrack) -> bool:
    """The subscriber sent feedback about this track: its end of the path is up."""
    stats = down.stats
    return bool(stats.reports or stats.nacks or stats.keyframe_requests)


def _no_queue() -> float:
    return 0.0


def _top_cost(c: Candidate) -> int:
    """What a source costs at the best layer the subscriber allows (0 when paused by it)."""
    if c.user_paused or not c.layers:
        return 0
    usable = [x for x in c.layers if c.pinned is None or rank(x) <= rank(c.pinned)]
    return layer_bps(c, max(usable or list(c.layers), key=rank))


def thumbnail(videos: list[Candidate]) -> bool:
    """Whether a picture is shown only at the lowest of three layers or more (the
    teacher's 320x180 on a classroom's screen): a step towards more is worth taking
    sooner (OverflowWatch.step_due). Lowest by rank, not by measured rate: a layer
    nobody receives is not encoded and measures 0."""
    return any(
        c.current is not None and len(c.layers) >= 3 and c.current == min(c.layers, key=rank)
        for c in videos
    )


class SubscriberBandwidth:
    def __init__(
        self, wire: PacketSink, *, adaptive: bool = True, initial_bps: int = INITIAL_BPS
    ) -> None:
        self.adaptive = adaptive
        # Whether a source is the lesson's focus (set by the room: the called-on point).
        self.focus: Callable[[MediaSource], bool] = _no_focus
        # The queue on the subscriber's own uplink, where its receiver reports wait
        # behind what it publishes (set by the participant; media_server/uplink.py).
        self.uplink_queue_ms: Callable[[], float] = _no_queue
        self.estimator = DownlinkEstimator(initial_bps=initial_bps)
        start = self.estimator.estimate(0.0).bps
        self.pacer = Pacer(wire, start)
        self.audio_lane = PriorityLane(self.pacer)
        self.repair = RepairBudget(start)
        self._wire = wire
        self._last_down = float("-inf")
        self._last_up = float("-inf")
        self._hold_s = HOLD_S
        # The sources whose rises did not hold wait longer still (media_server/holds.py).
        self.source_holds = SourceHolds()
        self._last_tick: float | None = None
        # Out SSRC -> (media, other) octets sent at the last tick.
        self._octets: dict[int, tuple[int, int]] = {}
        self._held_mark = 0  # the pacer's queued bytes at the last tick
        # Video: out SSRC -> (packets sent, of them NACKed) at the last tick.
        self._video_marks: dict[int, tuple[int, int]] = {}
        self.sent_log = SendLog()
        self._started: set[str] = set()
        self._announced: Any = None
        self.estimate_bps = start
        self.transport_seq: Iterator[int] | None = None  # set once transport-cc is on
        self.prober = ProbeController()
        self._probe_timer: asyncio.Handle | None = None
        self._downtracks: list[DownTrack] = []
        self._probe_last_step = 0.0
        self._probe_bytes_left = 0.0
        # Transport-cc (lost, received) at the last loss reading.
        self._loss_mark = (0, 0)
        self._history: SendHistory | None = None
        self._delay: DelayEstimate | None = None
        self.feedback_reports = 0
        # Set once, on the tick a transport-cc subscriber first heard from only after
        # UNHEARD_MAX_S started low: {"after_s", "estimate_bps"} (ops, tests).
        self.late_start: dict[str, float] | None = None
        self._heard = False  # the subscriber has sent feedback (see UNHEARD_BPS)
        self._first_tick: float | None = None
        self._layer_bps: dict[str, dict[str, int]] = {}  # what the allocator last assumed
        # Without transport-cc: the link's capacity, read at its overflows.
        self.overflow = OverflowWatch()
        self._retest: Probe | None = None
        # During a retest: (when, video packets sent, of them NACKed) every probe step.
        self._retest_marks: deque[tuple[float, int, int]] = deque()
        # The retest's own video packets: (downtrack, first sequence number, end or
        # None while it pads), and the line's loss before it (see _retest_lost_more).
        self._retest_seqs: list[tuple[DownTrack, int, int | None]] = []
        self._retest_baseline: float | None = None

    def use_transport_cc(self, ext_id: int) -> None:
        """The subscriber negotiated transport-cc: stamp, record, estimate from feedback."""
        if self._history is not None or not self.adaptive:
            return
        self._history = SendHistory()
        self._delay = DelayEstimate(self.estimate_bps)
        self.transport_seq = itertools.count()
        self.pacer.note_transport_cc(self._history, ext_id)

    def on_rtcp(self, data: bytes, now: float) -> bool:
        """Raw RTCP from the subscriber (plaintext): transport-cc feedback is read here.
        True when the packet held nothing else (no other reader needs it)."""
        history, delay = self._history, self._delay
        if history is None or delay is None:
            return False
        for feedback in feedback_in(data):
            self.feedback_reports += 1
            rtt_s = (self.estimator.rtt_ms or 100.0) / 1000
            results = history.match(feedback, now)
            if self.prober.active is not None:
                self.prober.collect(results)
            delay.on_feedback(results, now, rtt_s)
            self.estimator.on_delay(
                delay.bps, delay.overusing, now, delay.decrease_to, delay.capacity_bps
            )
        return only_feedback(data)

    def sink_for(self, kind: str) -> PacketSink:
        if not self.adaptive:
            return self._wire
        return self.audio_lane if kind == "audio" else self.pacer

    def tick(self, downtracks: Sequence[DownTrack], now: float) -> dict[str, Any] | None:
        """One control step; returns the `allocation` message when it changed."""
        active = [d for d in downtracks if d.source is not None]
        self._measure_sent(active, now)
        self._feed_loss(active, now)
        if (
            not self._heard
            and self._delay is not None
            and self.feedback_reports
            and self._first_tick is not None
            and now - self._first_tick >= UNHEARD_MAX_S
        ):
            self.estimator.start_low(LATE_START_BPS)
            late_s = now - self._first_tick
        else:
            late_s = None
        estimate = self.estimator.estimate(now)
        if late_s is not None:
            self.late_start = {"after_s": round(late_s, 1), "estimate_bps": estimate.bps}
        self.estimate_bps = estimate.bps
        probe = self.prober.active or self._retest
        self.pacer.set_rate(int(probe.target_bps) if probe else self._pacing(estimate.bps))
        self.repair.set_rate(estimate.bps)
        if not self.adaptive:
            return None
        candidates = [self._candidate(d, now) for d in active]
        self._layer_bps = {c.source: c.layers for c in candidates if c.kind == "video"}
        self.estimator.demand_bps = sum(_top_cost(c) for c in candidates) / ALLOCATION_SHARE
        self._downtracks = active
        if not self._heard:
            if self._first_tick is None:
                self._first_tick = now
            wait = UNHEARD_MAX_S if self._delay is None else UNHEARD_MAX_TCC_S
            self._heard = (
                self.feedback_reports > 0
                or any(_heard_from(d) for d in active)
                or now - self._first_tick >= wait
            )
        if not self._heard:
            # Nothing told the subscriber yet: what it gets may still change before it
            # hears a thing, and a page shown "paused for bandwidth" at every join would
            # be a false alarm.
            for down, decision in zip(active, self._unheard(candidates), strict=True):
                down.allocate(decision.layer, decision.paused)
            return None
        self._maybe_probe(estimate.bps, now)
        self._maybe_retest(candidates, now)
        if now - max(self._last_down, self._last_up) > CALM_S:
            self._hold_s = HOLD_S
        # No rise while a retest pads: the rise's keyframes would join the padding in
        # the line's queue, and be lost with it when the line does not carry it.
        retesting = self._retest is not None
        hold = now - self._last_down < self._hold_s or estimate.congested or retesting
        # While nothing says congested, what is already sent stays as long as it fits.
        keep = None if estimate.congested else int(estimate.bps * KEEP_SHARE)
        line_loss = self._line_loss(now)
        decisions = allocate(
            int(estimate.bps * ALLOCATION_SHARE),
            candidates,
            hold=hold,
            keep_bps=keep,
            line_loss=line_loss,
            held=self.source_holds.held(now),
        )
        self._pad_tails(active, self._loss_before_repairs(now))
        lowered = raised = False
        for down, cand in zip(active, candidates, strict=True):
            decision = decisions[cand.key]
            if lowers(cand, decision):
                lowered = True
                self.source_holds.lowered(cand.key, now)
            elif rises(cand, decision):
                raised = True
                self.source_holds.rose(cand.key, now)
            down.allocate(decision.layer, decision.paused)
            self._started.add(cand.key)
        if lowered:
            if now - self._last_up < self._hold_s * 2:
                self._hold_s = min(self._hold_s * 2, HOLD_MAX_S)  # the rise did not hold
            self._last_down = now
        elif raised:
            self._last_up = now
        return self._message(active, estimate.bps)

    def _unheard(self, candidates: list[Candidate]) -> list[Decision]:
        """Until the subscriber has sent any feedback, what fits UNHEARD_BPS."""
        decisions = allocate(UNHEARD_BPS, candidates, hold=False)
        return [decisions[c.key] for c in candidates]

    def _pad_tails(self, downtracks: Sequence[DownTrack], line_loss: float) -> None:
        """Tail padding for the sparse videos on a lossy line: the loss of a frame's last
        packet shows at the receiver only with the next packet, a frame later. With
        transport-cc too (it was off there): the point agent's 3 fps courseware stood
        still 5 s of a minute on a 1 Mbit/s line with 5 % loss without it. With it, 2-5 s
        in 3 runs of 4, against 1 of 2 without: what is left there is not tails alone
        (docs/benchmarks.md, twelfth December stop)."""
        lossy = line_loss >= TAIL_PAD_LOSS
        for d in downtracks:
            up = d.current if lossy else None
            d.tail_padding = up is not None and 0 < up.frame_rate() <= TAIL_PAD_MAX_FPS

    # -- probing ----------------------------------------------------------------------------

    def _maybe_probe(self, estimate_bps: int, now: float) -> None:
        delay = self._delay
        if delay is None or not delay.ready or self._probe_timer is not None:
            return
        # Quiet means no queue and no cut for a while. A rise's keyframes do not spoil
        # a probe: it is judged by the bytes that really left and arrived.
        last_change = max(delay.overused_at, self._last_down)
        probe = self.prober.start(now, estimate_bps, self.estimator.demand_bps, last_change)
        if probe is None:
            return
        self.pacer.set_rate(int(probe.target_bps))
        # The cluster's queue drains at about the estimate: leave it out of the trend.
        drain = min(probe.target_bps * CLUSTER_S / max(estimate_bps, 1), PROBE_DRAIN_MAX_S)
        delay.exclude(probe.started, probe.ends + drain)
        self._probe_last_step = now - PROBE_STEP_S
        # The padding the cluster adds, fixed now: media bursts inside it (keyframes)
        # come on top, measured as sent, but never make the probe add more.
        self._probe_bytes_left = (
            max(0.0, probe.target_bps - self.estimator.sent_bps) / 8 * CLUSTER_S
        )
        self._probe_step()

    def _maybe_retest(self, candidates: list[Candidate], now: float) -> None:
        """Without transport-cc: once the kept overflow reading has been kept its time and
        the sources want more, pad up to what the next better layers need, within
        `RETEST_GROWTH` of it (media_server/overflow.py)."""
        watch = self.overflow
        capacity = watch.capacity()
        if self._delay is not None or self._probe_timer is not None or capacity is None:
            return
        if not watch.retest_due(now) or now - max(self._last_up, self._last_down) < SETTLE_S:
            return
        # What the retest climbs from: the reading, or the estimate where the line's
        # losses hold it below the reading. Padding above the reading would overshoot
        # what the line carries now (256kbit-10pct: a retest from 239 kbit/s padded for
        # 327 x 1.3, and the courseware stood 4 s); no retest at all left the
        # courseware, the only picture, paused for the last 35 s of the minute while the
        # estimate wore down from a 103 kbit/s reading to 83 (main 7339e22).
        estimate = self.estimator.estimate(now).bps
        base = capacity if estimate >= RETEST_FROM * capacity else float(estimate)
        # What is sent now may cost more than the estimate's share (what is sent stays
        # while it fits, KEEP_SHARE): reaching for that cost lets nothing new in
        # (1mbit-5pct-300ms: a retest padded the full line from 898 to 945 kbit/s, the
        # layers stayed as they were, and the audio lost 8 packets in its queue).
        now_costs = sum(
            layer_bps(c, c.current) for c in candidates if c.current and not c.user_paused
        )
        missing = any(c.kind == "video" and c.started and c.current is None for c in candidates)
        carried = watch.flood_doubted(now, every_picture_shown=not missing)
        if carried is not None:
            # A flood's reading in doubt: climb from what the line carried (or carries
            # now), not from the reading.
            base = min(base, max(carried, float(now_costs)))
        budgets = rise_budgets(candidates, self._line_loss(now))
        needs = [b / ALLOCATION_SHARE for b in budgets if b > now_costs]
        wanted = [n for n in needs if n > WORTH_PROBING * base]
        if not wanted:
            return
        # The furthest rise within reach, so that a pass lets it in at once; a rise
        # beyond reach is climbed to, a step at a time (1mbit-5pct-300ms: from 584
        # kbit/s to the teacher's 360p; from 882 to the courseware's full layer at 919;
        # the teacher's 720p would need 1.46 Mbit/s).
        # A step is worth its risk at once while a picture is paused for bandwidth (a
        # line that recovered must get its board back within a minute or so), and it
        # reaches further, the more so with each retest the line carried in a row
        # (1.69x, 2.2x, 2.86x: a climb from 226 kbit/s to the board's 780 took five 1.3x
        # steps, over 90 s with one failure among them); while every source is shown,
        # only a sharper layer would come of it, and a step overshooting a full line
        # costs its pictures.
        # The further reach only on a line that carried more lately, or whose reading
        # is a start-up flood's (OverflowWatch.recovering): a line that never did is
        # asked no more than 1.3x, and a failed step keeps it longer each time.
        climbing = missing and watch.recovering(now)
        climb = 1 + min(watch.passes_in_row, 2) if climbing else 0
        reach = RETEST_GROWTH ** (1 + climb) * base
        videos = [c for c in candidates if c.kind == "video" and not c.user_paused]
        if missing and all(c.current is None for c in videos):
            # No picture is shown, so none can freeze: the retest reaches for the first
            # at once. In 1.3x steps from a start-up reading of 48 kbit/s on a 256 kbit/s
            # line, the courseware came after 43 s of the minute (main b7ba736).
            reach = max(reach, wanted[0])
        within = [n for n in wanted if n <= reach]
        if not within and not missing and not watch.step_due(now, wanted[0], thumbnail(videos)):
            return
        target = within[-1] if within else reach
        self._retest = Probe(target_bps=target, started=now, ends=now + RETEST_S)
        self._retest_marks.clear()
        self._retest_seqs = [
            (d, d.next_seq(), None)
            for d in self._downtracks
            if d.source is not None and d.source.kind == "video"
        ]
        self._retest_baseline = self.sent_log.recent_loss(now)
        watch.start_retest(step=not within)
        self.pacer.set_rate(int(target))
        self._probe_last_step = now - PROBE_STEP_S
        self._probe_bytes_left = max(0.0, target - self.estimator.sent_bps) / 8 * RETEST_S
        self._probe_step()

    def _loss_before_repairs(self, now: float) -> float:
        """The line's loss before our repairs: transport-cc feedback counts every packet
        that did not arrive (our repairs are packets of their own); without it, what
        the receiver NACKed of the video we sent."""
        if self._delay is not None:
            return self.estimator.loss
        return self.sent_log.recent_loss(now) or 0.0

    def _line_loss(self, now: float) -> float:
        """The line's loss before our repairs, which the repairs cost on top of the
        layers (allocator.MAX_REPAIR_SHARE). Without transport-cc only: with it, the
        delay detector keeps its own headroom, and the page's figures stand."""
        return 0.0 if self._delay is not None else self._loss_before_repairs(now)

    def _retest_done(self) -> None:
        self._probe_timer = None
        retest, self._retest = self._retest, None
        if retest is None:
            return
        now = asyncio.get_running_loop().time()
        if self._retest_lost_more():
            self.overflow.fail_retest("own packets")
        if self.overflow.end_retest(now, retest.target_bps):
            # The line carried it: the estimate takes that rate, the new capacity, and
            # layers may rise now.
            self.estimator.on_probe(retest.target_bps, False, now)
            self.estimator.on_link_capacity(self.overflow.capacity())
            self._last_down = float("-inf")
            self._hold_s = HOLD_S
            self.source_holds.lift()
        self.pacer.set_rate(self._pacing(self.estimator.estimate(now).bps))

    def _probe_step(self) -> None:
        """Every PROBE_STEP_S while a probe runs: top what we send up to its target."""
        probe = self.prober.active if self._delay is not None else self._retest
        if probe is None:
            self._probe_timer = None
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        rtt_s = (self.estimator.rtt_ms or 100.0) / 1000
        if probe is self._retest and self._nacks_say_overflow(now):
            self.overflow.fail_retest()
        if probe is self._retest and self.overflow.retest_failed:
            # A report already shows the line losing what it got: no more padding. The
            # reports while its queue drains are still the retest's, not a reading of
            # media alone (one such read 598 kbit/s on a 928 kbit/s line and paused the
            # board).
            self._padding_ended()
            self._probe_timer = loop.call_later(rtt_s + RETEST_REPORT_S, self._retest_done)
            return
        if now >= probe.ends:
            if probe is self._retest:
                self._padding_ended()
                wait, done = rtt_s + RETEST_REPORT_S, self._retest_done
            else:
                self.prober.sent_until = now
                wait, done = max(0.3, rtt_s + 0.2), self._probe_done
            self._probe_timer = loop.call_later(wait, done)
            return
        # A busy loop fires the timer late: fill the time that really passed.
        elapsed = min(now - self._probe_last_step, 0.05)
        self._probe_last_step = now
        steps_left = max(1.0, (probe.ends - now) / PROBE_STEP_S)
        want = min(
            self._probe_bytes_left, self._probe_bytes_left * elapsed / PROBE_STEP_S / steps_left
        )
        videos = [d for d in self._downtracks if d.source is not None and d.source.kind == "video"]
        sent = 0
        for _ in range(PROBE_MAX_PACKETS):
            if sent >= want or not videos:
                break
            d = videos[0]
            size = d.probe()
            if size == 0:
                videos.pop(0)
                continue
            sent += size
            videos.append(videos.pop(0))  # spread over the subscriber's videos
        self._probe_bytes_left -= sent
        self._probe_timer = loop.call_later(PROBE_STEP_S, self._probe_step)

    def _padding_ended(self) -> None:
        self._retest_seqs = [
            (d, first, d.next_seq() if end is None else end) for d, first, end in self._retest_seqs
        ]

    def _retest_lost_more(self) -> bool:
        """Whether the line lost more of the retest's own video packets (what the
        receiver NACKed of their sequence numbers) than of what we sent before it, by
        RETEST_EXCESS: the line's own loss is no verdict, its overflow is. Reports count
        repaired packets as received and cover other seconds too: a retest padding a
        256 kbit/s line at 306 kbit/s read 10-17 % lost, passed, and the teacher's
        picture it let in came and went."""
        baseline = self._retest_baseline
        packets = lost = 0
        for d, first, end in self._retest_seqs:
            if end is None:
                continue
            packets += (end - first) & 0xFFFF
            lost += d.nacked_between(first, end)
        self._retest_seqs = []
        if baseline is None or packets < RETEST_MIN_PACKETS:
            return False
        return lost / packets > baseline + RETEST_EXCESS

    def _nacks_say_overflow(self, now: float) -> bool:
        """Whether the video NACKed over the last NACK_WINDOW_S says the retest's padding
        overflows the line (see NACK_LOSS)."""
        sent = nacked = 0
        for d in self._downtracks:
            if d.source is not None and d.source.kind == "video":
                sent += d.stats.packets + d.stats.probes
                nacked += d.stats.nacked
        marks = self._retest_marks
        marks.append((now, sent, nacked))
        while len(marks) > 1 and marks[1][0] <= now - NACK_WINDOW_S:
            marks.popleft()
        then, sent_then, nacked_then = marks[0]
        if now - then < NACK_WINDOW_S:
            return False
        lost, out = nacked - nacked_then, sent - sent_then
        return lost >= NACK_MIN and lost > NACK_LOSS * out

    def _probe_done(self) -> None:
        self._probe_timer = None
        probe, delay = self.prober.active, self._delay
        if probe is None or delay is None:
            return
        now = asyncio.get_running_loop().time()
        before = self.estimator.estimate(now).bps
        known = self.estimator.capacity_bps
        result = self.prober.finish(now)
        if result is not None:
            self.estimator.on_probe(result.bps, result.saturated, now)
            if self.estimator.estimate(now).bps > before and link_grew(result.bps, known):
                self._last_down = float("-inf")  # the link proved it: layers may rise now
                self._hold_s = HOLD_S
                self.source_holds.lift()
        self.pacer.set_rate(self._pacing(self.estimator.estimate(now).bps))

    def _pacing(self, estimate_bps: int) -> int:
        """The pacer's base rate (it sends at PACING_FACTOR times it).

        Bursts (keyframes) may leave faster than the estimate, but not much faster than
        the link's measured capacity: a burst above it is a queue of our own making,
        which the delay detector rightly reports and the estimate pays for.
        """
        capacity = self.estimator.capacity_bps
        if capacity is None:
            return estimate_bps
        ceiling = max(capacity, BURST_OVER_ESTIMATE * estimate_bps) / PACING_FACTOR
        return max(int(min(estimate_bps, ceiling)), 1)

    def _measure_sent(self, downtracks: Sequence[DownTrack], now: float) -> None:
        est = self.estimator
        if self._last_tick is not None and now > self._last_tick:
            elapsed = now - self._last_tick
            total = out_bps = 0.0
            for d in downtracks:
                before, extra = self._octets.get(d.ssrc, (d.stats.octets, d.stats.extra_octets))
                rate = (d.stats.octets - before) * 8 / elapsed
                est.stream_bps[d.ssrc] = 0.5 * est.stream_bps.get(d.ssrc, rate) + 0.5 * rate
                total += est.stream_bps[d.ssrc]
                out_bps += rate + (d.stats.extra_octets - extra) * 8 / elapsed
            est.sent_bps = total
            # What left when, for the line: not while our pacer still held it. A cut
            # from 1.3 Mbit/s leaves up to half a second of the old rate in its queue,
            # which drains at the new pace for 1-2 s while the layers already send
            # less: read against what the layers sent, the next report read a 256
            # kbit/s line at 83 kbit/s (sent 196 by the log, 58 % NACKed). (What it
            # dropped stays counted: its numbers are NACKed as lost, and the two cancel.)
            held = self.pacer.queued_bytes
            out_bps = max(0.0, out_bps - (held - self._held_mark) * 8 / elapsed)
            if total > 0 and est.started_at is None:
                est.started_at = now
            packets = nacked = 0
            for d in downtracks:
                if d.source is not None and d.source.kind == "video":
                    mark = self._video_marks.get(d.ssrc)
                    if mark is not None:
                        packets += d.stats.packets + d.stats.probes - mark[0]
                        nacked += d.stats.nacked - mark[1]
            self.sent_log.add(self._last_tick, now, out_bps, packets / elapsed, nacked / elapsed)
        self._octets = {d.ssrc: (d.stats.octets, d.stats.extra_octets) for d in downtracks}
        self._held_mark = self.pacer.queued_bytes
        self._video_marks = {
            d.ssrc: (d.stats.packets + d.stats.probes, d.stats.nacked)
            for d in downtracks
            if d.source is not None and d.source.kind == "video"
        }
        self._last_tick = now

    def _feed_loss(self, downtracks: Sequence[DownTrack], now: float) -> None:
        delay = self._delay
        if delay is not None and delay.ready:
            # Transport-cc reports every packet: one fraction over the whole second, not
            # a few packets of a slow stream (one loss in seven is no 14 % line).
            # (Packets our own pacer cut from an over-long queue were stamped but never
            # left: no send time was recorded for them, so the feedback's reports of
            # them are not matched and they are not counted here.)
            # (Late reports of packets counted missing lower the count again.)
            missing = max(0, delay.lost - self._loss_mark[0])
            reported = missing + delay.received - self._loss_mark[1]
            if reported >= MIN_LOSS_PACKETS:
                self._loss_mark = (delay.lost, delay.received)
                queue_free = delay.queue_ms < QUEUE_MS and not delay.overusing
                self.estimator.on_loss(missing / reported, now, queue_free)
            for d in downtracks:
                d.loss_fresh = False
            return
        weight = lost = 0.0
        rtt: float | None = None
        report_rtt = 0.0  # as measured: the reports waited in the uplink's queue too
        covered = nacked = 0  # video numbers the reports cover, and of them NACKed
        spanned = 0.0  # the time those numbers were sent over, times their count
        # A point's own camera can fill its uplink's queue (256kbit-10pct: its estimate
        # climbs past the line every 20 s): the round trip then says "queue" while the
        # downlink has none, and the line's random 14 % lost read as an overflow at 85
        # kbit/s that paused the courseware. The uplink's queue is known, and left out.
        own_queue = self.uplink_queue_ms()
        for d in downtracks:
            if d.loss_fresh:
                d.loss_fresh = False
                w = max(1, d.stats.packets)
                weight += w
                lost += d.stats.fraction_lost * w
                if d.source is not None and d.source.kind == "video":
                    covered += d.stats.report_packets
                    nacked += d.stats.report_nacked
                    spanned += d.stats.report_span_s * d.stats.report_packets
                if d.stats.rtt_ms is not None:
                    report_rtt = max(report_rtt, d.stats.rtt_ms)
                    down_rtt = max(0.0, d.stats.rtt_ms - own_queue)
                    self.overflow.on_rtt(down_rtt, now)
                    rtt = max(rtt or 0.0, down_rtt)
        if weight:
            before = self.estimator.estimate(now).bps
            loss = lost / weight
            if self._retest is not None:
                # A retest's losses are its padding's queue: they fail the retest, and
                # must not also cut the estimate under the reading and lower a layer
                # (1mbit-5pct-300ms: the courseware dropped to its low layer for good).
                self.estimator.loss = loss
            elif self.overflow.queue_free(rtt) or self.overflow.draining(report_rtt, now):
                # Reported after our repairs, a few dozen packets a report: counted in
                # full, a 256 kbit/s line with 10 % random loss wore the estimate down
                # to its 64 kbit/s floor and the courseware stayed paused for a minute.
                # An overflow (a queue and its losses) still cuts it, through the
                # reading below. The reports of the queue a reading left count what
                # was sent before it: the reading has the overflow, they do not.
                self.estimator.on_line_loss(loss, now)
            else:
                self.estimator.on_loss(loss, now)
            # Read against what left when the reported packets did: over the span
            # between the report before and this one, a round trip ago.
            span = spanned / covered if covered else None
            then = self.sent_log.sent_then(now, report_rtt / 1000, span)
            sent = then if then is not None else self.estimator.sent_bps
            least = RAW_LOSS_MIN_PACKETS if self._retest is None else RETEST_RAW_MIN_PACKETS
            raw = nacked / covered if covered >= least else None
            # During a retest, a report of too few of its numbers is no verdict, its own
            # share lost or NACKed alike (RETEST_RAW_MIN_PACKETS): with every picture
            # paused, a retest padding a 256 kbit/s line to 123 kbit/s sent ten probes a
            # report, and a report's 24 % lost (of the videos, weighted by all they ever
            # sent) failed it twice, 40 s apart; the courseware never came.
            judged = self._retest is None or raw is not None
            if judged and self.overflow.on_report(loss, sent, before, rtt, now, raw_loss=raw):
                self.estimator.on_overflow(self.overflow.capacity() or 0.0)
            elif (
                then is not None
                and self._retest is None
                and loss <= LOSS_HIGH
                and self.overflow.queue_free(rtt)
            ):
                self.overflow.note_carried(then * (1 - loss), now)
        if delay is None:
            # No probes and no delay detector measure this link: its overflows do.
            self.estimator.on_link_capacity(self.overflow.capacity())

    def _candidate(self, down: DownTrack, now: float) -> Candidate:
        source = down.source
        assert source is not None
        fwd = down.forwarder
        return Candidate(
            key=source.track_id,
            kind=source.kind,
            source=source.source,
            layers={name: up.cost_bps(now) for name, up in source.layers.items()},
            pinned=fwd.pinned,
            user_paused=fwd.paused_by_user,
            current=None if fwd.paused_by_allocator else fwd.allocated,
            started=source.track_id in self._started,
            focus=self.focus(source),
        )

    def _message(self, downtracks: Sequence[DownTrack], estimate_bps: int) -> dict[str, Any] | None:
        tracks = []
        told = {t["track"] for t in self._announced or ()}
        for d in downtracks:
            assert d.source is not None
            fwd = d.forwarder
            # A video picked up again is paused for the subscriber until its keyframe
            # arrives: the picture has not moved since the pause (thin-link resumes wait
            # for the publisher to restart an idle layer). One the last message did not
            # name is a first start, held back only until the subscriber was heard from
            # (UNHEARD_BPS): the page waits for its first picture.
            resuming = fwd.resuming and d.source.track_id in told
            paused = fwd.paused or (resuming and d.source.kind == "video")
            reason = "subscriber" if fwd.paused_by_user else "bandwidth" if paused else None
            layer = None if paused else d.source.best_layer(fwd.ceiling)
            tracks.append(
                {
                    "track": d.source.track_id,
                    "layer": layer.layer if layer is not None else None,
                    "paused": paused,
                    "reason": reason,
                }
            )
        state = tracks
        if state == self._announced:
            return None
        self._announced = state
        return {"type": "allocation", "estimate_bps": estimate_bps, "tracks": tracks}

    def describe(self) -> dict[str, Any]:
        """The subscriber's link as the server sees it (ops page, stats, tests)."""
        est = self.estimator
        return {
            "estimate_bps": self.estimate_bps,
            "remb_bps": est.remb(self._last_tick) if self._last_tick is not None else None,
            "sent_bps": int(est.sent_bps),
            "loss": round(est.loss, 4),
            "rtt_ms": round(est.rtt_ms, 1) if est.rtt_ms is not None else None,
            "hold_s": self._hold_s,
            # Sources waiting out a failed rise, and for how long in all (holds.py).
            "held_sources": {
                key: self.source_holds.hold_s(key)
                for key in sorted(self.source_holds.held(self._last_tick))
            }
            if self._last_tick is not None
            else {},
            "layer_bps": self._layer_bps,
            "paced_dropped": self.pacer.dropped,
            "repair_refused": self.repair.refused,
            "transport_cc": self._delay is not None,
            "delay_bps": int(self._delay.bps) if self._delay is not None else None,
            "delay_usage": self._delay.usage.value if self._delay is not None else None,
            "feedback_reports": self.feedback_reports,
            # Heard from only after UNHEARD_MAX_S: when, and the estimate it started from.
            "late_start": self.late_start,
            "capacity_bps": int(est.capacity_bps) if est.capacity_bps is not None else None,
            "overflows": self.overflow.overflows,
            "overflow_events": list(self.overflow.events),
            "retests": {
                "passed": self.overflow.retests_passed,
                "failed": self.overflow.retests_failed,
                "running": self._retest is not None,
            },
            "false_overuse": self._delay.false_overuse if self._delay is not None else None,
            "cuts": [
                {
                    "at": round(c.at, 2),
                    "acked_bps": int(c.acked_bps),
                    "peak_bps": int(c.peak_bps),
                    "sent_bps": int(c.sent_bps),
                    "recent_loss": round(c.recent_loss, 3) if c.recent_loss is not None else None,
                    "why": c.why,
                    "to_bps": int(c.to_bps),
                }
                for c in self._delay.cuts
            ]
            if self._delay is not None
            else [],
            "probes": {
                "succeeded": self.prober.succeeded,
                "failed": self.prober.failed,
                "last": {
                    "send_bps": int(self.prober.last.send_bps),
                    "receive_bps": int(self.prober.last.receive_bps),
                }
                if self.prober.last is not None
                else None,
            },
        }

    def close(self) -> None:
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        self.pacer.close()
