"""Open a recording directory for packaging and check that it tells the truth.

Every problem is reported with the file and what is wrong, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

from recording.errors import RecordingError
from recording.manifest import TIMELINE_NAME, Manifest, TrackInfo, load_manifest
from recording.timeline import Event, read_timeline


@dataclass
class Recording:
    directory: Path
    manifest: Manifest
    timeline: list[Event]

    def path(self, track: TrackInfo) -> Path:
        return self.directory / track.file

    def video(self, source: str) -> TrackInfo | None:
        for t in self.manifest.tracks:
            if t.kind == "video" and t.source == source:
                return t
        return None

    def audio(self) -> TrackInfo | None:
        for t in self.manifest.tracks:
            if t.kind == "audio" and t.source == "microphone":
                return t
        return next((t for t in self.manifest.tracks if t.kind == "audio"), None)

    @property
    def duration_s(self) -> float:
        ends = [(t.offset_s or 0.0) + (t.duration_s or 0.0) for t in self.manifest.tracks]
        return max(ends, default=0.0)


def open_recording(directory: Path) -> Recording:
    directory = Path(directory)
    if not directory.is_dir():
        raise RecordingError("no_recording", f"{directory} is not a directory")
    manifest = load_manifest(directory)
    timeline = read_timeline(directory / TIMELINE_NAME)
    if not manifest.tracks:
        raise RecordingError("no_tracks", f"{directory.name}: the manifest lists no tracks")
    for track in manifest.tracks:
        _check_track(directory, track)
    return Recording(directory=directory, manifest=manifest, timeline=timeline)


def drop_unusable_tracks(directory: Path) -> list[str]:
    """Leave out of the manifest the tracks whose file a crash left missing or empty (a
    writer killed between starting a track and its first packet), so that one such
    track does not cost the recording its other tracks. Returns what was left out."""
    manifest = load_manifest(directory)
    kept, dropped = [], []
    for track in manifest.tracks:
        try:
            _check_track(directory, track)
            kept.append(track)
        except RecordingError as exc:
            dropped.append(f"{track.id} ({exc.message})")
    if dropped:
        manifest.tracks = kept
        manifest.save(directory)
    return dropped


def _check_track(directory: Path, track: TrackInfo) -> None:
    path = directory / track.file
    if not path.is_file():
        raise RecordingError("missing_track", f"track {track.id}: file {track.file} is missing")
    size = path.stat().st_size
    if track.closed and track.bytes is not None and size < track.bytes:
        raise RecordingError(
            "truncated_track",
            f"track {track.id}: {track.file} is truncated: {size} bytes on disk, "
            f"{track.bytes} written when the recording closed",
        )
    try:
        with av.open(str(path)) as container:
            streams = [s for s in container.streams if s.type in ("video", "audio")]
            if len(streams) != 1:
                raise RecordingError(
                    "manifest_mismatch",
                    f"track {track.id}: {track.file} holds {len(streams)} media streams, "
                    "a track file must hold exactly one",
                )
            stream = streams[0]
            stream_type = stream.type
            codec = stream.codec_context.name
            width = getattr(stream.codec_context, "width", 0)
            height = getattr(stream.codec_context, "height", 0)
            # Reading the duration forces the demuxer past the header: an empty or
            # garbage file fails here rather than halfway through packaging.
            first = next((p for p in container.demux(stream) if p.pts is not None), None)
    except av.error.FFmpegError as exc:
        raise RecordingError(
            "bad_track", f"track {track.id}: {track.file} is not a readable media file: {exc}"
        ) from None
    if first is None:
        raise RecordingError("bad_track", f"track {track.id}: {track.file} holds no packets")
    if stream_type != track.kind or codec != track.codec:
        raise RecordingError(
            "manifest_mismatch",
            f"track {track.id}: the manifest says {track.kind} {track.codec}, "
            f"but {track.file} holds {stream_type} {codec}",
        )
    if track.kind == "video" and (width, height) != (track.width, track.height):
        raise RecordingError(
            "manifest_mismatch",
            f"track {track.id}: the manifest says {track.width}x{track.height}, "
            f"but {track.file} holds {width}x{height} video",
        )
