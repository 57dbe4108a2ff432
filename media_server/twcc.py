"""Transport-wide congestion control: what we stamp, what we remember, what comes back.

Where a browser offers the transport-cc header extension (draft-holmer-rmcat-transport-
wide-cc-extensions-01), every packet we send a subscriber carries one 16-bit sequence
number counted across all its streams, the first element of our extension block so that
it sits at a fixed offset (bytes 17-18 of the packet). The pacer notes when each one
really left (`SendHistory.record`, two list stores), and the receiver reports back, every
50-250 ms, which of them arrived and when (RTCP RTPFB, FMT 15). `parse_feedback` reads
that report at the byte level; `SendHistory.match` pairs it with our send times for the
delay-based estimate (media_server/delay_estimate.py). Nothing here runs per packet
except `record`.
"""

from __future__ import annotations

from dataclasses import dataclass

RTPFB = 205
FMT = 15
SEQ_OFFSET = 17  # 12-byte header, 0xBEDE + length, then our element's id/len byte
DELTA_UNIT_US = 250
REFERENCE_UNIT_US = 64_000
# The widest delta between two received packets one feedback can carry (signed 16 bits).
MAX_DELTA_US = 0x7FFF * DELTA_UNIT_US
# What the link carries besides our RTP bytes: IPv4 and UDP headers, the SRTP tag.
WIRE_OVERHEAD = 20 + 8 + 10
HISTORY = 1 << 13  # packets remembered: several seconds at a subscriber's rates
HISTORY_MASK = HISTORY - 1


@dataclass(frozen=True)
class Feedback:
    base_seq: int
    reference_us: int  # the receiver's clock, in microseconds (wraps every ~12 days)
    count: int  # fb packet count: consecutive reports, to spot a lost one
    # (transport seq, arrival in the receiver's microseconds or None if not received)
    packets: list[tuple[int, int | None]]


def parse_feedback(data: bytes, offset: int = 0, end: int | None = None) -> Feedback:
    """One transport-cc feedback packet (RTCP header included); ValueError if malformed."""
    end = len(data) if end is None else end
    if end - offset < 20 or data[offset] >> 6 != 2 or data[offset + 1] != RTPFB:
        raise ValueError("not an RTPFB packet")
    if data[offset] & 0x1F != FMT:
        raise ValueError("not transport-cc feedback")
    pos = offset + 12
    base_seq = data[pos] << 8 | data[pos + 1]
    status_count = data[pos + 2] << 8 | data[pos + 3]
    reference = int.from_bytes(data[pos + 4 : pos + 7], "big", signed=True)
    count = data[pos + 7]
    pos += 8
    symbols: list[int] = []
    while len(symbols) < status_count:
        if pos + 2 > end:
            raise ValueError("truncated status chunks")
        chunk = data[pos] << 8 | data[pos + 1]
        pos += 2
        if not chunk & 0x8000:  # run length: 2-bit symbol, 13-bit length
            symbol, run = (chunk >> 13) & 0x3, chunk & 0x1FFF
            symbols.extend([symbol] * min(run, status_count - len(symbols)))
        else:  # a status vector: seven 2-bit or fourteen 1-bit symbols
            symbols.extend(_VECTORS.get(chunk) or _vector(chunk))
    del symbols[status_count:]
    arrival = reference * REFERENCE_UNIT_US
    packets: list[tuple[int, int | None]] = []
    append = packets.append
    seq = base_seq
    for symbol in symbols:
        if symbol == 1:
            if pos >= end:
                raise ValueError("truncated receive deltas")
            arrival += data[pos] * DELTA_UNIT_US
            pos += 1
            append((seq, arrival))
        elif symbol == 0:
            append((seq, None))
        elif symbol == 2:
            if pos + 2 > end:
                raise ValueError("truncated receive deltas")
            delta = data[pos] << 8 | data[pos + 1]
            arrival += (delta - 0x10000 if delta & 0x8000 else delta) * DELTA_UNIT_US
            pos += 2
            append((seq, arrival))
        else:
            raise ValueError("reserved status symbol")
        seq = (seq + 1) & 0xFFFF
    return Feedback(
        base_seq=base_seq, reference_us=reference * REFERENCE_UNIT_US, count=count, packets=packets
    )


# Status vector chunk -> its symbols (a report holds a few dozen distinct ones).
_VECTORS: dict[int, tuple[int, ...]] = {}


def _vector(chunk: int) -> tuple[int, ...]:
    if chunk & 0x4000:  # seven 2-bit symbols
        symbols = tuple((chunk >> shift) & 0x3 for shift in range(12, -1, -2))
    else:  # fourteen 1-bit symbols
        symbols = tuple((chunk >> shift) & 0x1 for shift in range(13, -1, -1))
    _VECTORS[chunk] = symbols
    return symbols


def build_feedback(
    base_seq: int,
    arrivals: list[int | None],
    *,
    count: int = 0,
    sender_ssrc: int = 1,
    media_ssrc: int = 0,
) -> bytes:
    """One transport-cc feedback packet, as a receiver writes it (`parse_feedback` reads
    it back): packets `base_seq`, `base_seq + 1`, ... arrived at `arrivals` (the
    receiver's microseconds, None: not received). Status vectors of 2-bit symbols only
    (the spec's chunks are choices of size, not of meaning). The caller keeps each
    delta between received packets within the format's 8 s (`MAX_DELTA_US`)."""
    received = [a for a in arrivals if a is not None]
    reference = (received[0] // REFERENCE_UNIT_US) if received else 0
    symbols: list[int] = []
    deltas = bytearray()
    last = reference * REFERENCE_UNIT_US
    for arrival in arrivals:
        if arrival is None:
            symbols.append(0)
            continue
        delta = (arrival - last) // DELTA_UNIT_US
        last += delta * DELTA_UNIT_US
        if 0 <= delta <= 0xFF:
            symbols.append(1)
            deltas.append(delta)
        else:
            symbols.append(2)
            deltas += delta.to_bytes(2, "big", signed=True)
    chunks = bytearray()
    for i in range(0, len(symbols), 7):
        word = 0xC000
        for j, symbol in enumerate(symbols[i : i + 7]):
            word |= symbol << (12 - 2 * j)
        chunks += word.to_bytes(2, "big")
    body = (
        sender_ssrc.to_bytes(4, "big")
        + media_ssrc.to_bytes(4, "big")
        + base_seq.to_bytes(2, "big")
        + len(arrivals).to_bytes(2, "big")
        + (reference & 0xFFFFFF).to_bytes(3, "big")
        + bytes([count & 0xFF])
        + chunks
        + deltas
    )
    body += bytes(-len(body) % 4)
    return bytes([0x80 | FMT, RTPFB]) + (len(body) // 4).to_bytes(2, "big") + body


def feedback_in(compound: bytes) -> list[Feedback]:
    """Every well-formed transport-cc feedback in a compound RTCP packet."""
    found: list[Feedback] = []
    pos = 0
    size = len(compound)
    while pos + 4 <= size:
        length = ((compound[pos + 2] << 8 | compound[pos + 3]) + 1) * 4
        end = pos + length
        if end > size:
            break
        if compound[pos + 1] == RTPFB and compound[pos] & 0x1F == FMT:
            try:
                found.append(parse_feedback(compound, pos, end))
            except ValueError:
                pass  # a malformed report costs that report only
        pos = end
    return found


def feedback_first(datagram: bytes) -> bool:
    """Whether an RTCP datagram opens with transport-cc feedback: its first header, which
    SRTCP leaves clear, says so (and nothing is decrypted to tell)."""
    return (
        len(datagram) > 1
        and 127 < datagram[0] < 192
        and datagram[1] == RTPFB
        and datagram[0] & 0x1F == FMT
    )


def only_feedback(compound: bytes) -> bool:
    """Whether a compound RTCP packet is transport-cc feedback and nothing else (as
    browsers and the classroom agent send it): no other reader needs it."""
    pos = 0
    size = len(compound)
    while pos + 4 <= size:
        if compound[pos + 1] != RTPFB or compound[pos] & 0x1F != FMT:
            return False
        pos += ((compound[pos + 2] << 8 | compound[pos + 3]) + 1) * 4
    return pos == size and size > 0


# One reported packet with our side of it: (transport seq unwrapped, when we sent it,
# its size on the wire, its arrival in the receiver's microseconds or None if lost).
# A plain tuple: thousands a second per subscriber, and a named one costs ten times more.
PacketResult = tuple[int, float, int, int | None]


class SendHistory:
    """When and how big each transport-wide sequence number went out (ring buffer)."""

    def __init__(self) -> None:
        self.sent_at: list[float] = [-1.0] * HISTORY
        self.sizes: list[int] = [0] * HISTORY
        self._highest = -1  # unwrapped highest seq reported on so far

    def record(self, packet: bytes, now: float) -> None:
        """The pacer's call as a packet leaves (only for subscribers with transport-cc)."""
        self.note(packet[SEQ_OFFSET] << 8 | packet[SEQ_OFFSET + 1], len(packet), now)

    def note(self, seq: int, size: int, now: float) -> None:
        """`record` for the sender that stamped `seq` and knows the packet's `size` (the
        DownTrack's in-line path: nothing to read back from the bytes)."""
        i = seq & HISTORY_MASK
        self.sent_at[i] = now
        self.sizes[i] = size + WIRE_OVERHEAD

    def match(self, feedback: Feedback, now: float) -> list[PacketResult]:
        """Our send time and size for each reported packet we still remember.

        Reports of packets older than the history (or sent longer ago than it covers),
        duplicates of earlier reports, and reports of packets never sent are skipped.
        """
        out: list[PacketResult] = []
        packets = feedback.packets
        if not packets:
            return out
        append = out.append
        sent_at, sizes = self.sent_at, self.sizes
        oldest = now - 5.0
        # A report's numbers are consecutive: so are their unwrapped values.
        unwrapped = self._unwrap(packets[0][0])
        self._highest = max(self._highest, unwrapped + len(packets) - 1)
        for seq, arrival in packets:
            i = seq & HISTORY_MASK
            sent = sent_at[i]
            if sent >= 0 and sent >= oldest:
                append((unwrapped, sent, sizes[i], arrival))
            unwrapped += 1
        return out

    def _unwrap(self, seq: int) -> int:
        if self._highest < 0:
            self._highest = seq
            return seq
        diff = (seq - self._highest) & 0xFFFF
        if diff < 0x8000:
            self._highest += diff
            return self._highest
        return self._highest - (0x10000 - diff)
