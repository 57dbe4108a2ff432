"""Keyframe requests and a layer's measured rate: what every receiver of a layer pays for."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from media_server import downtrack as downtrack_module
from media_server import uptrack as uptrack_module
from media_server.downtrack import REPAIR_BACKOFF_MAX_S, DownTrack
from media_server.keyframes import KeyframeGate, overtaken
from media_server.sink import MemorySink
from media_server.uptrack import KEYFRAME_MIN_INTERVAL_S, KEYFRAME_URGENT_S, UpTrack

INF = float("inf")

# (gate, [(time, last keyframe at, urgent, sent when allowed?)], expected waits)
GATE_CASES = [
    (
        "a repair waits for the interval after the last request",
        KeyframeGate(1.0),
        [(10.0, -INF, False, True), (10.4, -INF, False, False), (11.2, -INF, False, False)],
        [0.0, 0.6, 0.0],
    ),
    (
        "a repair waits for the interval after a keyframe that just arrived",
        KeyframeGate(1.0),
        [(10.0, 9.7, False, False), (10.8, 9.7, False, False)],
        [0.7, 0.0],
    ),
    (
        "a subscriber that must start on the layer waits only the urgent spacing",
        KeyframeGate(1.0, urgent_s=0.3),
        [(10.0, -INF, False, True), (10.1, 10.05, True, False), (10.4, 10.05, True, False)],
        [0.0, 0.2, 0.0],
    ),
    (
        "repeated repairs soon after being served double the interval, up to the cap",
        KeyframeGate(1.0, backoff_max_s=4.0),
        [
            (10.0, -INF, False, True),
            (11.0, -INF, False, True),  # asked again 1 s after: now 2 s
            (13.0, -INF, False, True),  # again: 4 s
            (17.0, -INF, False, True),  # again: stays at the 4 s cap
            (18.0, -INF, False, False),
        ],
        [0.0, 0.0, 0.0, 0.0, 3.0],
    ),
    (
        "a calm period brings the interval back",
        KeyframeGate(1.0, backoff_max_s=4.0, calm_s=10.0),
        [
            (10.0, -INF, False, True),
            (11.0, -INF, False, True),  # 2 s now
            (30.0, -INF, False, True),  # 19 s later: 1 s again
            (30.5, -INF, False, False),
        ],
        [0.0, 0.0, 0.0, 0.5],
    ),
]


@pytest.mark.parametrize(
    ("gate", "asks", "waits"), [c[1:] for c in GATE_CASES], ids=[c[0] for c in GATE_CASES]
)
def test_keyframe_gate(
    gate: KeyframeGate, asks: list[tuple[float, float, bool, bool]], waits: list[float]
) -> None:
    got = []
    for now, key_at, urgent, send in asks:
        wait = gate.wait(now, key_at, urgent=urgent)
        got.append(round(wait, 6))
        if send:
            assert wait == 0
            gate.sent(now)
    assert got == waits


def test_a_keyframe_after_the_ask_answers_it() -> None:
    assert overtaken(asked_at=5.0, last_keyframe_at=5.2)
    assert not overtaken(asked_at=5.0, last_keyframe_at=4.9)


# -- an UpTrack's rate ----------------------------------------------------------------------


def rtp(seq: int, ts: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, ts & 0xFFFFFFFF, 1111) + payload


VP8_KEY = b"\x10\x00"  # S=1, partition 0, P=0: a keyframe's first packet
VP8_DELTA = b"\x10\x01"
VP8_CONT = b"\x00\x01"


def make_up(requests: list[str] | None = None) -> UpTrack:
    return UpTrack(
        track_id="p1/teacher_camera/h",
        source="teacher_camera",
        layer="h",
        kind="video",
        codec="vp8",
        clock_rate=90000,
        ssrc=1111,
        payload_type=96,
        rtx_ssrc=None,
        rtx_payload_type=None,
        request_keyframe=lambda up: (requests if requests is not None else []).append(up.layer),
        request_nack=lambda up: None,
    )


class Camera:
    """A 30 fps layer: 4 kB delta frames, a 75 kB keyframe every 2 s (~1.25 Mbit/s)."""

    def __init__(self, up: UpTrack) -> None:
        self.up = up
        self.seq = 0
        self.frame = 0
        self.sent = 0

    def _send(self, ts: int, payload: bytes) -> None:
        data = rtp(self.seq, ts, payload)
        self.up.on_rtp(data, 0)
        self.seq += 1
        self.sent += len(data)

    def next_frame(self) -> None:
        ts = self.frame * 3000
        if self.frame % 60 == 0:
            self._send(ts, VP8_KEY + bytes(1000))
            for _ in range(74):
                self._send(ts, VP8_CONT + bytes(1000))
        else:
            for _ in range(4):
                self._send(ts, VP8_DELTA + bytes(1000))
        self.frame += 1


def test_keyframe_bytes_are_counted_apart() -> None:
    up = make_up()
    cam = Camera(up)
    for _ in range(60):
        cam.next_frame()
    assert up.stats.keyframes == 1
    assert up.stats.keyframe_bytes == 75 * (12 + 1002)
    assert up.stats.bytes == cam.sent


def test_a_keyframe_does_not_swell_the_measured_rate() -> None:
    """Read twice a second at every phase of the GOP: within 8 % of the true mean rate
    (the old 0.5 s average read this layer at up to 1.18 times its mean)."""
    up = make_up()
    cam = Camera(up)
    readings = []
    for tick in range(80):  # 40 s, a reading every 0.5 s (15 frames)
        for _ in range(15):
            cam.next_frame()
        bps = up.bitrate_bps(100.0 + (tick + 1) * 0.5)
        if tick >= 24:  # after 12 s: the keyframe window is full
            readings.append(bps)
    mean = cam.sent * 8 / 40  # about 1.25 Mbit/s, keyframes included
    assert max(readings) <= 1.08 * mean
    assert min(readings) >= 0.92 * mean


def test_a_layer_that_stops_keeps_its_rate() -> None:
    up = make_up()
    cam = Camera(up)
    for tick in range(30):
        for _ in range(15):
            cam.next_frame()
        up.bitrate_bps(100.0 + (tick + 1) * 0.5)
    before = up.bitrate_bps(115.0)
    assert before > 1_000_000
    assert up.bitrate_bps(120.0) == before  # idle for 5 s
    assert up.bitrate_bps(130.0) == before


# -- keyframe requests to the publisher ----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def perf_counter_ns(self) -> int:
        return int(self.now * 1e9)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    fake = SimpleNamespace(monotonic=c.monotonic, time=c.time, perf_counter_ns=c.perf_counter_ns)
    monkeypatch.setattr(uptrack_module, "time", fake)
    monkeypatch.setattr(downtrack_module, "time", fake)
    return c


def fire_deferred(up: UpTrack) -> None:
    """Run the deferred request now (the test's clock has reached its time)."""
    handle = up._kf_deferred
    assert handle is not None
    handle.cancel()
    up._send_keyframe_request(True)


async def test_repairs_after_a_keyframe_wait_and_a_new_keyframe_answers_them(
    clock: Clock,
) -> None:
    sent: list[str] = []
    up = make_up(sent)
    cam = Camera(up)
    cam.next_frame()  # a keyframe arrives
    clock.now += 0.2
    for _ in range(5):  # five subscribers' PLIs
        up.request_keyframe()
    assert sent == []  # the keyframe that just left may still be on its way to them
    assert up._kf_deferred_at == pytest.approx(1000.0 + KEYFRAME_MIN_INTERVAL_S)
    clock.now += 0.9
    fire_deferred(up)
    assert sent == ["h"]
    # Asked again, but the periodic keyframe arrives before the request may go.
    clock.now += 0.3
    up.request_keyframe()
    assert up._kf_deferred is not None
    clock.now += 0.2
    cam.frame = 60
    cam.next_frame()
    clock.now += 0.6
    fire_deferred(up)
    assert sent == ["h"]
    assert up.stats.keyframe_requests == 1
    up.close()


async def test_a_subscriber_starting_on_the_layer_is_served_promptly(clock: Clock) -> None:
    sent: list[str] = []
    up = make_up(sent)
    cam = Camera(up)
    cam.next_frame()
    clock.now += 0.1
    up.request_keyframe()  # a repair: deferred to 1 s after the keyframe
    clock.now += 0.05
    up.request_keyframe(urgent=True)  # a switch to this layer: now
    assert sent == ["h"]
    assert up._kf_deferred is None
    clock.now += 0.1
    up.request_keyframe(urgent=True)  # coalesced with the one on its way
    assert up._kf_deferred_at == pytest.approx(clock.now - 0.1 + KEYFRAME_URGENT_S)
    # A keyframe from before this ask is no answer for a subscriber that must start on
    # a new one: the deferred request still goes.
    clock.now += 0.2
    fire_deferred(up)
    assert sent == ["h", "h"]
    up.close()


def forwarding_a_layer_that_notes_requests(clock: Clock) -> tuple[DownTrack, list[float]]:
    """A subscriber's DownTrack on a layer that never sends a keyframe, and the times at
    which keyframe requests reached that layer."""
    asked: list[float] = []
    layer = SimpleNamespace(
        request_keyframe=lambda: asked.append(clock.now),
        last_keyframe_at=-INF,
        detach=lambda down: None,
    )
    down = DownTrack(sink=MemorySink(), ssrc=5, payload_type=96)
    down.forwarder.current = layer  # type: ignore[assignment]
    return down, asked


async def test_one_subscriber_that_keeps_losing_keyframes_backs_off(clock: Clock) -> None:
    """A PLI every 0.5 s that no keyframe repairs: the subscriber's requests go on at 1,
    then 2, then 4 s spacing (its deferred requests left out: each PLI asks anew)."""
    down, asked = forwarding_a_layer_that_notes_requests(clock)
    start = clock.now
    for _ in range(24):
        clock.now += 0.5
        down.request_keyframe()
        if down._repair_deferred is not None:
            down._repair_deferred.cancel()
            down._repair_deferred = None
    assert [round(t - start, 1) for t in asked] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert REPAIR_BACKOFF_MAX_S == 4.0
    assert down.stats.keyframes_asked == len(asked)
    down.close()


async def test_the_stats_tell_pli_received_from_keyframes_asked_upstream(clock: Clock) -> None:
    """An operator reading /api/stats sees how often a point asked (PLI) and how often the
    SFU passed it on: ten PLIs within a second are one request to the publisher."""
    down, asked = forwarding_a_layer_that_notes_requests(clock)
    for _ in range(10):
        clock.now += 0.05
        down.on_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=5))
    assert down.stats.keyframe_requests == 10
    assert down.stats.keyframes_asked == len(asked) == 1
    down.close()
