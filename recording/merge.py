"""One track from several copies of it: packets from whichever copy has them, once each.

The same camera can reach the server twice (the agent's safety copy and the server's own
recording) or in pieces (an agent restarted mid-lesson starts a second copy). Each copy
is placed on the lesson clock; the most complete copy is kept whole and the others only
fill its holes. Nothing is decoded: a video fill starts on a keyframe of its copy, so
every stretch decodes on its own.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av

from recording.errors import RecordingError
from recording.manifest import TrackInfo
from recording.writer import open_track_file

# A hole shorter than this is jitter, not missing media.
MAX_GAP_S = 0.5


@dataclass
class TrackCopy:
    path: Path
    offset_s: float  # lesson time of the copy's first packet
    info: TrackInfo


@dataclass
class _Packet:
    t: float  # lesson seconds
    data: bytes
    key: bool


@dataclass
class MergeResult:
    info: TrackInfo
    packets: int
    used: list[int]  # packets taken from each copy, in the order given
    max_gap_s: float


def _read(copy: TrackCopy) -> list[_Packet]:
    try:
        with av.open(str(copy.path)) as container:
            stream = next(s for s in container.streams if s.type in ("video", "audio"))
            tb = stream.time_base
            first: int | None = None
            out = []
            for p in container.demux(stream):
                if p.dts is None or p.pts is None:
                    continue
                if first is None:
                    first = p.dts
                out.append(
                    _Packet(
                        copy.offset_s + float((p.pts - first) * tb), bytes(p), bool(p.is_keyframe)
                    )
                )
    except (av.error.FFmpegError, StopIteration) as exc:
        raise RecordingError("bad_track", f"{copy.path.name}: not readable: {exc}") from None
    out.sort(key=lambda p: p.t)
    return out


def _runs(packets: list[_Packet]) -> list[tuple[float, float]]:
    """Stretches of a copy with no hole longer than MAX_GAP_S, as (first, last) times."""
    runs: list[tuple[float, float]] = []
    for p in packets:
        if runs and p.t - runs[-1][1] <= MAX_GAP_S:
            runs[-1] = (runs[-1][0], p.t)
        else:
            runs.append((p.t, p.t))
    return runs


def _covered(t: float, runs: list[tuple[float, float]], margin: float) -> bool:
    return any(a - margin <= t <= b + margin for a, b in runs)


def merge_track(copies: list[TrackCopy], out_path: Path) -> MergeResult:
    """Write one track file from `copies` (same codec and kind); returns its manifest entry.

    The entry's `offset_s` is the lesson time of the merged file's first packet.
    """
    if not copies:
        raise ValueError("nothing to merge")
    base = copies[0].info
    for c in copies[1:]:
        if (c.info.kind, c.info.codec) != (base.kind, base.codec) or (
            base.kind == "video" and (c.info.width, c.info.height) != (base.width, base.height)
        ):
            raise RecordingError(
                "manifest_mismatch",
                f"track {base.id}: copies differ ({base.codec} {base.width}x{base.height} "
                f"and {c.info.codec} {c.info.width}x{c.info.height}); they cannot be joined",
            )
    packets = [_read(c) for c in copies]
    order = sorted(range(len(copies)), key=lambda i: -len(packets[i]))
    steps = [b.t - a.t for a, b in zip(packets[order[0]], packets[order[0]][1:], strict=False)]
    # Half a packet interval tells "the same moment in another copy" from "a new moment".
    margin = (statistics.median(steps) if steps else 0.02) / 2
    kept: list[_Packet] = []
    runs: list[tuple[float, float]] = []
    used = [0] * len(copies)
    for i in order:
        taken: list[_Packet] = []
        need_key = base.kind == "video"
        for p in packets[i]:
            if _covered(p.t, runs, margin):
                need_key = base.kind == "video"
                continue
            if need_key and not p.key:
                continue
            need_key = False
            taken.append(p)
        used[i] = len(taken)
        kept.extend(taken)
        kept.sort(key=lambda p: p.t)
        runs = _runs(kept)
    if not kept:
        raise RecordingError("bad_track", f"track {base.id}: no packets in any copy")

    tb = Fraction(base.time_base)
    t0 = kept[0].t
    container, stream = open_track_file(out_path, base)
    last = -1
    written = 0
    try:
        for p in kept:
            pts = max(last + 1, round((p.t - t0) / tb))
            last = pts
            packet = av.Packet(p.data)
            packet.pts = packet.dts = pts
            packet.time_base = tb
            packet.is_keyframe = p.key
            packet.stream = stream
            container.mux(packet)
            written += 1
    finally:
        container.close()
    gaps = [b.t - a.t for a, b in itertools.pairwise(kept)]
    info = replace(
        base,
        offset_s=round(t0, 6),
        first_pts=0,
        closed=True,
        bytes=out_path.stat().st_size,
        packets=written,
        duration_s=round(kept[-1].t - t0 + 2 * margin, 3),
        dropped=None,
    )
    return MergeResult(info, written, used, max(gaps, default=0.0))
