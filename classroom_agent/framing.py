"""Frame assembly for the point agent's receivers: bounded waits, no frame held hostage.

aiortc's own jitter buffer waits for a missing packet until 512 (video) or 16 (audio)
later packets have arrived, and releases at most one frame per arriving packet. On a
256 kbit/s line with 10 % loss a packet that neither it nor its retransmission reached
us held every later video frame back for 25-40 s (the buffer filled to capacity and then
asked for a keyframe with every packet), and the audio buffer threw away received
packets whenever two losses fell within a few packets of each other (46 % of the audio
missing). Chromium waits for a retransmission a bounded time, then gives the lost frame
up and asks for a keyframe; this buffer does the same:

- a gap at the front waits ``max_wait_s`` (time for a NACK and its retransmission), or
  for audio, which nobody retransmits, ``reorder_packets`` later packets;
- then the incomplete frame is dropped; video frames that follow are dropped too until a
  keyframe starts (a P-frame without its reference decodes to smear), and a keyframe is
  asked for at once and every ``keyframe_interval_s`` while none comes;
- every frame that is complete is released at once, not one per arriving packet;
- for audio with ``fec_samples`` given, a lost packet whose successor arrived is handed
  on as that successor marked ``fec`` (timed where the lost one was): Opus carries a
  low-bitrate copy of each packet in the next, and `classroom_agent/opus_fec.py` decodes
  it (aiortc's decoder cannot).

- video losses are NACKed here, not by aiortc: aiortc's NackGenerator asks for a missing
  packet only when a new gap appears, so a lost retransmission was asked for again only
  at the stream's next loss (seconds later on a 3 fps courseware), after the frame had
  been given up. Here each packet the front still waits for is asked for at once and
  again every `retry` (a little over the measured repair time: NACK to arrival) up to
  ``NACK_TRIES`` times, as Chromium's NackRequester does; packets given up are not asked
  for (the SFU would resend, within the repair budget, what nobody waits for).

The buffer only sees packets; :func:`tongke.rtc_internals.use_frame_buffer` puts it in
place of aiortc's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# Time a gap in video waits for the retransmission the receiver NACKs: on a 10 % loss
# line a retransmission is itself lost one time in ten and aiortc NACKs again only with
# the next new gap, so allow two rounds of an RTT (up to ~600 ms on the rural links)
# and the SFU's pacing. Giving up costs a keyframe, which on a 256 kbit/s line is the
# longer wait (0.7 s here: courseware 0.5 fps; Chromium waits longer still).
VIDEO_MAX_WAIT_S = 1.5
# Audio is not retransmitted: a gap only waits for packets the network reordered.
AUDIO_REORDER_PACKETS = 3
AUDIO_MAX_WAIT_S = 0.1
KEYFRAME_INTERVAL_S = 1.0
# NACKs: a missing packet is asked for at most this often (Chromium: 10); the wait
# between asks starts here and follows the repair time measured (NACK to arrival, first
# asks only), with a margin for the SFU's pacing.
NACK_TRIES = 10
NACK_FIRST_REPAIR_S = 0.25
NACK_MIN_RETRY_S = 0.05
NACK_RETRY_FACTOR = 1.25
# A gap this long is an outage or a new stream, not losses worth a NACK each.
NACK_MAX_GAP = 256
# More stored packets than this past the front: give the front up whatever the clock.
MAX_SPAN = 2048
# A sequence number this far from what we expect is a new stream (the SFU switched the
# source or the layer's numbering), not a late or a lost packet.
RESET_GAP = 3000


class Packet(Protocol):
    sequence_number: int
    timestamp: int
    marker: int
    payload_type: int
    payload: bytes


@dataclass
class Frame:
    """One encoded frame: the depayloaded bytes of its packets, in order."""

    packets: list[Packet]
    timestamp: int
    payload_type: int
    keyframe: bool
    fec: bool = False  # audio: the lost packet before `packets[0]`, from its FEC copy


class FrameBuffer:
    """Orders one stream's packets into frames (``add`` returns those now complete).

    ``is_keyframe_start(packet)`` tells whether a video packet begins a keyframe (from
    its RTP payload; codec-specific, see :func:`keyframe_start`).
    """

    def __init__(
        self,
        *,
        video: bool,
        is_keyframe_start: Callable[[Packet], bool] | None = None,
        max_wait_s: float | None = None,
        reorder_packets: int | None = None,
        keyframe_interval_s: float = KEYFRAME_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        fec_samples: Callable[[bytes], int] | None = None,
    ) -> None:
        self.video = video
        # Audio: the samples an (Opus) payload holds, to time a lost packet rebuilt from
        # its successor's FEC copy; None: no FEC frames.
        self._fec_samples = None if video else fec_samples
        self._is_keyframe_start = is_keyframe_start or (lambda _packet: True)
        self.max_wait_s = (
            max_wait_s
            if max_wait_s is not None
            else VIDEO_MAX_WAIT_S
            if video
            else AUDIO_MAX_WAIT_S
        )
        self.reorder_packets = (
            reorder_packets
            if reorder_packets is not None
            else None
            if video
            else AUDIO_REORDER_PACKETS
        )
        self.keyframe_interval_s = keyframe_interval_s
        self._clock = clock
        self._packets: dict[int, Packet] = {}
        self._next: int | None = None  # extended sequence number of the front
        self._newest: int | None = None
        self._blocked_since: float | None = None
        # Video starts on a keyframe: the decoder has no reference before one.
        self.need_keyframe = video
        self._asked_at: float | None = None
        self.dropped_frames = 0
        self.skipped_gaps = 0
        self.fec_frames = 0  # audio: lost packets rebuilt from their successor's FEC copy
        self.keyframes_asked = 0
        # Video: extended sequence number -> (when last asked, times asked).
        self._missing: dict[int, tuple[float | None, int]] = {}
        self.repair_s = NACK_FIRST_REPAIR_S
        self.nacks_sent = 0  # sequence numbers asked for, counting each ask
        self.repaired = 0  # asked-for packets that arrived

    # -- public -----------------------------------------------------------------------

    def add(self, packet: Packet) -> tuple[bool, list[Frame]]:
        """Take one packet; return (ask for a keyframe now, frames complete in order)."""
        now = self._clock()
        ext = self._extend(packet.sequence_number)
        if self._next is None or self._newest is None or abs(ext - self._newest) > RESET_GAP:
            self._restart(ext)
        elif ext < self._next or ext in self._packets:
            return self._keyframe_due(now), []  # late (given up) or duplicate
        if self.video:
            self._note_arrival(ext, now)
        self._packets[ext] = packet
        self._newest = max(self._newest or ext, ext)
        frames = self._release(now)
        return self._keyframe_due(now), frames

    def nacks(self, now: float | None = None) -> list[int]:
        """Sequence numbers to NACK now (each marked asked), oldest first; video only."""
        if not self._missing:
            return []
        now = self._clock() if now is None else now
        front = self._next if self._next is not None else 0
        retry = self.retry_s
        out = []
        for ext in sorted(self._missing):
            asked, tries = self._missing[ext]
            if ext < front:
                del self._missing[ext]  # given up: nobody waits for it
            elif tries < NACK_TRIES and (asked is None or now - asked >= retry):
                self._missing[ext] = (now, tries + 1)
                out.append(ext & 0xFFFF)
        self.nacks_sent += len(out)
        return out

    def next_nack_at(self) -> float | None:
        """When the next NACK falls due (None: nothing is missing that may be asked)."""
        front = self._next if self._next is not None else 0
        due = [
            (asked or 0.0) + self.retry_s
            for ext, (asked, tries) in self._missing.items()
            if ext >= front and tries < NACK_TRIES
        ]
        return min(due) if due else None

    @property
    def retry_s(self) -> float:
        return max(NACK_MIN_RETRY_S, NACK_RETRY_FACTOR * self.repair_s)

    def stats(self) -> dict[str, float | int]:
        return {
            "dropped_frames": self.dropped_frames,
            "skipped_gaps": self.skipped_gaps,
            "keyframes_asked": self.keyframes_asked,
            "nacks_sent": self.nacks_sent,
            "repaired": self.repaired,
            "fec_frames": self.fec_frames,
            "repair_ms": round(self.repair_s * 1000),
        }

    # -- internals --------------------------------------------------------------------

    def _extend(self, seq: int) -> int:
        """The 16-bit sequence number unwrapped near the newest one seen."""
        if self._newest is None:
            return seq
        base = self._newest & ~0xFFFF
        candidates = (base - 0x10000 + seq, base + seq, base + 0x10000 + seq)
        return min(candidates, key=lambda c: abs(c - self._newest))  # type: ignore[operator]

    def _note_arrival(self, ext: int, now: float) -> None:
        """A video packet arrived: the numbers it skipped are missing, and if it was
        itself asked for (once: a later ask makes the sample ambiguous) it times a repair."""
        assert self._newest is not None
        if ext > self._newest + 1 and ext - self._newest <= NACK_MAX_GAP:
            for seq in range(self._newest + 1, ext):
                self._missing.setdefault(seq, (None, 0))
        asked = self._missing.pop(ext, None)
        if asked is not None and asked[0] is not None:
            self.repaired += 1
            if asked[1] == 1:
                self.repair_s = 0.8 * self.repair_s + 0.2 * (now - asked[0])

    def _restart(self, ext: int) -> None:
        self._packets.clear()
        self._missing.clear()
        self._next = self._newest = ext
        self._blocked_since = None
        if self.video:
            self.need_keyframe = True

    def _keyframe_due(self, now: float) -> bool:
        if not self.need_keyframe:
            return False
        if self._asked_at is not None and now - self._asked_at < self.keyframe_interval_s:
            return False
        self._asked_at = now
        self.keyframes_asked += 1
        return True

    def _release(self, now: float) -> list[Frame]:
        out: list[Frame] = []
        while self._next is not None and self._newest is not None and self._next <= self._newest:
            if self.need_keyframe:
                self._seek_keyframe()
                if self._next > self._newest:
                    break
            front = self._packets.get(self._next)
            if front is not None and not front.payload:
                # Padding (a bandwidth probe) takes a sequence number but carries nothing.
                del self._packets[self._next]
                self._next += 1
                self._blocked_since = None
                continue
            end, gap = self._frame_end(self._next)
            if gap is None:
                assert end is not None
                frame = self._take(self._next, end)
                self._blocked_since = None
                if self.need_keyframe and not frame.keyframe:
                    self.dropped_frames += 1
                    continue
                self.need_keyframe = False
                out.append(frame)
                continue
            # The front frame misses a packet: wait for it, within bounds.
            if self._blocked_since is None:
                self._blocked_since = now
            waited = now - self._blocked_since
            later = self._newest - gap
            if (
                waited < self.max_wait_s
                and (self.reorder_packets is None or later < self.reorder_packets)
                and self._newest - self._next < MAX_SPAN
            ):
                break
            self._give_up(gap)
            fec = self._fec_frame()
            if fec is not None:
                out.append(fec)
        return out

    def _fec_frame(self) -> Frame | None:
        """After an audio gap: the packet now at the front, marked to rebuild the lost
        one just before it from its FEC copy (None: no FEC, or nothing at the front)."""
        if self._fec_samples is None or self._next is None:
            return None
        front = self._packets.get(self._next)
        if front is None or not front.payload:
            return None
        samples = self._fec_samples(front.payload)
        if samples <= 0:
            return None
        self.fec_frames += 1
        return Frame(
            packets=[front],
            timestamp=(front.timestamp - samples) & 0xFFFFFFFF,
            payload_type=front.payload_type,
            keyframe=True,
            fec=True,
        )

    def _frame_end(self, start: int) -> tuple[int | None, int | None]:
        """(last sequence number of the frame at ``start``, None) or (None, first gap)."""
        first = self._packets.get(start)
        if first is None:
            return None, start
        if not self.video:
            return start, None  # one audio packet, one frame
        seq = start
        while True:
            packet = self._packets[seq]
            if packet.marker:
                return seq, None
            following = self._packets.get(seq + 1)
            if following is None:
                return None, seq + 1
            if following.timestamp != first.timestamp:
                return seq, None  # the marker was lost with nothing else
            seq += 1

    def _take(self, start: int, end: int) -> Frame:
        packets = [self._packets.pop(seq) for seq in range(start, end + 1)]
        self._next = end + 1
        return Frame(
            packets=packets,
            timestamp=packets[0].timestamp,
            payload_type=packets[0].payload_type,
            keyframe=self._is_keyframe_start(packets[0]),
        )

    def _give_up(self, gap: int) -> None:
        """Drop what stands before and at ``gap`` (its frame cannot be completed)."""
        assert self._next is not None and self._newest is not None
        self.skipped_gaps += 1
        self._blocked_since = None
        front = self._packets.get(self._next)
        if self.video:
            # The frame with the gap is lost, and with it every frame that refers to it.
            self.dropped_frames += 1
            self.need_keyframe = True
        stamp = front.timestamp if front is not None else None
        seq = self._next
        while seq <= self._newest:
            packet = self._packets.get(seq)
            if seq > gap and packet is not None and (stamp is None or packet.timestamp != stamp):
                break
            self._packets.pop(seq, None)
            seq += 1
        self._next = seq

    def _seek_keyframe(self) -> None:
        """Drop stored packets up to the first that begins a keyframe."""
        assert self._next is not None and self._newest is not None
        seq = self._next
        while seq <= self._newest:
            packet = self._packets.get(seq)
            if packet is not None and self._is_keyframe_start(packet):
                break
            if packet is not None:
                self._packets.pop(seq)
            seq += 1
        if seq != self._next:
            self._blocked_since = None
        self._next = seq


def keyframe_start(codec: str, payload: bytes) -> bool:
    """Whether an RTP payload of ``codec`` ("h264"/"vp8") begins a keyframe."""
    if not payload:
        return False
    if codec == "h264":
        nal = payload[0] & 0x1F
        if nal in (5, 7):  # IDR slice, or the SPS sent before one
            return True
        if nal == 24:  # STAP-A: aggregated NAL units, each after a 16-bit size
            pos = 1
            while pos + 2 < len(payload):
                size = int.from_bytes(payload[pos : pos + 2], "big")
                if payload[pos + 2] & 0x1F in (5, 7):
                    return True
                pos += 2 + size
            return False
        if nal == 28 and len(payload) > 1:  # FU-A: the first fragment of an IDR slice
            return bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
        return False
    if codec == "vp8":
        pos = 1
        start = payload[0] & 0x10 and payload[0] & 0x07 == 0
        if payload[0] & 0x80:  # extended control bits
            if len(payload) < 2:
                return False
            ext = payload[1]
            pos = 2
            if ext & 0x80:  # picture id, 7 or 15 bits
                if len(payload) <= pos:
                    return False
                pos += 2 if payload[pos] & 0x80 else 1
            if ext & 0x40:
                pos += 1
            if ext & 0x30:
                pos += 1
        return bool(start) and len(payload) > pos and payload[pos] & 0x01 == 0
    return True
