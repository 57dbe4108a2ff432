"""A publisher's uplink read from its packets' arrival: the SFU's side of a point's camera.

A simulated modem (drop-tail queue of 250 ms at the line's rate, random loss after it)
carries a publisher that follows the estimate the way the agent does
(classroom_agent/adapt.py: 85 % of it for media). Deterministic: a seeded generator, a
simulated clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from aiortc import RTCPeerConnection

from media_server.estimator import DownlinkEstimator
from media_server.publisher import Publisher
from media_server.rtpbytes import AST_UNITS_PER_S, one_byte_extension
from media_server.uplink import REPORT_S, UplinkDelay
from tests.test_bandwidth import up_track

AST_ID = 3
PACKET = 1_100


def packet(ast: int, *, ext: bytes | None = None, size: int = PACKET) -> bytes:
    """An RTP packet with a one-byte extension block: mid '0', then abs-send-time."""
    if ext is None:
        ext = bytes([0x10, ord("0"), (AST_ID << 4) | 2]) + ast.to_bytes(3, "big")
    ext += b"\x00" * (-len(ext) % 4)
    header = bytes([0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 5])
    block = b"\xbe\xde" + (len(ext) // 4).to_bytes(2, "big") + ext
    return header + block + b"\x00" * max(0, size - 12 - len(block))


@pytest.mark.parametrize(
    ("data", "ext_id", "value"),
    [
        (packet(0x123456), AST_ID, bytes.fromhex("123456")),
        (packet(0x123456), 1, b"0"),
        (packet(0x123456), 2, None),
        # padding bytes between elements are skipped
        (packet(0, ext=b"\x00\x00" + bytes([0x32, 1, 2, 3])), AST_ID, b"\x01\x02\x03"),
        # an element running past the block is not read
        (packet(0, ext=bytes([0x3F, 1, 2, 3])), AST_ID, None),
        # the reserved id 15 ends the block
        (packet(0, ext=bytes([0xF0, 0, 0x32, 1, 2, 3])), AST_ID, None),
        # no extension bit
        (bytes([0x80, 96]) + bytes(10) + b"payload", AST_ID, None),
        # a two-byte-header block (0x1000) is another format
        (bytes([0x90, 96]) + bytes(10) + b"\x10\x00\x00\x01" + bytes([3, 3, 1, 2]), AST_ID, None),
        # an extension header cut off by the end of the datagram
        (bytes([0x90, 96]) + bytes(10) + b"\xbe", AST_ID, None),
    ],
)
def test_a_header_extension_is_read_or_safely_not_found(
    data: bytes, ext_id: int, value: bytes | None
) -> None:
    assert one_byte_extension(data, ext_id) == value


@dataclass
class Uplink:
    """A publisher at `want_bps` behind a `link_bps` modem; the SFU's reading of it."""

    link_bps: float
    loss: float
    want_bps: float
    follow: bool = True  # the publisher obeys the estimate (the agent does)
    start_ast: int = 0
    seed: int = 7
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.delay = UplinkDelay(AST_ID, 2_500_000)
        self.estimator = DownlinkEstimator(initial_bps=2_500_000, max_bps=4_000_000)
        self.queue_free_at_end = False
        self.sent_bps: list[float] = []  # each second

    def run(self, seconds: float) -> None:
        t = 0.0
        busy_until = 0.0  # when the modem has sent what it holds
        next_report, next_second = REPORT_S, 1.0
        sent = lost = expected = 0
        second_bytes = 0
        queue_limit_s = 0.25
        while t < seconds:
            rate = self.want_bps
            if self.follow:
                rate = min(rate, 0.85 * self.estimator.estimate(t).bps)
            ast = (self.start_ast + int(t * AST_UNITS_PER_S)) % (1 << 24)
            data = packet(ast)
            second_bytes += len(data)
            expected += 1
            # Drop-tail: a packet that would wait longer than the queue holds is lost.
            start = max(t, busy_until)
            if start - t > queue_limit_s:
                lost += 1
            else:
                busy_until = start + len(data) * 8 / self.link_bps
                if self.rng.random() < self.loss:
                    lost += 1
                else:
                    arrival = busy_until + 0.02
                    self.delay.add(data, int(arrival * 1e9))
                    sent += 1
            t += len(data) * 8 / rate
            while t >= next_report:
                self.delay.report(self.estimator, next_report, 0.1)
                next_report += REPORT_S
            if t >= next_second:
                self.estimator.sent_bps = second_bytes * 8
                self.sent_bps.append(second_bytes * 8)
                self.delay.on_loss(self.estimator, lost / max(1, expected), next_second)
                self.queue_free_at_end = self.delay.queue_free
                lost = expected = second_bytes = 0
                next_second += 1.0


def test_a_camera_flooding_a_thin_lossy_uplink_is_brought_under_the_line() -> None:
    # The point agent's camera wants 500 kbit/s; its line carries 256 with 10 % loss.
    # Loss alone cannot tell that line's random loss from its overflowing queue.
    up = Uplink(link_bps=256_000, loss=0.10, want_bps=500_000)
    up.run(60)
    assert up.delay.estimate.cuts, "the queue was never read"
    last = up.sent_bps[-20:]
    assert max(last) < 256_000, f"still sending above the line: {last}"
    # ... and not starved: the line is used.
    assert sum(last) / len(last) > 0.4 * 256_000
    assert up.estimator.estimate(60).bps < 400_000


def test_a_publisher_under_its_lossy_line_is_not_cut() -> None:
    # 150 kbit/s on a 1 Mbit/s line with 10 % random loss: no queue, so no cut, and the
    # estimate grows past the loss (a loss-only estimate holds at 2-10 %).
    up = Uplink(link_bps=1_000_000, loss=0.10, want_bps=150_000, follow=False)
    up.estimator = DownlinkEstimator(initial_bps=300_000, max_bps=4_000_000)
    up.run(30)
    assert not up.delay.estimate.cuts
    assert up.queue_free_at_end
    assert up.estimator.estimate(30).bps > 300_000


def test_abs_send_time_wrapping_is_not_a_jump_in_time() -> None:
    # abs-send-time wraps every 64 s; start just before the wrap on a clean line.
    start = (1 << 24) - 2 * AST_UNITS_PER_S
    up = Uplink(link_bps=2_000_000, loss=0.0, want_bps=400_000, follow=False, start_ast=start)
    up.run(15)
    assert not up.delay.estimate.cuts
    assert up.queue_free_at_end


async def test_an_idle_camera_leaves_the_uplink_estimate_where_video_last_measured_it() -> None:
    """256kbit-10pct: nobody received the point's camera, its encoder stood idle, and the
    clean microphone grew the estimate to 1.7 Mbit/s; the camera resumed at that rate and
    flooded the line. Only the cameras' packets measure their budget."""
    pub = Publisher(
        track_prefix="p", on_tracks=lambda added, gone: None, pc_factory=RTCPeerConnection
    )
    camera, mic = up_track("video", 1), up_track("audio", 2)
    pub.tracks = {"0": camera, "1": mic}
    for _ in range(15):  # the line's overflow cut it (loss on the camera and microphone)
        camera.stats.packets += 20
        camera.stats.lost += 30
        mic.stats.packets += 50
        pub._measure_uplink()
    cut = pub.uplink_bps()
    assert cut < 500_000
    for _ in range(30):  # the camera idle, the microphone clean
        mic.stats.packets += 50
        pub._measure_uplink()
    assert pub.uplink_bps() == cut
    for _ in range(5):  # the camera back and its packets clean: growth resumes
        camera.stats.packets += 20
        mic.stats.packets += 50
        pub._measure_uplink()
    assert pub.uplink_bps() > cut
    await pub.close()
