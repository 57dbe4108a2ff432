"""What one subscription forwards, and as which sequence numbers and timestamps. No I/O.

A Forwarder is the state of one subscription to one source: which layer it is on
(`current`), which it is moving to (`target`, switched only at that layer's keyframe),
the offsets that make the outgoing stream continuous across layer switches, pauses and
publisher reconnects, and the map from outgoing sequence numbers back to the incoming
ones that answers NACKs. The DownTrack does the I/O around it.

The layer that is wanted is the lower of the subscriber's own ceiling (`pinned`, from
`set_subscription`) and the allocator's (`allocated`); `paused` (by hand or by the
allocator for bandwidth) stops forwarding until it is lifted, and resumes at a keyframe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

LAYER_ORDER = ("h", "m", "l")  # best first

SEQ_MAP_SIZE = 4096
SEQ_MAP_MASK = SEQ_MAP_SIZE - 1
DROP = -1
PADDED = -2  # a padding packet's slot holds PADDED - its out seq (negative: never media)
MAX_PADS = 64


class Layer(Protocol):
    """What a Forwarder needs to know of an UpTrack."""

    layer: str
    clock_rate: int
    last_packet_at: float  # wall time of the packet being forwarded


def lower(a: str | None, b: str | None) -> str | None:
    """The lower of two layer ceilings (None: no ceiling)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if LAYER_ORDER.index(a) > LAYER_ORDER.index(b) else b


class Forwarder:
    def __init__(self, *, seed: int = 0, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seed = seed
        self.current: Layer | None = None
        self.target: Layer | None = None
        self.pinned: str | None = None  # the subscriber's ceiling
        self.allocated: str | None = None  # the allocator's ceiling
        self.paused_by_user = False
        self.paused_by_allocator = False
        self.switches = 0
        self._seq_off = 0
        self._ts_off = 0
        self._last_seq = -1  # last outgoing sequence number, -1 before the first packet
        self._last_ts = 0
        self._last_at = 0.0  # when the last packet went out
        # Outgoing seq slot -> (generation << 32) | (out seq << 16) | in seq. A NACK is
        # answered only when the slot still holds exactly that outgoing number of the
        # current generation: an older packet is never answered with a newer payload.
        self._seq_map = [DROP] * SEQ_MAP_SIZE
        self._generation = 0
        # Padding sent while forwarding (probes) shifts the stream by one number each:
        # (first incoming seq after it, the offset before it), oldest first. A packet
        # the publisher's path reordered from before a pad keeps its own number.
        self._pads: list[tuple[int, int]] = []

    # -- what is wanted -------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self.paused_by_user or self.paused_by_allocator

    @property
    def ceiling(self) -> str | None:
        return lower(self.pinned, self.allocated)

    @property
    def resuming(self) -> bool:
        """Wanted again after a pause (or after its layer went away) but still waiting
        for the keyframe to restart at: the subscriber's picture has not moved since."""
        return self.current is None and self.target is not None and self._last_seq >= 0

    def retarget(self, best: Layer | None) -> bool:
        """Move towards `best` (None: stop). True when a keyframe of `best` is needed."""
        if self.paused or best is None:
            self.target = None
            self.current = None
            return False
        if best is self.current:
            self.target = best
            return False
        if best is self.target:
            return False
        self.target = best
        return True

    def layer_closed(self, up: Layer) -> None:
        if up is self.current:
            self.current = None
        if up is self.target:
            self.target = None

    # -- hot path ---------------------------------------------------------------------

    def translate(self, up: Layer, seq: int, ts: int, key: bool) -> tuple[int, int] | None:
        """(out seq, out timestamp) for a packet of `up`, or None when it is not sent."""
        if up is not self.current:
            if up is not self.target or not key:
                return None
            self._switch_to(up, seq, ts)
        return self.translate_current(up, seq, ts)

    def translate_current(self, up: Layer, seq: int, ts: int) -> tuple[int, int]:
        """The hot path: a packet of the layer being forwarded (the caller checked)."""
        oseq = (seq + self._seq_off) & 0xFFFF
        ots = (ts + self._ts_off) & 0xFFFFFFFF
        last = self._last_seq
        if last < 0 or ((oseq - last) & 0xFFFF) < 0x8000:
            self._last_seq = oseq
            self._last_ts = ots
            self._last_at = up.last_packet_at
        elif self._pads:
            oseq = self._before_pads(seq, oseq)
        self._seq_map[oseq & SEQ_MAP_MASK] = self._generation | (oseq << 16) | seq
        return oseq, ots

    def _before_pads(self, seq: int, oseq: int) -> int:
        """A late packet's number: the offset of the first pad sent after its place."""
        for first_after, offset in self._pads:
            if 0 < ((first_after - seq) & 0xFFFF) < 0x8000:
                return (seq + offset) & 0xFFFF
        return oseq

    def _switch_to(self, up: Layer, seq: int, ts: int) -> None:
        """Start (or move to) `up` at its keyframe, keeping the outgoing stream continuous.

        The timestamp advances by the wall time since the last packet went out, so a
        receiver's playout clock sees the pause as the time it really was.
        """
        now = self._clock()
        if self._last_seq >= 0:
            since = self._last_at or now
            elapsed = max(1, int((now - since) * up.clock_rate))
            self._seq_off = (self._last_seq + 1 - seq) & 0xFFFF
            self._ts_off = (self._last_ts + elapsed - ts) & 0xFFFFFFFF
            self.switches += 1
        else:
            self._seq_off = (self._seed - seq) & 0xFFFF  # any start is fine; vary it
            self._ts_off = 0
        self._pads.clear()
        self._generation = (self._generation + (1 << 32)) & (0x7FFF << 32)
        self.current = up
        self._last_at = now

    def pad(self) -> tuple[int, int] | None:
        """(out seq, out timestamp) for a padding packet (a probe), or None before any.

        The number is the next one. While nothing is forwarded (paused, or waiting for a
        keyframe) the resume continues after it; while forwarding, the packets after it
        do (a receiver's SRTP drops a repeated number, so a probe cannot resend one).
        A NACK for it is answered with padding again (`padded`), never with media.
        """
        if self._last_seq < 0:
            return None
        oseq = (self._last_seq + 1) & 0xFFFF
        self._seq_map[oseq & SEQ_MAP_MASK] = PADDED - oseq
        self._last_seq = oseq
        if self.current is not None:
            self._pads.append(((oseq - self._seq_off) & 0xFFFF, self._seq_off))
            del self._pads[:-MAX_PADS]
            self._seq_off = (self._seq_off + 1) & 0xFFFF
        return oseq, self._last_ts

    def padded(self, oseq: int) -> bool:
        """Whether `oseq` went out as padding (and nothing has taken its slot since)."""
        return self._seq_map[oseq & SEQ_MAP_MASK] == PADDED - oseq

    # -- repair -----------------------------------------------------------------------

    def source_seq(self, oseq: int) -> int:
        """The incoming sequence number sent as `oseq` on the current layer, or DROP."""
        entry = self._seq_map[oseq & SEQ_MAP_MASK]
        if entry < 0 or (entry >> 32) << 32 != self._generation:
            return DROP
        if (entry >> 16) & 0xFFFF != oseq:
            return DROP
        return entry & 0xFFFF

    def timestamp_offset(self) -> int:
        return self._ts_off

    @property
    def last_ts(self) -> int:
        """The last outgoing timestamp."""
        return self._last_ts

    @property
    def last_seq(self) -> int:
        return self._last_seq
