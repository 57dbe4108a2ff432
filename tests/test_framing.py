"""The point agent's frame assembly (classroom_agent/framing.py): bounded waits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from classroom_agent.framing import MAX_SPAN, FrameBuffer, keyframe_start


@dataclass
class Pkt:
    sequence_number: int
    timestamp: int
    marker: int = 1
    payload_type: int = 96
    payload: bytes = b"\x41"
    _data: bytes = field(default=b"")
    ssrc: int = 1234


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


KEY = b"\x65"  # H.264 IDR slice
DELTA = b"\x41"  # H.264 non-IDR slice


def video(clock: Clock, **kw: float) -> FrameBuffer:
    return FrameBuffer(
        video=True,
        is_keyframe_start=lambda p: keyframe_start("h264", p.payload),
        clock=clock,
        **kw,  # type: ignore[arg-type]
    )


def stamps(frames: list) -> list[int]:  # type: ignore[type-arg]
    return [f.timestamp for f in frames]


def test_video_frames_in_order_released_at_once() -> None:
    clock = Clock()
    buf = video(clock)
    out = []
    # A keyframe of two packets, then single-packet delta frames.
    out += buf.add(Pkt(1, 100, marker=0, payload=KEY))[1]
    assert out == []  # the keyframe is not complete yet
    out += buf.add(Pkt(2, 100, payload=DELTA))[1]
    for seq in range(3, 6):
        out += buf.add(Pkt(seq, 100 + seq))[1]
    assert stamps(out) == [100, 103, 104, 105]
    assert [len(f.packets) for f in out] == [2, 1, 1, 1]


def test_video_waits_for_a_retransmission_within_the_bound() -> None:
    clock = Clock()
    buf = video(clock, max_wait_s=0.5)
    buf.add(Pkt(1, 100, payload=KEY))
    # 2 is lost; 3 and 4 wait for it.
    assert buf.add(Pkt(3, 300)) == (False, [])
    clock.now = 0.3
    assert buf.add(Pkt(4, 400)) == (False, [])
    ask, frames = buf.add(Pkt(2, 200))  # the retransmission: everything goes at once
    assert not ask
    assert stamps(frames) == [200, 300, 400]


def test_video_gives_a_lost_frame_up_after_the_bound_and_asks_for_a_keyframe() -> None:
    clock = Clock()
    buf = video(clock, max_wait_s=0.5, keyframe_interval_s=1.0)
    buf.add(Pkt(1, 100, payload=KEY))
    buf.add(Pkt(3, 300))  # 2 lost for good
    clock.now = 0.6
    ask, frames = buf.add(Pkt(4, 400))
    # 3 and 4 refer to the lost frame: dropped, not decoded into smear.
    assert ask and frames == []
    clock.now = 0.7
    assert buf.add(Pkt(5, 500)) == (False, [])  # asked already, within the interval
    ask, frames = buf.add(Pkt(6, 600, payload=KEY))
    assert not ask and stamps(frames) == [600]
    assert stamps(buf.add(Pkt(7, 700))[1]) == [700]
    assert buf.add(Pkt(2, 200)) == (False, [])  # too late: given up


def test_video_asks_again_while_no_keyframe_comes() -> None:
    clock = Clock()
    buf = video(clock, keyframe_interval_s=1.0)
    asks = []
    for seq in range(1, 31):
        clock.now = seq * 0.1
        asks.append(buf.add(Pkt(seq, seq * 100))[0])
    # The first packet is no keyframe: ask at once, then once a second, not per packet.
    assert sum(asks) == 3
    assert asks[0]


def test_video_never_holds_more_than_the_span() -> None:
    clock = Clock()  # the clock stands still: only the span bound can release
    buf = video(clock, max_wait_s=10.0)
    buf.add(Pkt(1, 1, payload=KEY))
    released = []
    for seq in range(3, MAX_SPAN + 10):
        released += buf.add(Pkt(seq, seq, payload=KEY if seq == MAX_SPAN + 5 else DELTA))[1]
    assert stamps(released)[0] == MAX_SPAN + 5


def test_sequence_numbers_wrap() -> None:
    clock = Clock()
    buf = video(clock)
    out = buf.add(Pkt(65534, 1, payload=KEY))[1]
    for seq, ts in ((65535, 2), (0, 3), (1, 4)):
        out += buf.add(Pkt(seq, ts))[1]
    assert stamps(out) == [1, 2, 3, 4]


def test_padding_is_skipped() -> None:
    clock = Clock()
    buf = video(clock)
    out = buf.add(Pkt(1, 1, payload=KEY))[1]
    out += buf.add(Pkt(2, 1, marker=0, payload=b""))[1]
    out += buf.add(Pkt(3, 2))[1]
    assert stamps(out) == [1, 2]


@pytest.mark.parametrize(
    ("arrivals", "released"),
    [
        # Every packet that arrives is played, in order, however close the losses are
        # (aiortc's buffer threw received packets away when two losses were close).
        ([1, 3, 5, 6, 8, 9, 10, 11, 12], [1, 3, 5, 6, 8, 9, 10, 11, 12]),
        ([1, 2, 4, 5, 6, 7], [1, 2, 4, 5, 6, 7]),
        # A reordered packet inside the reorder window is played in its place.
        ([1, 3, 2, 4, 5], [1, 2, 3, 4, 5]),
    ],
)
def test_audio_plays_what_arrives(arrivals: list[int], released: list[int]) -> None:
    clock = Clock()
    buf = FrameBuffer(video=False, clock=clock)
    out = []
    for seq in arrivals:
        ask, frames = buf.add(Pkt(seq, seq * 960, marker=0))
        assert not ask
        out += frames
    # The tail after the last gap may still wait for the reorder window: flush it.
    clock.now = 1.0
    out += buf.add(Pkt(arrivals[-1] + 4, 0))[1]
    assert [f.packets[0].sequence_number for f in out][: len(released)] == released


def test_audio_gap_waits_at_most_the_reorder_window() -> None:
    clock = Clock()
    buf = FrameBuffer(video=False, reorder_packets=3, max_wait_s=0.1, clock=clock)
    assert len(buf.add(Pkt(1, 0))[1]) == 1
    assert buf.add(Pkt(3, 0))[1] == []
    assert buf.add(Pkt(4, 0))[1] == []
    # Three packets past the gap: 3, 4 and 5 go.
    assert [f.packets[0].sequence_number for f in buf.add(Pkt(5, 0))[1]] == [3, 4, 5]


@pytest.mark.parametrize(
    ("codec", "payload", "key"),
    [
        ("h264", b"\x65\x88", True),  # IDR slice
        ("h264", b"\x67\x42", True),  # SPS
        ("h264", b"\x41\x9a", False),  # non-IDR slice
        ("h264", b"\x18\x00\x02\x67\x42\x00\x02\x68\xce", True),  # STAP-A with SPS
        ("h264", b"\x18\x00\x02\x06\x05\x00\x02\x41\x9a", False),  # STAP-A: SEI + P slice
        ("h264", b"\x7c\x85\x88", True),  # FU-A, first fragment of an IDR slice
        ("h264", b"\x7c\x05\x88", False),  # FU-A, a later fragment
        ("h264", b"\x5c\x81\x9a", False),  # FU-A of a P slice
        ("vp8", b"\x10\x00", True),  # S=1, partition 0, P=0
        ("vp8", b"\x10\x01", False),  # inter frame
        ("vp8", b"\x00\x00", False),  # not the frame's first packet
        ("vp8", b"\x90\x80\x81\x02\x00", True),  # X, I with 15-bit picture id
        ("vp8", b"\x90\x80\x81\x02\x01", False),
        ("h264", b"", False),
    ],
)
def test_keyframe_start(codec: str, payload: bytes, key: bool) -> None:
    assert keyframe_start(codec, payload) is key


async def test_aiortc_receiver_decodes_every_frame_the_buffer_completes() -> None:
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    from tongke import rtc_internals

    class Transport:
        state = "new"

    receiver = RTCRtpReceiver("video", Transport())  # type: ignore[arg-type]
    clock = Clock()
    assert rtc_internals.use_frame_buffer(receiver, lambda: video(clock))
    assert not rtc_internals.use_frame_buffer(receiver, lambda: video(clock))  # once
    # Filled by receive() and its decoder thread in a real session.
    receiver._RTCRtpReceiver__codecs[96] = RTCRtpCodecParameters(  # type: ignore[attr-defined]
        mimeType="video/H264", clockRate=90000, payloadType=96
    )
    receiver._RTCRtpReceiver__decoder_thread = object()  # type: ignore[attr-defined]
    assert rtc_internals.receiver_codec(receiver, 96) == "h264"
    buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    queue = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
    buffer.add(Pkt(1, 1000, payload=KEY, _data=b"k"))
    buffer.add(Pkt(3, 3000, _data=b"c"))
    ask, frame = buffer.add(Pkt(2, 2000, _data=b"b"))  # completes two frames at once
    assert (ask, frame) == (False, None)  # aiortc's own queueing gets nothing to do
    queued = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [(codec.name, f.data, f.timestamp) for codec, f in queued] == [
        ("H264", b"k", 0),
        ("H264", b"b", 1000),
        ("H264", b"c", 2000),
    ]
    assert buffer._nack_timer is None  # nothing missing: no NACK due


def test_a_lost_audio_packet_is_handed_on_from_its_successors_fec_copy() -> None:
    clock = Clock()
    buf = FrameBuffer(video=False, clock=clock, fec_samples=lambda payload: 960)
    out = []
    for seq in (1, 2, 4, 5, 6, 7):  # 3 lost
        out += buf.add(Pkt(seq, seq * 960))[1]
    played = [(f.packets[0].sequence_number, f.timestamp, f.fec) for f in out]
    # Packet 4 is handed on twice: first for 3's place (its FEC copy), then as itself.
    assert played == [
        (1, 960, False),
        (2, 1920, False),
        (4, 3 * 960, True),
        (4, 4 * 960, False),
        (5, 5 * 960, False),
        (6, 6 * 960, False),
        (7, 7 * 960, False),
    ]
    assert buf.stats()["fec_frames"] == 1 and buf.stats()["skipped_gaps"] == 1


def test_the_agents_opus_decoder_rebuilds_a_lost_packets_audio() -> None:
    import fractions

    import av
    import numpy as np

    from classroom_agent import opus_fec

    if not opus_fec.available():
        pytest.skip("no libopus")
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = 48000, "stereo", "s16", 32000
    enc.time_base = fractions.Fraction(1, 48000)
    # As the agents encode (classroom_agent/encoding.py).
    enc.options = {"application": "voip", "frame_duration": "20", "fec": "1", "packet_loss": "10"}
    enc.open()
    packets: list[bytes] = []
    for i in range(30):
        t = np.arange(960) + i * 960
        tone = (np.sin(2 * np.pi * 440 * t / 48000) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48000, i * 960
        packets += [bytes(p) for p in enc.encode(frame)]

    @dataclass
    class Encoded:
        data: bytes
        timestamp: int
        fec: bool = False

    decoder = opus_fec.FecOpusDecoder()
    for i in range(20):
        decoder.decode(Encoded(packets[i], i * 960))
    # Packet 20 is lost; 21 carries its FEC copy: the tone goes on where 20 was.
    rebuilt = decoder.decode(Encoded(packets[21], 20 * 960, fec=True))
    assert [f.samples for f in rebuilt] == [960]
    assert rebuilt[0].pts == 20 * 960
    assert np.abs(rebuilt[0].to_ndarray()).max() > 2000


def test_the_agent_finds_libopus_in_pyavs_wheel_when_the_system_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A classroom box or a slim container without Debian's libopus0 still rebuilds lost
    audio: PyAV's wheel carries its own libopus."""
    import ctypes.util
    from pathlib import Path

    import av

    from classroom_agent import opus_fec

    if not list((Path(av.__file__).resolve().parent.parent / "av.libs").glob("libopus*")):
        pytest.skip("this PyAV was not installed from a wheel that bundles libopus")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libopus-not-here.so.0")
    opus_fec._lib.cache_clear()
    try:
        assert opus_fec.available()
        assert "av.libs" in opus_fec._lib()._name
        assert opus_fec.packet_samples(b"\xf8\xff\xfe") == 960  # a 20 ms Opus packet
    finally:
        opus_fec._lib.cache_clear()


# -- NACKs: asked at once, asked again, never for what was given up ----------------------


def nack_rounds(buf: FrameBuffer, clock: Clock, times: list[float]) -> list[list[int]]:
    out = []
    for t in times:
        clock.now = t
        out.append(buf.nacks())
    return out


@pytest.mark.parametrize(
    ("times", "asked"),
    [
        # At once, then again every retry (1.25 x the 0.25 s first repair guess), not
        # between: a lost retransmission is asked for again (aiortc's generator waited
        # for the stream's next loss).
        ([0.0, 0.1, 0.3, 0.32], [[3], [], [], [3]]),
        ([0.0, 0.32, 0.64, 0.96], [[3], [3], [3], [3]]),
    ],
)
def test_a_missing_packet_is_asked_for_again_until_it_comes(
    times: list[float], asked: list[list[int]]
) -> None:
    clock = Clock()
    buf = video(clock)
    for seq in (1, 2, 4):  # 3 lost
        buf.add(Pkt(seq, seq * 100, payload=KEY if seq == 1 else DELTA))
    assert nack_rounds(buf, clock, times) == asked
    buf.add(Pkt(3, 300))
    assert buf.nacks() == [] and buf.next_nack_at() is None


def test_a_packet_given_up_is_not_asked_for_again() -> None:
    clock = Clock()
    buf = video(clock)
    for seq in (1, 2, 4):  # 3 lost
        buf.add(Pkt(seq, seq * 100, payload=KEY if seq == 1 else DELTA))
    assert buf.nacks() == [3]
    clock.now = 1.6  # past the wait: the frame is given up with the next packet
    buf.add(Pkt(5, 500))
    assert buf.dropped_frames == 1
    assert buf.nacks() == [] and buf.next_nack_at() is None


def test_a_packet_is_asked_for_at_most_nack_tries_times() -> None:
    from classroom_agent.framing import NACK_TRIES

    clock = Clock()
    buf = video(clock, max_wait_s=100.0)
    for seq in (1, 3):
        buf.add(Pkt(seq, seq * 100, payload=KEY))
    asked = nack_rounds(buf, clock, [i * 0.5 for i in range(NACK_TRIES + 3)])
    assert sum(len(a) for a in asked) == NACK_TRIES
    assert buf.next_nack_at() is None


def test_the_retry_follows_the_measured_repair_time_of_first_asks() -> None:
    clock = Clock()
    buf = video(clock)
    buf.add(Pkt(1, 100, payload=KEY))
    buf.add(Pkt(3, 300))
    assert buf.nacks() == [2]
    clock.now = 0.6  # the retransmission took 0.6 s
    buf.add(Pkt(2, 200))
    assert buf.repair_s == pytest.approx(0.8 * 0.25 + 0.2 * 0.6)
    assert buf.repaired == 1
    # A packet asked for twice does not time a repair (which ask did it answer?).
    buf.add(Pkt(5, 500))
    assert buf.nacks() == [4]
    clock.now = 0.6 + buf.retry_s
    assert buf.nacks() == [4]
    before = buf.repair_s
    clock.now += 0.05
    buf.add(Pkt(4, 400))
    assert buf.repair_s == before


@pytest.mark.parametrize(
    ("arrivals", "asked"),
    [
        ([65534, 65535, 1], [0]),  # across the wrap
        ([10, 10 + 300], []),  # an outage, not 299 losses
        ([10, 12, 11, 15], [13, 14]),  # a reordered packet fills its own hole
    ],
)
def test_which_gaps_are_nacked(arrivals: list[int], asked: list[int]) -> None:
    clock = Clock()
    buf = video(clock)
    for seq in arrivals:
        buf.add(Pkt(seq, 1000 + seq, payload=KEY))
    assert buf.nacks() == asked


def test_audio_is_never_nacked() -> None:
    clock = Clock()
    buf = FrameBuffer(video=False, clock=clock)
    for seq in (1, 2, 5):
        buf.add(Pkt(seq, seq * 960))
    assert buf.nacks() == []


async def test_nacks_across_the_sequence_wrap_go_out_as_one_packet_aiortc_can_pack() -> None:
    from aiortc.rtcrtpreceiver import RTCRtpReceiver
    from aiortc.rtp import RTCP_RTPFB_NACK, RtcpPacket, RtcpRtpfbPacket

    from tongke import rtc_internals

    class Transport:
        state = "new"

    receiver = RTCRtpReceiver("video", Transport())  # type: ignore[arg-type]
    sent: list[list[int]] = []

    async def send_nack(ssrc: int, lost: list[int]) -> None:
        sent.append(lost)

    receiver._send_rtcp_nack = send_nack  # type: ignore[method-assign]
    assert rtc_internals.use_frame_buffer(receiver, lambda: video(Clock()))
    buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    # 65534, 65535 and 0 are lost, either side of the wrap.
    for seq, ts in ((65533, 100), (1, 200)):
        buffer.add(Pkt(seq, ts, payload=KEY))
    await asyncio.sleep(0)  # the NACK is sent from a task
    assert len(sent) == 1
    # aiortc packs from differences to the first number: it must be able to pack this.
    data = bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=1234, lost=sent[0]))
    (parsed,) = RtcpPacket.parse(data)
    assert sorted(parsed.lost) == [0, 65534, 65535]
    if buffer._nack_timer is not None:
        buffer._nack_timer.cancel()


async def test_the_agent_nacks_through_its_frame_buffer_not_aiortcs_generator() -> None:
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    from tongke import rtc_internals

    class Transport:
        state = "new"

    receiver = RTCRtpReceiver("video", Transport())  # type: ignore[arg-type]
    sent: list[tuple[int, list[int]]] = []

    async def send_nack(ssrc: int, lost: list[int]) -> None:
        sent.append((ssrc, lost))

    receiver._send_rtcp_nack = send_nack  # type: ignore[method-assign]
    assert rtc_internals.use_frame_buffer(receiver, lambda: video(Clock()))
    generator = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
    buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    for seq in (1, 2, 5):
        assert generator.add(Pkt(seq, seq)) is False  # aiortc itself asks for nothing
        buffer.add(Pkt(seq, seq * 100, payload=KEY))
    await asyncio.sleep(0)  # the NACK is sent from a task
    assert sent == [(1234, [3, 4])]
    assert rtc_internals.frame_assembler(receiver).stats()["nacks_sent"] == 2
    # Another loss right after: it waits for the stream's next NACK (one every
    # NACK_INTERVAL_S, with every number then due), not a packet of its own.
    buffer.add(Pkt(7, 700, payload=KEY))
    await asyncio.sleep(0)
    assert sent == [(1234, [3, 4])]
    assert buffer._nack_timer is not None
    buffer._nack_timer.cancel()
