"""The Forwarder's state machine, table by table: no I/O, no clock but a fake one."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from media_server.downtrack import DownTrack
from media_server.forwarder import DROP, Forwarder, lower
from media_server.rtpbytes import HEADER
from media_server.sink import MemorySink


@dataclass(eq=False)
class Layer:
    layer: str
    clock_rate: int = 90000
    last_packet_at: float = 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def out(value: tuple[int, int] | None) -> tuple[int, int] | None:
    return value


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (None, None, None),
        ("h", None, "h"),
        (None, "m", "m"),
        ("h", "l", "l"),
        ("l", "m", "l"),
        ("m", "m", "m"),
    ],
)
def test_the_lower_ceiling_wins(a: str | None, b: str | None, expected: str | None) -> None:
    assert lower(a, b) == expected


# Each step: (layer fed, incoming seq, incoming ts, keyframe?) -> expected outgoing
# (seq, ts) relative to the first packet sent, or None when dropped.
SWITCH_TABLE = [
    ("h", 100, 1000, False, None),  # no keyframe yet: nothing goes out
    ("h", 101, 4000, True, (0, 0)),  # keyframe: start
    ("h", 102, 7000, False, (1, 3000)),
    ("l", 900, 55000, False, None),  # target is h; l is not forwarded
    ("h", 104, 13000, False, (3, 9000)),  # a gap upstream stays a gap
]


def test_start_waits_for_a_keyframe_then_follows_the_source() -> None:
    clock = Clock()
    high, low = Layer("h"), Layer("l")
    fwd = Forwarder(seed=500, clock=clock)
    assert fwd.retarget(high) is True  # a keyframe is needed
    layers = {"h": high, "l": low}
    first: tuple[int, int] | None = None
    for name, seq, ts, key, expected in SWITCH_TABLE:
        got = out(fwd.translate(layers[name], seq, ts, key))
        if got is not None and first is None:
            first = got
        rel = None if got is None else ((got[0] - first[0]) & 0xFFFF, got[1] - first[1])
        assert rel == expected, (name, seq)


def test_a_layer_switch_happens_at_the_keyframe_and_stays_continuous() -> None:
    clock = Clock()
    high, low = Layer("h"), Layer("l")
    fwd = Forwarder(seed=7, clock=clock)
    fwd.retarget(high)
    a = out(fwd.translate(high, 10, 90_000, True))
    high.last_packet_at = clock.now
    b = out(fwd.translate(high, 11, 93_000, False))
    assert a is not None and b is not None
    assert fwd.retarget(low) is True
    assert out(fwd.translate(low, 5000, 1_000_000, False)) is None  # wait for its keyframe
    c = out(fwd.translate(high, 12, 96_000, False))  # the old layer carries on meanwhile
    assert c == ((b[0] + 1) & 0xFFFF, b[1] + 3000)
    clock.now += 0.1  # 100 ms after the last packet went out
    d = out(fwd.translate(low, 5001, 1_003_000, True))
    assert d is not None
    assert d[0] == (c[0] + 1) & 0xFFFF
    assert d[1] - c[1] == 9000  # the wall time since the last packet, in 90 kHz ticks
    assert fwd.current is low and fwd.switches == 1
    assert out(fwd.translate(high, 13, 99_000, True)) is None  # the old layer is done


def test_pause_stops_and_resume_restarts_at_a_keyframe_without_a_sequence_gap() -> None:
    clock = Clock()
    up = Layer("h")
    fwd = Forwarder(clock=clock)
    fwd.retarget(up)
    first = out(fwd.translate(up, 1, 0, True))
    assert first is not None
    fwd.paused_by_allocator = True
    assert fwd.retarget(up) is False
    assert out(fwd.translate(up, 2, 3000, False)) is None
    assert out(fwd.translate(up, 3, 6000, True)) is None  # paused: even keyframes wait
    fwd.paused_by_allocator = False
    assert fwd.retarget(up) is True
    assert out(fwd.translate(up, 4, 9000, False)) is None
    # Until the keyframe the picture is still the one from before the pause: the
    # subscriber is told it is paused, not shown a frozen picture as live.
    assert fwd.resuming
    resumed = out(fwd.translate(up, 5, 12000, True))
    assert resumed is not None and resumed[0] == (first[0] + 1) & 0xFFFF
    assert not fwd.resuming


def test_a_first_start_is_not_a_resume() -> None:
    up = Layer("h")
    fwd = Forwarder(clock=Clock())
    assert not fwd.resuming
    fwd.retarget(up)
    assert not fwd.resuming  # waiting for the first picture: the page says "waiting"
    fwd.translate(up, 1, 0, True)
    assert not fwd.resuming


def test_a_nack_maps_back_only_to_the_packet_that_was_sent_under_that_number() -> None:
    up = Layer("h")
    fwd = Forwarder(seed=0)
    fwd.retarget(up)
    sent = [out(fwd.translate(up, seq, seq * 10, seq == 0)) for seq in range(5000)]
    last = sent[-1]
    assert last is not None
    # Recent packets map back to their incoming numbers.
    assert fwd.source_seq(last[0]) == 4999
    assert fwd.source_seq((last[0] - 100) & 0xFFFF) == 4899
    # A packet whose map slot has since been reused by a newer one gets nothing.
    old = sent[4999 - 4096]
    assert old is not None
    assert fwd.source_seq(old[0]) == DROP
    # A number never sent gets nothing.
    assert fwd.source_seq((last[0] + 1) & 0xFFFF) == DROP


def test_after_a_layer_switch_nacks_for_the_old_layer_get_nothing() -> None:
    high, low = Layer("h"), Layer("l")
    fwd = Forwarder()
    fwd.retarget(high)
    before = out(fwd.translate(high, 1, 0, True))
    fwd.retarget(low)
    out(fwd.translate(low, 50, 0, True))
    assert before is not None
    assert fwd.source_seq(before[0]) == DROP


def test_the_ceiling_is_the_lower_of_the_pin_and_the_allocation() -> None:
    fwd = Forwarder()
    fwd.pinned = "m"
    fwd.allocated = "h"
    assert fwd.ceiling == "m"
    fwd.allocated = "l"
    assert fwd.ceiling == "l"
    fwd.paused_by_user = True
    assert fwd.paused


# Each step: an incoming seq, or "pad" (a probe's padding) -> the expected outgoing seq
# relative to the first packet, and for media what a NACK for that number resends.
PAD_TABLE: list[tuple[int | str, int]] = [
    (10, 0),
    (11, 1),
    (13, 3),  # 12 is late
    ("pad", 4),  # padding takes the next number...
    (14, 5),  # ...and the stream continues after it
    (12, 2),  # the late packet keeps its own number, not the padding's or 13's
    ("pad", 6),
    ("pad", 7),
    (15, 8),
    (16, 9),
]


def test_padding_while_forwarding_shifts_the_stream_and_never_a_late_packet() -> None:
    high = Layer("h")
    fwd = Forwarder(seed=500, clock=Clock())
    fwd.retarget(high)  # type: ignore[arg-type]
    assert fwd.translate(high, 9, 0, True) is not None  # type: ignore[arg-type]
    first = (fwd.last_seq + 1) & 0xFFFF
    for step, expected in PAD_TABLE:
        if step == "pad":
            got = fwd.pad()
            assert got is not None and (got[0] - first) & 0xFFFF == expected
            assert fwd.padded(got[0]) and fwd.source_seq(got[0]) == DROP
            continue
        assert isinstance(step, int)
        got = fwd.translate(high, step, step * 3000, False)  # type: ignore[arg-type]
        assert got is not None and (got[0] - first) & 0xFFFF == expected
        assert fwd.source_seq(got[0]) == step and not fwd.padded(got[0])


def test_the_downtracks_in_line_translation_is_the_forwarders() -> None:
    """DownTrack.forward translates current-layer packets on the forwarder's fast path
    (the hot path): what it sends, and the state it leaves, must be what
    Forwarder.translate gives."""
    high = Layer("h")
    clock = Clock()
    twin = Forwarder(seed=500, clock=clock)
    twin.retarget(high)  # type: ignore[arg-type]
    sink = MemorySink()
    down = DownTrack(sink=sink, ssrc=500, payload_type=96)
    down.forwarder = Forwarder(seed=500, clock=clock)
    down.forwarder.retarget(high)  # type: ignore[arg-type]
    steps: list[int | str] = [9, *(step for step, _ in PAD_TABLE)]
    for n, step in enumerate(steps):
        if step == "pad":
            assert down.forwarder.pad() == twin.pad()
            continue
        assert isinstance(step, int)
        high.last_packet_at = float(n)
        expected = twin.translate(high, step, step * 3000, step == 9)  # type: ignore[arg-type]
        down.forward(high, b"x", 0, step, step * 3000, step == 9, b"")  # type: ignore[arg-type]
        assert expected is not None
        assert HEADER.unpack_from(sink.rtp[-1])[2:4] == expected
        assert down.forwarder.__dict__ == twin.__dict__
