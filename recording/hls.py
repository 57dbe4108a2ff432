"""HLS with fMP4 segments, codec copy: one playlist per view or rendition.

Timestamps are moved onto the lesson clock while remuxing (and kept in each fragment's
decode time, `tfdt`), so every playlist of a replay shares one timeline: a player that sets the same `currentTime` on each view shows them
in sync. Segments are cut by FFmpeg's HLS muxer, which only cuts video on keyframes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from recording.errors import RecordingError

SEGMENT_S = 4
PLAYLIST = "index.m3u8"
INIT = "init.mp4"


@dataclass
class HlsOutput:
    playlist: str  # path relative to the replay directory
    codecs: str  # RFC 6381 codecs, for MediaSource.isTypeSupported
    start_s: float
    duration_s: float
    bandwidth: int  # bits per second, averaged over the whole playlist
    segments: int


def remux_to_hls(
    src: Path,
    out_dir: Path,
    *,
    offset_s: float = 0.0,
    rel_to: Path,
    kinds: tuple[str, ...] = ("video", "audio"),
    progress: Callable[[float], None] | None = None,
) -> HlsOutput:
    """Copy every stream of `src` into fMP4 HLS under `out_dir`.

    The first packet of the file lands at lesson time `offset_s`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        inp = av.open(str(src))
    except (av.error.FFmpegError, OSError) as exc:
        raise RecordingError("bad_track", f"{src.name} cannot be read: {exc}") from None
    with inp:
        streams = [s for s in inp.streams if s.type in kinds]
        if not streams:
            raise RecordingError("bad_track", f"{src.name} holds no audio or video")
        out = av.open(
            str(out_dir / PLAYLIST),
            "w",
            format="hls",
            options={
                "hls_segment_type": "fmp4",
                "hls_time": str(SEGMENT_S),
                "hls_playlist_type": "vod",
                "hls_segment_filename": str(out_dir / "seg%05d.m4s"),
                "hls_fmp4_init_filename": INIT,
                "hls_flags": "independent_segments",
                # Fragment decode times (tfdt) carry the lesson clock: without it every
                # view's first tfdt is 0 and its offset lives only in an edit list that
                # Chromium's MSE ignores, so a late view would be shown early.
                "hls_segment_options": "movflags=+frag_discont",
            },
        )
        mapping = {}
        for s in streams:
            mapping[s.index] = out.add_stream_from_template(s)
        first: dict[int, int] = {}
        total = float(inp.duration / av.time_base) if inp.duration else 0.0
        last_report = -1.0
        end_s = 0.0
        packets = 0
        try:
            for packet in inp.demux(streams):
                if packet.dts is None or packet.pts is None:
                    continue
                tb: Fraction = packet.time_base
                idx = packet.stream.index
                if idx not in first:
                    # The first *presentation* lands on the lesson time: with B-frames
                    # the first decode time is earlier, and aligning that instead would
                    # put the picture behind the sound.
                    first[idx] = packet.pts
                shift = round(offset_s / tb) - first[idx]
                packet.pts += shift
                packet.dts += shift
                end_s = max(end_s, float((packet.pts + (packet.duration or 0)) * tb))
                packet.stream = mapping[idx]
                out.mux(packet)
                packets += 1
                if progress and total and end_s - last_report > 5:
                    last_report = end_s
                    progress(min(1.0, (end_s - offset_s) / total))
        except av.error.FFmpegError as exc:
            # A file cut short by a killed writer ends in a damaged packet: keep what came
            # before it, which is the promise of the recording format.
            if packets == 0:
                raise RecordingError("bad_track", f"{src.name} cannot be read: {exc}") from None
        finally:
            out.close()
    if packets == 0:
        raise RecordingError("bad_track", f"{src.name} holds no packets")
    text = (out_dir / PLAYLIST).read_text()
    durations = [float(x) for x in re.findall(r"#EXTINF:([0-9.]+)", text)]
    size = sum(p.stat().st_size for p in out_dir.iterdir() if p.suffix in (".m4s", ".mp4"))
    duration = sum(durations)
    return HlsOutput(
        playlist=str((out_dir / PLAYLIST).relative_to(rel_to)),
        codecs=codecs_of_init(out_dir / INIT),
        start_s=round(offset_s, 3),
        duration_s=round(duration, 3),
        bandwidth=int(size * 8 / duration) if duration else 0,
        segments=len(durations),
    )


def codecs_of_init(init: Path) -> str:
    """RFC 6381 codec strings from an fMP4 init segment (avc1.PPCCLL, mp4a.40.2, opus)."""
    data = init.read_bytes()
    codecs: list[str] = []
    i = data.find(b"avcC")
    if i >= 0:
        profile, compat, level = data[i + 5], data[i + 6], data[i + 7]
        codecs.append(f"avc1.{profile:02x}{compat:02x}{level:02x}")
    if data.find(b"mp4a") >= 0:
        codecs.append("mp4a.40.2")
    if data.find(b"Opus") >= 0:
        codecs.append("opus")
    if not codecs:
        raise RecordingError("bad_track", f"{init} holds no codec this player knows")
    return ",".join(codecs)
