"""The link capacity of a subscriber without transport-cc, read at its overflows:
table-driven, no network, no sleeps (media_server/overflow.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from media_server.bandwidth import SubscriberBandwidth
from media_server.estimator import DownlinkEstimator
from media_server.overflow import FLOOR_WINDOW_S, KEEP_MAX_S, KEEP_S, START_S, OverflowWatch
from media_server.sink import MemorySink


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
    capacity = watch.capacity(10.0)
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
    assert late.capacity(START_S + 1.0) is None
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


def retests(keeps: list[float]) -> list[float]:
    """Overflow times, each 5 s after the reading before it was forgotten."""
    times = [0.0]
    for keep in keeps:
        times.append(times[-1] + keep + 5.0)
    return times


@pytest.mark.parametrize(
    ("overflows_at", "keep_after"),
    [
        # One overflow: kept KEEP_S.
        ([10.0], KEEP_S),
        # Again while the reading is kept (the link shrank): a new reading, same keep.
        ([10.0, 15.0], KEEP_S),
        # Again soon after it was forgotten: the link did not grow; keep twice as long.
        (retests([KEEP_S]), 2 * KEEP_S),
        (retests([KEEP_S, 2 * KEEP_S, 4 * KEEP_S]), 8 * KEEP_S),
        # ... never longer than KEEP_MAX_S.
        (retests([min(KEEP_S * 2**i, KEEP_MAX_S) for i in range(8)]), KEEP_MAX_S),
        # Long after it was forgotten: a new situation, back to KEEP_S.
        ([10.0, 10.0 + KEEP_S + 5.0, 10.0 + 20 * KEEP_S], KEEP_S),
    ],
)
def test_a_layer_that_does_not_fit_is_tried_again_ever_more_rarely(
    overflows_at: list[float], keep_after: float
) -> None:
    watch = watch_with_floor()
    for t in overflows_at:
        watch.on_rtt(330.0, t)  # the floor stays in the window
        assert watch.on_report(0.25, 1_200_000, 1_400_000, 520.0, t)
    last = overflows_at[-1]
    assert watch.keep_s == keep_after
    assert watch.capacity(last + keep_after - 0.1) is not None
    assert watch.capacity(last + keep_after) is None


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
    for t in range(26, 30):
        bw._feed_loss([downtrack(0.01, 335.0)], float(t))  # type: ignore[list-item]
    assert est.estimate(30.0).bps > capacity
    bw.close()


def test_a_subscriber_with_transport_cc_is_left_to_its_own_capacity() -> None:
    bw = SubscriberBandwidth(MemorySink())
    bw.use_transport_cc(3)
    bw.estimator.capacity_bps = 3_000_000  # measured by a probe
    bw.estimator.sent_bps = 1_240_000
    bw._feed_loss([downtrack(0.26, 498.0)], 5.0)  # type: ignore[list-item]
    assert bw.estimator.capacity_bps == 3_000_000
    bw.close()
