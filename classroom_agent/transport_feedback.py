"""When each packet the SFU sent us arrived: transport-wide congestion control feedback.

The SFU stamps every packet it sends a subscriber with one transport-wide sequence
number, where the subscriber accepts the extension (media_server/twcc.py). A browser
then reports, every 50-250 ms, which of them arrived and when, and the SFU's send-side
delay estimate sees the subscriber's line fill before it loses anything. aiortc neither
accepts the extension nor reports; without it the SFU learnt a point agent's line only
from receiver reports, which count a loss after our repairs and a second late, and it
could tell a line's capacity only by overflowing it (media_server/overflow.py): on a
256 kbit/s line a retest 1.1-1.2x over what the line carries passed (its 15 kB queue
absorbed the padding), let the teacher's picture in, and the picture stood still under
"live" when the line overflowed seconds later.

So the agent accepts the extension and reports as a browser does. Each packet's arrival
is read in the socket callback, before aiortc's DTLS queue and decryption: the RTP
header and its extensions travel in the clear under SRTP. A busy agent's event loop
delays that callback, and a stall reads as a queue that drains at once; the SFU's
estimate tells the two apart by the rate the packets arrive at (delay_estimate.py).
The header is read before SRTP authenticates the packet: a forged one would have to
come from the SFU's own ICE address (the datagram guard drops others), and at worst it
skews the estimate, never the media.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from media_server.rtpbytes import one_byte_extension
from media_server.twcc import MAX_DELTA_US, build_feedback

log = logging.getLogger(__name__)

# A report every 100 ms: Chromium's interval at the rates a rural point receives (it
# scales 50-250 ms to keep feedback near 5 % of its uplink). At 256 kbit/s, about 30
# packets a second, that is 3 packets a report and ~6 kbit/s of the point's uplink.
INTERVAL_S = 0.1
# At most this many sequence numbers in one report (a jump, a burst of reordering): the
# rest is reported lost.
MAX_SPAN = 2000
# At most this many numbers in one report (about 1 kB: under any path's MTU); more go in
# the next one. A packet later than that behind the last report is counted lost.
MAX_REPORT = 400
# Arrivals remembered, at most (the last MAX_SPAN numbers are kept).
MAX_PENDING = 4 * MAX_SPAN


def transport_seq(packet: bytes, ext_id: int) -> int | None:
    """The transport-wide sequence number in an RTP packet's one-byte header extension
    with `ext_id` (RFC 8285), or None. Reads only the header, which SRTP leaves clear."""
    value = one_byte_extension(packet, ext_id) if len(packet) >= 12 else None
    return value[0] << 8 | value[1] if value is not None and len(value) == 2 else None


class ArrivalLog:
    """What arrived lately, and the reports of it. No I/O, no clock: the caller passes
    each packet's arrival time (seconds, monotonic).

    A packet that arrives after a report called it lost (the SFU numbers a packet as it
    queues it, and the audio overtakes the video queued before it) moves the next
    report's start back to it, as Chromium does: the SFU takes a later report's word
    over an earlier one's. Without that, on a 1 Mbit/s line, a third of the packets read
    lost, and the SFU cut its estimate to a tenth of the line."""

    def __init__(self, ext_id: int, started: float) -> None:
        self.ext_id = ext_id
        self._started = started
        self._arrivals: dict[int, int] = {}  # unwrapped seq -> arrival (us since started)
        self._highest: int | None = None  # unwrapped
        self._next: int | None = None  # the first number the next report covers
        self._fresh = False  # something arrived since the last report
        self._count = 0
        self.media_ssrc = 0
        self.late = 0  # packets that arrived after a report had called them lost

    def on_packet(self, packet: bytes, now: float) -> None:
        seq = transport_seq(packet, self.ext_id)
        if seq is None:
            return
        highest = self._highest
        if highest is None:
            unwrapped = seq
            self.media_ssrc = int.from_bytes(packet[8:12], "big")
        else:
            diff = (seq - highest) & 0xFFFF
            unwrapped = highest + diff if diff < 0x8000 else highest - (0x10000 - diff)
            if unwrapped <= highest - MAX_SPAN:
                return  # far older than anything a report still covers
        if unwrapped in self._arrivals:
            return  # a duplicate
        if self._next is not None and unwrapped < self._next:
            self.late += 1
            if self._next - unwrapped > MAX_REPORT:
                return
            self._next = unwrapped
        if highest is None or unwrapped > highest:
            self._highest = unwrapped
        if len(self._arrivals) < MAX_PENDING:
            self._arrivals[unwrapped] = int((now - self._started) * 1_000_000)
            self._fresh = True

    def report(self) -> bytes | None:
        """The next feedback packet, covering every number from the first not yet
        reported (or arrived late) up to the highest received (None: nothing arrived
        since the last one)."""
        highest = self._highest
        if not self._fresh or highest is None:
            return None
        self._fresh = False
        base = min(self._arrivals) if self._next is None else self._next
        base = max(base, highest - MAX_SPAN + 1)
        arrivals: list[int | None] = []
        last: int | None = None
        end = highest
        for seq in range(base, highest + 1):
            arrival = self._arrivals.get(seq)
            # Beyond what one report holds (its size, or its widest delta): the next one's.
            if len(arrivals) == MAX_REPORT or (
                arrival is not None and last is not None and abs(arrival - last) > MAX_DELTA_US
            ):
                end = seq - 1
                self._fresh = True
                break
            arrivals.append(arrival)
            if arrival is not None:
                last = arrival
        self._next = end + 1
        for seq in [s for s in self._arrivals if s <= highest - MAX_SPAN]:
            del self._arrivals[seq]
        packet = build_feedback(
            base & 0xFFFF, arrivals, count=self._count, media_ssrc=self.media_ssrc
        )
        self._count = (self._count + 1) & 0xFF
        return packet


class TransportFeedback:
    """Reports one subscribe connection's arrivals every INTERVAL_S through `send`."""

    def __init__(self, log_: ArrivalLog, send: Callable[[bytes], Awaitable[None]]) -> None:
        self.log = log_
        self._send = send
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            packet = self.log.report()
            if packet is None:
                continue
            try:
                await self._send(packet)
            except ConnectionError:
                return  # the transport closed: the connection is over
            except Exception:
                log.debug("transport-cc feedback not sent", exc_info=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
