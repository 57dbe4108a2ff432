"""The link capacity of a subscriber without transport-cc, read at its overflows:
table-driven, no network, no sleeps (media_server/overflow.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from media_server import bandwidth
from media_server.bandwidth import SubscriberBandwidth
from media_server.downtrack import DownTrack
from media_server.estimator import DownlinkEstimator
from media_server.overflow import (
    FLOOR_WINDOW_S,
    KEEP_MAX_S,
    KEEP_S,
    RETEST_GROWTH,
    RETEST_KEEP_MAX_S,
    START_S,
    OverflowWatch,
)
from media_server.pacer import PACING_FACTOR
from media_server.sink import MemorySink
from media_server.source import MediaSource
from tests.media import wait_for
from tests.test_rtp_rewrite import VP8_KEY, make_up, rtp


def watch_with_floor(floor_ms: float = 330.0) -> OverflowWatch:
    watch = OverflowWatch()
    watch.on_rtt(floor_ms, 0.0)
    return watch


@pytest.mark.parametrize(
    ("loss", "rtt_ms", "overflow"),
    [
        # The line's own random loss with an empty queue: not an overflow.
        (0.15, 350.0, False),
        # A queue standing but packets get through: not (yet) an overflow.
        (0.05, 550.0, False),
        # Heavy loss and a full queue: the link overflowed (1mbit-5pct-300ms, main).
        (0.26, 498.0, True),
        (0.26, 430.0, True),
        # No round trip known: nothing says a queue stands.
        (0.26, None, False),
        # A flood at connect: the first round trips are already the queue's, no floor
        # below them, but over 30 % lost after repair is no line's random loss.
        (0.45, None, True),
        (0.45, 340.0, True),
        # An outage lets nothing through: no reading of what the link carries.
        (0.95, None, False),
    ],
)
def test_an_overflow_is_heavy_loss_over_a_standing_queue(
    loss: float, rtt_ms: float | None, overflow: bool
) -> None:
    watch = watch_with_floor()
    assert watch.on_report(loss, 1_240_000, 1_650_000, rtt_ms, 10.0) is overflow
    capacity = watch.capacity()
    if overflow:
        # What got through: what we sent, less what was lost.
        assert capacity == pytest.approx(1_240_000 * (1 - loss))
    else:
        assert capacity is None


def test_heavy_loss_without_a_queue_is_a_flood_only_at_connect() -> None:
    """Later, a burst of loss with the round trip at its floor is our own stall (a
    starved process), not the link: it must not cap the estimate for minutes."""
    watch = watch_with_floor()
    assert watch.on_report(0.45, 1_240_000, 1_650_000, 340.0, START_S - 1.0)
    late = watch_with_floor()
    assert not late.on_report(0.45, 1_240_000, 1_650_000, 340.0, START_S + 1.0)
    assert late.capacity() is None
    # A standing queue still says overflow, however late.
    assert late.on_report(0.45, 1_240_000, 1_650_000, 480.0, START_S + 2.0)


@pytest.mark.parametrize(
    ("sent", "estimate", "overflow"),
    [
        (1_240_000, 1_650_000, True),  # the teacher's 720p let in: we filled the queue
        # 35 kbit/s of a 73 kbit/s estimate (256kbit-10pct, the point's own uplink
        # stretching the round trip): not a queue we filled.
        (35_000, 73_000, False),
    ],
)
def test_only_a_queue_we_filled_is_an_overflow(sent: int, estimate: int, overflow: bool) -> None:
    watch = watch_with_floor(123.0)
    assert watch.on_report(0.16, sent, estimate, 231.0, 10.0) is overflow


def test_the_floor_is_the_lowest_round_trip_of_the_last_minute() -> None:
    watch = OverflowWatch()
    for t, rtt in [(0.0, 330.0), (1.0, 500.0), (2.0, 340.0)]:
        watch.on_rtt(rtt, t)
    assert watch.floor_ms() == 330.0
    # The 330 ms sample leaves the window; the 340 ms one (2 s) is the floor now.
    watch.on_rtt(600.0, FLOOR_WINDOW_S + 1.0)
    assert watch.floor_ms() == 340.0
    # A queue that stood for a whole minute becomes the floor: nothing is an overflow
    # against itself.
    watch.on_rtt(600.0, 3 * FLOOR_WINDOW_S)
    assert watch.floor_ms() == 600.0
    assert not watch.on_report(0.3, 1_000_000, 1_000_000, 600.0, 3 * FLOOR_WINDOW_S)


def overflow_at(watch: OverflowWatch, t: float) -> None:
    watch.on_rtt(330.0, t)  # the floor stays in the window
    assert watch.on_report(0.25, 1_200_000, 1_400_000, 520.0, t)


def retest(watch: OverflowWatch, t: float, *, carried: bool) -> bool:
    """A retest at `t` whose reports say the line carried the padding, or not."""
    assert watch.retest_due(t)
    watch.start_retest()
    watch.on_rtt(330.0, t + 2.0)
    # A retest's reports never make a reading: what we sent was partly padding.
    assert not watch.on_report(
        0.02 if carried else 0.2, 1_200_000, 1_000_000, 340.0 if carried else 560.0, t + 2.0
    )
    assert not watch.retest_due(t + 3.0)
    return watch.end_retest(t + 4.0)


def test_a_reading_is_retested_after_its_keep_and_kept_twice_as_long_when_it_holds() -> None:
    watch = watch_with_floor()
    overflow_at(watch, 10.0)
    capacity = watch.capacity()
    assert not watch.retest_due(10.0 + KEEP_S - 0.1)
    # The keep ran out: the reading still caps the estimate until a retest lifts it.
    t = 10.0 + KEEP_S
    keeps = []
    for _ in range(6):
        assert watch.retest_due(t) and watch.capacity() == capacity
        assert retest(watch, t, carried=False) is False
        keeps.append(watch.keep_s)
        assert not watch.retest_due(t + 4.0 + watch.keep_s - 0.1)
        t += 4.0 + watch.keep_s
    # Cheap as a failed retest is, a line that recovered must not wait minutes for it.
    assert keeps == [2 * KEEP_S] + [RETEST_KEEP_MAX_S] * 5
    assert watch.retests_failed == 6 and watch.capacity() == capacity


@pytest.mark.parametrize(
    ("next_overflow_after", "keep_after"),
    [
        # Soon after a retest the line carried, it overflows after all (the layer that
        # came back does not fit): keep the new reading twice as long.
        (5.0, 2 * KEEP_S),
        # Long after: a new situation.
        (20 * KEEP_S, KEEP_S),
    ],
)
def test_a_retest_the_line_carries_forgets_the_reading(
    next_overflow_after: float, keep_after: float
) -> None:
    watch = watch_with_floor()
    overflow_at(watch, 10.0)
    t = 10.0 + KEEP_S
    assert retest(watch, t, carried=True) is True
    assert watch.capacity() is None and watch.retests_passed == 1
    assert not watch.retest_due(t + 100.0)  # nothing to retest
    overflow_at(watch, t + 4.0 + next_overflow_after)
    assert watch.keep_s == keep_after


def test_an_overflow_while_the_reading_is_kept_is_a_new_reading() -> None:
    """The line shrank further: the new reading replaces the old, for the same keep."""
    watch = watch_with_floor()
    overflow_at(watch, 10.0)
    watch.on_rtt(330.0, 15.0)
    assert watch.on_report(0.4, 900_000, 800_000, 520.0, 15.0)
    assert watch.capacity() == pytest.approx(900_000 * 0.6)
    assert watch.keep_s == KEEP_S
    assert not watch.retest_due(15.0 + KEEP_S - 0.1) and watch.retest_due(15.0 + KEEP_S)


def test_the_estimate_stays_under_a_known_capacity_and_grows_again_once_forgotten() -> None:
    est = DownlinkEstimator(initial_bps=1_600_000)
    est.sent_bps = 800_000
    est.on_link_capacity(900_000)
    assert est.estimate(0.0).bps == 900_000
    for t in range(30):
        est.on_loss(0.0, float(t))
    assert est.estimate(30.0).bps == 900_000
    est.on_link_capacity(None)
    est.on_loss(0.0, 31.0)
    assert est.estimate(31.0).bps == int(900_000 * 1.08)


def downtrack(fraction_lost: float, rtt_ms: float) -> SimpleNamespace:
    return SimpleNamespace(
        loss_fresh=True,
        stats=SimpleNamespace(packets=1000, fraction_lost=fraction_lost, rtt_ms=rtt_ms),
    )


def test_a_point_agents_estimate_no_longer_climbs_back_over_its_link() -> None:
    """The sawtooth of bench 1mbit-5pct-300ms --receiver agent on main: reports after
    repair read 0-3 % loss, the estimate grew to 1.6 Mbit/s, the teacher's 720p came in
    and overflowed the line. After one overflow the estimate stays at what the link
    carried (sent 1.24 Mbit/s, 26 % lost) until the reading is forgotten."""
    bw = SubscriberBandwidth(MemorySink(), initial_bps=1_400_000)
    est = bw.estimator
    est.sent_bps = 650_000
    for t in range(3):
        bw._feed_loss([downtrack(0.01, 335.0)], float(t))  # type: ignore[list-item]
    assert est.estimate(5.0).bps > 1_400_000  # grows on the repaired reports, as before
    est.sent_bps = 1_240_000
    bw._feed_loss([downtrack(0.26, 498.0)], 5.0)  # type: ignore[list-item]
    capacity = 1_240_000 * (1 - 0.26)
    assert est.estimate(5.0).bps == int(capacity)
    est.sent_bps = 650_000
    for t in range(6, 25):
        bw._feed_loss([downtrack(0.01, 335.0)], float(t))  # type: ignore[list-item]
        assert est.estimate(float(t)).bps <= capacity
    assert bw.describe()["overflows"] == 1
    # Past its keep the reading still holds, until a retest shows the line carries more.
    for t in range(26, 40):
        bw._feed_loss([downtrack(0.01, 335.0)], float(t))  # type: ignore[list-item]
        assert est.estimate(float(t)).bps <= capacity
    bw.close()


def test_a_subscriber_with_transport_cc_is_left_to_its_own_capacity() -> None:
    bw = SubscriberBandwidth(MemorySink())
    bw.use_transport_cc(3)
    bw.estimator.capacity_bps = 3_000_000  # measured by a probe
    bw.estimator.sent_bps = 1_240_000
    bw._feed_loss([downtrack(0.26, 498.0)], 5.0)  # type: ignore[list-item]
    assert bw.estimator.capacity_bps == 3_000_000
    bw.close()


def forwarding_downtrack() -> tuple[DownTrack, MemorySink]:
    """A point agent's teacher camera, one frame forwarded: it may be padded after."""
    up = make_up("m", 5, [])
    source = MediaSource("m", "c", "M", "teacher_camera", "video", "vp8", "", layers={"m": up})
    sink = MemorySink()
    down = DownTrack(sink=sink, ssrc=77, payload_type=96)
    down.bind(source)
    up.on_rtp(rtp(10, 9, 5, VP8_KEY, marker=1), 0)  # a whole key frame in one packet
    assert len(sink.rtp) == 1
    return down, sink


@pytest.mark.parametrize("carried", [True, False])
async def test_a_retest_pads_up_to_the_kept_reading_and_its_reports_decide(
    carried: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1mbit-5pct-300ms, agent: the 926 kbit/s reading is retested at 1.3x with padding,
    not with the teacher's 720p. Reports with a queue keep the reading (twice as long);
    clean ones forget it and the estimate takes the padded rate at once."""
    monkeypatch.setattr(bandwidth, "RETEST_S", 0.2)
    monkeypatch.setattr(bandwidth, "RETEST_REPORT_S", 0.05)
    loop = asyncio.get_running_loop()
    bw = SubscriberBandwidth(MemorySink(), initial_bps=1_400_000)
    down, sink = forwarding_downtrack()
    bw._downtracks = [down]
    est = bw.estimator
    now = loop.time()
    then = now - KEEP_S - 1.0  # the overflow was read a keep ago
    est.sent_bps = 1_240_000
    bw._feed_loss([downtrack(0.01, 335.0)], then - 1.0)  # type: ignore[list-item]
    bw._feed_loss([downtrack(0.26, 498.0)], then)  # type: ignore[list-item]
    capacity = bw.overflow.capacity()
    assert capacity == pytest.approx(1_240_000 * 0.74)
    est.sent_bps = 800_000
    est.demand_bps = 2_400_000  # the teacher's 720p, the board and the courseware
    bw._maybe_retest(now)
    target = RETEST_GROWTH * capacity
    assert bw.describe()["retests"]["running"]
    assert bw.pacer._rate == pytest.approx(int(target) * PACING_FACTOR / 8)  # paced to it
    if not carried:
        bw._feed_loss([downtrack(0.14, 560.0)], now + 0.1)  # type: ignore[list-item]

        def draining() -> bool:
            """The padding stopped; the verdict waits for the reports of its queue."""
            timer = bw._probe_timer
            return isinstance(timer, asyncio.TimerHandle) and timer.when() > loop.time() + 0.02

        await wait_for(draining, 5, "the padding stopped at the report of its queue")
        # While the padding's queue drains, its reports are still the retest's: media
        # alone was not what overflowed (one such reading once paused the board).
        bw._feed_loss([downtrack(0.25, 520.0)], loop.time())  # type: ignore[list-item]
        assert bw.overflow.capacity() == capacity
    else:
        bw._feed_loss([downtrack(0.01, 340.0)], now + 0.1)  # type: ignore[list-item]
    # The estimate stays under the reading while the retest runs.
    assert est.estimate(now + 0.1).bps <= capacity
    await wait_for(lambda: bw._retest is None, 5, "the retest's verdict")
    padding = [p for p in sink.rtp[1:] if p[0] & 0x20]
    assert padding and len(padding) == len(sink.rtp) - 1  # padding only, no media
    padded_bps = sum(len(p) for p in padding) * 8 / 0.2
    if carried:
        assert padded_bps == pytest.approx(target - 800_000, rel=0.25)
    else:
        # The padding stopped at the report that showed the queue.
        assert padded_bps < 0.25 * (target - 800_000)
    retests = bw.describe()["retests"]
    if carried:
        assert retests == {"passed": 1, "failed": 0, "running": False}
        assert bw.overflow.capacity() is None and est.capacity_bps is None
        assert est.estimate(loop.time()).bps >= int(target)
    else:
        assert retests == {"passed": 0, "failed": 1, "running": False}
        assert bw.overflow.capacity() == capacity and bw.overflow.keep_s == 2 * KEEP_S
        assert est.estimate(loop.time()).bps <= capacity
    bw.close()


def test_a_layer_that_overflows_after_every_passed_retest_is_tried_ever_more_rarely() -> None:
    """The padding fits but the layer it let in does not: each overflow soon after the
    reading was forgotten doubles its keep, up to KEEP_MAX_S, and a failed retest does
    not shorten a keep the overflows made long."""
    watch = watch_with_floor()
    overflow_at(watch, 0.0)
    t = 0.0
    keeps = []
    for _ in range(6):
        t += watch.keep_s
        assert retest(watch, t, carried=True)
        t += 4.0 + 5.0
        overflow_at(watch, t)
        keeps.append(watch.keep_s)
    assert keeps == [2 * KEEP_S, 4 * KEEP_S, 8 * KEEP_S, KEEP_MAX_S, KEEP_MAX_S, KEEP_MAX_S]
    assert retest(watch, t + KEEP_MAX_S, carried=False) is False
    assert watch.keep_s == KEEP_MAX_S


@pytest.mark.parametrize(
    ("loss", "rtt_ms", "carried"),
    [
        (0.01, 340.0, True),
        # An aiortc point's round trip wanders with its own event loop: no verdict alone.
        (0.0, 900.0, True),
        (0.03, 560.0, True),  # the same, with the line's own loss after repair
        (0.12, 340.0, False),  # an overflowing queue's losses
        (0.2, 560.0, False),
    ],
)
def test_a_retest_fails_on_the_losses_of_an_overflowing_queue(
    loss: float, rtt_ms: float, carried: bool
) -> None:
    watch = watch_with_floor()
    overflow_at(watch, 10.0)
    watch.start_retest()
    watch.on_rtt(330.0, 31.0)
    watch.on_report(loss, 1_200_000, 1_000_000, rtt_ms, 31.0)
    assert watch.retest_failed is not carried
    assert watch.end_retest(33.0) is carried
