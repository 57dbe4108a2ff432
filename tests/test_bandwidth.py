"""Estimator, allocator, pacer and repair budget: table-driven, no network, no sleeps."""

from __future__ import annotations

import struct

import pytest

from media_server import pacer as pacer_mod
from media_server.allocator import Candidate, Decision, allocate
from media_server.bandwidth import SubscriberBandwidth
from media_server.downtrack import DownTrack, RepairBudget
from media_server.estimator import MIN_BPS, DownlinkEstimator
from media_server.pacer import Pacer
from media_server.sink import MemorySink
from media_server.source import MediaSource
from media_server.uptrack import UpTrack
from tests.media import wait_for

# -- estimator ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "steps", "low", "high"),
    [
        # A REMB below what we send: a queue is building, follow it at once.
        (2_000_000, [("remb", 1_000_000)], 1_000_000, 1_000_000),
        # A REMB above what we send is Chromium's 1.5x-throughput clamp: no constraint.
        (300_000, [("remb", 450_000)], 2_500_000, 2_500_000),
        # Heavy loss backs off even when the REMB is generous: 30% loss -> x0.85 per report.
        (2_000_000, [("remb", 10_000_000), ("loss", 0.3), ("loss", 0.3)], 1_700_000, 1_900_000),
        # Random loss between 2% and 10% is not congestion: hold.
        (2_000_000, [("loss", 0.05), ("loss", 0.05)], 2_500_000, 2_500_000),
        # Low loss grows the estimate, but only so far above what we send (it never
        # shrinks for that alone).
        (500_000, [("loss", 0.0)] * 30, 2_500_000, 2_500_000),
        (1_200_000, [("loss", 0.0)] * 30, 2_700_000, 2_700_000),
        (3_000_000, [("loss", 0.0)] * 3, 3_149_000, 3_150_000),
    ],
)
def test_estimate_follows_remb_and_loss(sent: int, steps: list, low: int, high: int) -> None:
    est = started(DownlinkEstimator(initial_bps=2_500_000), sent)
    for kind, value in steps:
        if kind == "remb":
            for _ in range(2):  # a low REMB counts when it is repeated
                est.on_remb(value, [1], now=10.0)
        else:
            est.on_loss(value, now=10.0)
    assert low <= est.estimate(10.0).bps <= high


def started(est: DownlinkEstimator, sent: float) -> DownlinkEstimator:
    """One stream (SSRC 1) carrying everything, sending since t=0."""
    est.sent_bps = sent
    est.stream_bps = {1: sent}
    est.started_at = 0.0
    return est


def test_a_remb_is_weighed_against_the_streams_it_covers() -> None:
    """Two streams, a REMB covering both (Chromium): 600k against 1.2M sent halves it.
    A REMB covering one of several streams (aiortc's per-stream estimator) is ignored."""
    est = DownlinkEstimator(initial_bps=3_000_000)
    est.sent_bps = 1_200_000
    est.stream_bps = {1: 600_000, 2: 600_000}
    est.started_at = 0.0
    for t in (10.0, 10.5):
        est.on_remb(43_000, [1], now=t)
    assert est.estimate(10.5).bps == 3_000_000
    est.on_remb(600_000, [1, 2], now=11.0)
    assert est.estimate(11.0).bps == 3_000_000  # once may be a hiccup
    est.on_remb(600_000, [1, 2], now=11.5)
    assert est.estimate(11.5).bps == 600_000


def test_the_first_seconds_of_remb_are_not_taken_as_congestion() -> None:
    est = started(DownlinkEstimator(initial_bps=2_500_000), 2_000_000)
    est.on_remb(165_000, [1], now=2.0)  # aiortc's start-up value
    assert est.estimate(2.0).bps == 2_500_000


def test_congestion_is_flagged_and_the_floor_holds() -> None:
    est = started(DownlinkEstimator(initial_bps=2_000_000), 1_000_000)
    est.on_remb(300_000, [1], now=9.5)
    est.on_remb(300_000, [1], now=10.0)
    assert est.estimate(10.5).congested
    assert est.estimate(10.5).bps == 300_000
    assert not est.estimate(20.0).congested
    for _ in range(100):
        est.on_loss(0.9, now=20.0)
    assert est.estimate(20.0).bps == MIN_BPS


def test_after_a_step_down_and_back_up_the_estimate_recovers_within_seconds() -> None:
    """5 -> 1 Mbit/s: the REMB drop is followed at once; back at 5, 2 reports a second of
    clean delivery lift it again (8% each) as fast as the sending rate follows."""
    est = started(DownlinkEstimator(initial_bps=5_000_000), 4_500_000)
    est.on_remb(900_000, [1], now=9.5)  # the link shrank: the receiver sees a queue
    est.on_remb(900_000, [1], now=10.0)
    assert est.estimate(10.0).bps == 900_000
    now, ticks = 10.0, 0
    while est.estimate(now).bps < 4_000_000:
        now += 0.5
        ticks += 1
        est.sent_bps = est.estimate(now).bps * 0.85  # the allocator fills what it is given
        est.on_loss(0.0, now)
        assert ticks < 60
    assert now - 10.0 <= 12.0


# -- allocator ------------------------------------------------------------------------

CAMERA = {"h": 1_500_000, "m": 500_000, "l": 150_000}


def lesson(**changes: object) -> list[Candidate]:
    cands = [
        Candidate("p1/classroom_mic", "audio", "classroom_mic", {"h": 40_000}),
        Candidate("p1/teacher_camera", "video", "teacher_camera", dict(CAMERA)),
        Candidate("p1/courseware", "video", "courseware", {"h": 300_000}),
        Candidate("p1/board_camera", "video", "board_camera", {"h": 800_000, "l": 120_000}),
        Candidate("p2/point_camera", "video", "point_camera", {"h": 600_000}),
    ]
    for c in cands:
        for key, value in changes.get(c.source, {}).items():  # type: ignore[attr-defined]
            setattr(c, key, value)
    return cands


def layers(decisions: dict[str, Decision]) -> dict[str, str | None]:
    return {k.split("/")[1]: (None if d.paused else d.layer) for k, d in decisions.items()}


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        # Plenty: everything at its top layer.
        (
            5_000_000,
            {
                "classroom_mic": "h",
                "teacher_camera": "h",
                "courseware": "h",
                "board_camera": "h",
                "point_camera": "h",
            },
        ),
        # 2 Mbit/s: every source gets a picture, the teacher camera is lifted first.
        (
            2_000_000,
            {
                "classroom_mic": "h",
                "teacher_camera": "h",
                "courseware": "h",
                "board_camera": "l",
                "point_camera": None,
            },
        ),
        # 1 Mbit/s: teacher at m, courseware, board at l; the other classroom paused.
        (
            1_000_000,
            {
                "classroom_mic": "h",
                "teacher_camera": "m",
                "courseware": "h",
                "board_camera": "l",
                "point_camera": None,
            },
        ),
        # 256 kbit/s: audio, then the teacher's lowest layer; everything else paused.
        (
            256_000,
            {
                "classroom_mic": "h",
                "teacher_camera": "l",
                "courseware": None,
                "board_camera": None,
                "point_camera": None,
            },
        ),
        # Below audio: audio still goes; every picture paused before audio suffers.
        (
            30_000,
            {
                "classroom_mic": "h",
                "teacher_camera": None,
                "courseware": None,
                "board_camera": None,
                "point_camera": None,
            },
        ),
    ],
)
def test_the_budget_is_shared_by_priority(budget: int, expected: dict) -> None:
    assert layers(allocate(budget, lesson(), hold=False)) == expected


def test_while_holding_layers_do_not_rise_and_paused_sources_stay_paused() -> None:
    cands = lesson(
        teacher_camera={"current": "l", "started": True},
        courseware={"current": None, "started": True},
    )
    got = layers(allocate(5_000_000, cands, hold=True))
    assert got["teacher_camera"] == "l"
    assert got["courseware"] is None
    released = layers(allocate(5_000_000, cands, hold=False))
    assert released["teacher_camera"] == "h" and released["courseware"] == "h"


@pytest.mark.parametrize(
    ("teacher_rate", "keep", "teacher"),
    [
        # The teacher layer's keyframes lift its measured rate past the budget, but what
        # is being sent still fits under the link: it stays.
        (1_700_000, 2_300_000, "h"),
        # The estimate fell too far (or the link is congested: no keep at all): down.
        (1_700_000, 2_000_000, "m"),
        (1_700_000, None, "m"),
    ],
)
def test_what_is_sent_stays_while_it_still_fits(
    teacher_rate: int, keep: int | None, teacher: str
) -> None:
    started = {"started": True}
    cands = lesson(
        teacher_camera={**started, "current": "h", "layers": {**CAMERA, "h": teacher_rate}},
        courseware={**started, "current": "h"},
        board_camera={**started, "current": "l"},
        point_camera={**started, "current": None},
    )
    got = layers(allocate(2_100_000, cands, hold=False, keep_bps=keep))
    assert got["teacher_camera"] == teacher
    assert got["courseware"] == "h" and got["point_camera"] is None
    if keep is not None and teacher == "h":
        assert got["board_camera"] == "l"  # keeping raises and resumes nothing


def test_the_called_on_classrooms_camera_ranks_with_the_teacher_not_behind_the_board() -> None:
    # At 2 Mbit/s another classroom's camera is paused (above); the called-on one is
    # what the lesson is about, so it gets a picture and the board drops to its lowest.
    got = layers(allocate(2_000_000, lesson(point_camera={"focus": True}), hold=False))
    assert got["point_camera"] == "h"
    assert got["teacher_camera"] is not None and got["courseware"] is not None
    assert got["classroom_mic"] == "h"
    # Released: back behind the lesson's own sources.
    assert layers(allocate(2_000_000, lesson(), hold=False))["point_camera"] is None


def test_a_subscribers_pin_and_pause_are_respected() -> None:
    cands = lesson(teacher_camera={"pinned": "m"}, board_camera={"user_paused": True})
    decisions = allocate(10_000_000, cands, hold=False)
    assert decisions["p1/teacher_camera"] == Decision(layer="m", paused=False)
    # Paused by the subscriber, not for bandwidth: the page must not say "low bandwidth".
    assert decisions["p1/board_camera"] == Decision(layer=None, paused=False)


# -- pacer and repair budget --------------------------------------------------------------


async def test_the_pacer_spreads_a_burst_and_lets_audio_pass_first() -> None:
    wire = MemorySink()
    pacer = Pacer(wire, rate_bps=1_000_000)  # 187.5 kB/s with the pacing factor
    burst = [bytes([i]) * 1200 for i in range(60)]  # a 72 kB keyframe
    for packet in burst:
        pacer.send_rtp(packet)
    sent_at_once = len(wire.rtp)
    assert 0 < sent_at_once < 10
    pacer.send_rtp_now(b"audio")
    assert wire.rtp[-1] == b"audio"  # ahead of the queued video
    await wait_for(lambda: len(wire.rtp) == len(burst) + 1, 5, "the queue drained")
    assert [p for p in wire.rtp if p != b"audio"] == burst  # in order, nothing lost
    pacer.close()


async def test_downtracks_take_the_pacers_fast_path_in_line_and_keep_its_order() -> None:
    """The DownTrack sends straight to the wire only where the pacer would: a keyframe
    burst past the bucket waits, a small packet after it waits behind it (never
    overtakes), audio overtakes the queue, and everything arrives once, in order."""
    wire = MemorySink()
    bandwidth = SubscriberBandwidth(wire, initial_bps=1_000_000)  # 6 kB burst, 187.5 kB/s
    video_up, audio_up = up_track("video", 1111), up_track("audio", 2222)
    video = DownTrack(sink=bandwidth.sink_for("video"), ssrc=11, payload_type=96)
    audio = DownTrack(sink=bandwidth.sink_for("audio"), ssrc=12, payload_type=111)
    video.bind(_source(video_up))
    audio.bind(_source(audio_up))
    # A VP8 keyframe of 40 packets (48 kB): its first packet starts it.
    burst = [(b"\x10\x00" if i == 0 else b"\x00\x01") + bytes([i]) * 1200 for i in range(40)]
    for i, payload in enumerate(burst):
        video_up.on_rtp(_rtp(100 + i, 3000, 1111, 96, payload), 0)
    straight = len(wire.rtp)
    assert 0 < straight < 10 and not bandwidth.pacer.open
    # A drain leaves tokens short of the queue's head but enough for a small packet:
    # it still waits its turn.
    bandwidth.pacer.tokens = 1000.0
    video_up.on_rtp(_rtp(140, 6000, 1111, 96, b"\x00\x01small"), 0)
    assert len(wire.rtp) == straight
    audio_up.on_rtp(_rtp(7, 960, 2222, 111, b"opus"), 0)
    assert len(wire.rtp) == straight + 1 and wire.rtp[-1].endswith(b"opus")
    await wait_for(lambda: len(wire.rtp) == len(burst) + 2, 5, "the queue drained")
    videos = [p[12:] for p in wire.rtp if not p.endswith(b"opus")]
    assert videos == [*burst, b"\x00\x01small"]  # in order, nothing lost or repeated
    assert bandwidth.pacer.open
    video_up.on_rtp(_rtp(141, 9000, 1111, 96, b"\x00\x01next"), 0)
    assert wire.rtp[-1].endswith(b"next")  # straight out again
    bandwidth.close()


def up_track(kind: str, ssrc: int) -> UpTrack:
    """A publisher's camera or microphone, one layer."""
    return UpTrack(
        track_id=f"p1/{kind}/h",
        source="teacher_camera" if kind == "video" else "classroom_mic",
        layer="h",
        kind=kind,
        codec="vp8" if kind == "video" else "opus",
        clock_rate=90000 if kind == "video" else 48000,
        ssrc=ssrc,
        payload_type=96 if kind == "video" else 111,
        rtx_ssrc=None,
        rtx_payload_type=None,
        request_keyframe=lambda up: None,
        request_nack=lambda up: None,
    )


def _source(up: UpTrack) -> MediaSource:
    return MediaSource("p1", "c1", "Master", up.source, up.kind, up.codec, "", {"h": up})


def _rtp(seq: int, ts: int, ssrc: int, pt: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc) + payload


async def test_the_pacer_cuts_a_queue_longer_than_half_a_second() -> None:
    wire = MemorySink()
    pacer = Pacer(wire, rate_bps=100_000)  # 18.75 kB/s: 0.5 s is ~9 kB
    for i in range(100):
        pacer.send_rtp(bytes([i]) * 1200)
    assert pacer.dropped > 80
    assert pacer.queued_bytes <= 100_000 * pacer_mod.PACING_FACTOR / 8 * pacer_mod.MAX_QUEUE_S
    pacer.close()


def test_the_repair_budget_refuses_a_nack_storm() -> None:
    budget = RepairBudget(1_000_000)  # 25 kB/s of repairs, 12.5 kB at once
    granted = sum(budget.take(1200) for _ in range(1000))
    assert granted <= 11
    assert budget.refused >= 989


@pytest.mark.parametrize(
    ("readings", "queue_free", "low", "high"),
    [
        # 5 % loss with a queue standing on the link (or no delay reading): hold, as GCC.
        ([0.05] * 5, False, 1_000_000, 1_000_000),
        # 5 % loss and no queue: the line's own loss; grow as on a clean line (8 % each).
        ([0.05] * 5, True, 1_469_000, 1_470_000),
        # ... but never past the link's measured capacity.
        ([0.05] * 30, True, 2_000_000, 2_000_000),
        # One second above 10 % among 5 % ones, no queue: a stray count, hold.
        ([0.05, 0.12, 0.05], True, 1_166_000, 1_167_000),
        # Two in a row: the line got worse, back off (x0.94 each).
        ([0.12, 0.12], True, 940_000, 940_000),
        # With a queue, one second above 10 % backs off at once.
        ([0.12], False, 940_000, 940_000),
    ],
)
def test_random_loss_without_a_queue_is_not_congestion(
    readings: list[float], queue_free: bool, low: int, high: int
) -> None:
    est = started(DownlinkEstimator(initial_bps=1_000_000), 900_000)
    est.demand_bps = 5_000_000
    est.capacity_bps = 2_000_000
    for second, fraction in enumerate(readings, start=10):
        est.on_loss(fraction, float(second), queue_free)
    assert low <= est.estimate(40.0).bps <= high
