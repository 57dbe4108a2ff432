"""The point agent's transport-cc reports: what the SFU reads back of them is when each
of its packets arrived, whatever the order, the gaps and the wrap. Table-driven, no
network, no clock."""

from __future__ import annotations

import pytest

from classroom_agent.transport_feedback import MAX_REPORT, MAX_SPAN, ArrivalLog, transport_seq
from media_server.twcc import DELTA_UNIT_US, parse_feedback

EXT = 5
SSRC = 0x1234_5678


def element(ext_id: int, value: bytes) -> bytes:
    return bytes([ext_id << 4 | (len(value) - 1)]) + value


def packet(elements: bytes, *, csrcs: int = 0, profile: bytes = b"\xbe\xde") -> bytes:
    """An SRTP-looking packet: clear header, one-byte extensions, opaque payload."""
    elements += bytes(-len(elements) % 4)
    header = bytes([0x90 | csrcs, 96, 0, 1]) + bytes(4) + SSRC.to_bytes(4, "big")
    header += bytes(4 * csrcs)
    return header + profile + (len(elements) // 4).to_bytes(2, "big") + elements + bytes(40)


def tcc(seq: int) -> bytes:
    """As the SFU stamps it: the transport-cc element first."""
    return packet(element(EXT, seq.to_bytes(2, "big")) + element(1, b"a"))


@pytest.mark.parametrize(
    ("data", "seq"),
    [
        (tcc(513), 513),
        (packet(element(1, b"mid") + element(EXT, b"\x01\x02")), 0x0102),  # after the mid
        (packet(element(1, b"0") + b"\x00\x00" + element(EXT, b"\xff\xff")), 0xFFFF),  # padding
        (packet(element(EXT, b"\x00\x07"), csrcs=2), 7),  # after two CSRCs
        (packet(element(1, b"mid")), None),  # not stamped
        (packet(element(EXT, b"\x00\x07"), profile=b"\x10\x00"), None),  # two-byte headers
        (packet(element(EXT, b"\x01")), None),  # the wrong size
        (packet(element(15, b"\x00") + element(EXT, b"\x00\x07")), None),  # after a stop
        (tcc(9)[:17], None),  # truncated inside the extension block
        (bytes([0x80, 96]) + bytes(30), None),  # no extension at all
        (b"\x90", None),
    ],
)
def test_the_sequence_number_is_read_from_the_clear_header(data: bytes, seq: int | None) -> None:
    assert transport_seq(data, EXT) == seq


def reported(log: ArrivalLog) -> list[tuple[int, int | None]]:
    data = log.report()
    assert data is not None
    fb = parse_feedback(data)
    assert int.from_bytes(data[8:12], "big") == SSRC  # the media SSRC
    return fb.packets


def offsets(packets: list[tuple[int, int | None]]) -> list[int | None]:
    """Arrivals relative to the first received one, in microseconds."""
    first = next(a for _, a in packets if a is not None)
    return [None if a is None else a - first for _, a in packets]


def test_arrivals_in_order_with_a_loss_are_reported_as_they_came() -> None:
    log = ArrivalLog(EXT, started=100.0)
    for seq, at in [(10, 100.5), (11, 100.502), (13, 100.51), (14, 100.9)]:
        log.on_packet(tcc(seq), at)
    packets = reported(log)
    assert [s for s, _ in packets] == [10, 11, 12, 13, 14]
    got = offsets(packets)
    want = [0, 2_000, None, 10_000, 400_000]
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None and w is not None:
            assert abs(g - w) <= DELTA_UNIT_US
    assert log.report() is None  # nothing new since


def test_a_packet_arriving_after_a_report_called_it_lost_is_reported_again_as_received() -> None:
    # The SFU numbers packets as it queues them: audio overtakes video queued before it.
    log = ArrivalLog(EXT, started=0.0)
    log.on_packet(tcc(1), 1.0)
    log.on_packet(tcc(3), 1.001)
    assert [(s, a is not None) for s, a in reported(log)] == [(1, True), (2, False), (3, True)]
    log.on_packet(tcc(2), 1.03)
    log.on_packet(tcc(4), 1.031)
    again = reported(log)
    assert [(s, a is not None) for s, a in again] == [(2, True), (3, True), (4, True)]
    assert log.late == 1
    assert offsets(again)[1] is not None and offsets(again)[1] < 0  # 3 came before 2


def test_numbers_wrap_and_duplicates_count_once() -> None:
    log = ArrivalLog(EXT, started=0.0)
    for i, seq in enumerate([65_534, 65_535, 65_535, 0, 1]):
        log.on_packet(tcc(seq), 1.0 + i * 0.001)
    packets = reported(log)
    assert [s for s, _ in packets] == [65_534, 65_535, 0, 1]
    assert all(a is not None for _, a in packets)


def test_a_silence_longer_than_a_delta_holds_splits_the_report() -> None:
    log = ArrivalLog(EXT, started=0.0)
    log.on_packet(tcc(7), 1.0)
    log.on_packet(tcc(8), 12.0)  # 11 s later: over the format's 8.2 s delta
    assert [s for s, _ in reported(log)] == [7]
    assert [s for s, _ in reported(log)] == [8]
    assert log.report() is None


def test_a_jump_far_ahead_reports_only_the_last_span() -> None:
    log = ArrivalLog(EXT, started=0.0)
    log.on_packet(tcc(100), 1.0)
    top = 100 + 3 * MAX_SPAN
    log.on_packet(tcc(top), 1.1)
    packets: list[tuple[int, int | None]] = []
    while (data := log.report()) is not None:
        packets += parse_feedback(data).packets
    assert [s for s, _ in packets] == [(top - MAX_SPAN + 1 + i) & 0xFFFF for i in range(MAX_SPAN)]
    assert packets[-1][1] is not None
    log.on_packet(tcc(100), 1.2)  # far older than any report covers: ignored
    assert log.report() is None


def test_packets_without_the_extension_are_not_reported() -> None:
    log = ArrivalLog(EXT, started=0.0)
    log.on_packet(packet(element(1, b"mid")), 1.0)
    assert log.report() is None


def test_a_long_run_of_numbers_is_reported_in_parts_that_fit_a_packet() -> None:
    log = ArrivalLog(EXT, started=0.0)
    total = MAX_REPORT + 50
    for i in range(total):
        log.on_packet(tcc(i), 1.0 + i * 0.0001)
    data = log.report()
    assert data is not None and len(data) <= 1200
    first = parse_feedback(data).packets
    second = reported(log)
    assert [s for s, _ in first + second] == list(range(total))
    assert all(a is not None for _, a in first + second)
