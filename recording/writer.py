"""The safety copy: write the very packets the agent publishes, one file per track.

`TrackWriter.write()` runs on the agent's event loop, so it only copies the packet's bytes
and queues them; one writer thread per lesson does the muxing and file I/O. Files are
MPEG-TS (H.264, Opus) or WebM (VP8), flushed after every packet, so a SIGKILL loses at
most what the container itself holds back (under a second).
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from recording.manifest import (
    AUDIO_CODECS,
    CONTAINER_FOR_CODEC,
    EXTENSION_FOR_CONTAINER,
    TIMELINE_NAME,
    TRACKS_DIR,
    VIDEO_CODECS,
    LessonMeta,
    Manifest,
    TrackInfo,
    check_id,
)
from recording.timeline import TimelineWriter

log = logging.getLogger(__name__)

# Encoders PyAV opens only to describe the stream in the file header; nothing is encoded.
_HEADER_CODEC = {"h264": "libx264", "vp8": "libvpx", "opus": "libopus"}
DEFAULT_MAX_BYTES = 4 * 1024**3
DEFAULT_MIN_FREE_BYTES = 256 * 1024**2
_CHECK_INTERVAL_S = 1.0


class DiskBudgetExceeded(RuntimeError):
    """Recording was stopped (or cannot start) because of the disk budget or free space."""


@dataclass
class _Item:
    writer: TrackWriter
    packet: av.Packet | None  # None: close this track


class TrackWriter:
    """Accepts encoded packets for one track; create it with `LessonRecorder.add_track`."""

    def __init__(self, recorder: LessonRecorder, info: TrackInfo, wall_at_pts0: float | None):
        self._recorder = recorder
        self.info = info
        self._wall_at_pts0 = wall_at_pts0
        self._time_base = Fraction(info.time_base)
        self._container: av.container.OutputContainer | None = None
        self._stream: Any = None
        self._first_seen = False
        self._packets = 0
        self._last_end = 0
        self._last_dts: int | None = None
        self.closed = False

    @property
    def id(self) -> str:
        return self.info.id

    def write(self, packet: av.Packet) -> bool:
        """Queue a copy of `packet`; cheap and never blocks. False once recording stopped.

        The packet is copied, so the caller may hand the same object to aiortc and reuse it.
        """
        if self.closed or self._recorder.stopped:
            return False
        if packet.pts is None:
            return True
        copy = av.Packet(bytes(packet))
        copy.pts = packet.pts
        copy.dts = packet.dts if packet.dts is not None else packet.pts
        copy.time_base = packet.time_base or self._time_base
        copy.duration = packet.duration or 0
        copy.is_keyframe = packet.is_keyframe
        return self._enqueue(copy)

    def write_frame(self, data: bytes, pts: int, keyframe: bool) -> bool:
        """Queue one frame's bytes at `pts` (in the track's time base); the caller gives
        up `data`. For writers that build frames themselves (the server recorder)."""
        if self.closed or self._recorder.stopped:
            return False
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = self._time_base
        packet.is_keyframe = keyframe
        return self._enqueue(packet)

    def _enqueue(self, copy: av.Packet) -> bool:
        if not self._first_seen:
            self._first_seen = True
            pts_s = float(copy.pts * copy.time_base)
            wall = self._wall_at_pts0 + pts_s if self._wall_at_pts0 is not None else time.time()
            self._recorder._first_packet(
                self, int(copy.pts * copy.time_base / self._time_base), wall
            )
        rec = self._recorder
        if rec.wait_when_full and rec._queued_bytes > rec.max_queue_bytes:
            # A producer faster than real time (a benchmark, a re-mux) waits for the disk.
            with rec._drained:
                rec._drained.wait_for(
                    lambda: rec._queued_bytes <= rec.max_queue_bytes or rec.stopped is not None
                )
        if rec._queued_bytes > rec.max_queue_bytes:
            # The disk cannot keep up. Dropping here keeps the live lesson (and the
            # event loop) going; the gap is counted in the manifest.
            self.info.dropped = (self.info.dropped or 0) + 1
            return True
        with rec._lock:
            rec._queued_bytes += copy.size
        rec._queue.put(_Item(self, copy))
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._recorder._queue.put(_Item(self, None))

    def correct_start(self, wall: float) -> None:
        """The first packet was captured at `wall` (Unix seconds), better known now than
        when it was written (the server learns a publisher's clock from its first sender
        report, a second or so after its first packet)."""
        rec = self._recorder
        with rec._lock:
            self.info.offset_s = round(wall - rec.manifest.started_at, 4)
        rec._queue.put(None)  # save the manifest

    # --- writer thread side ---

    def _open(self) -> None:
        self._container, self._stream = open_track_file(
            self._recorder.directory / self.info.file, self.info
        )

    def _mux(self, packet: av.Packet) -> None:
        if self._container is None:
            self._open()
        assert self._container is not None
        dts = int(packet.dts * packet.time_base / self._time_base)
        if self._last_dts is not None and dts <= self._last_dts:
            # The muxer would refuse it (and a broken clock upstream must not end the
            # recording): drop the packet, count it.
            self.info.dropped = (self.info.dropped or 0) + 1
            return
        self._last_dts = dts
        end = int(packet.pts * packet.time_base / self._time_base) + int(
            (packet.duration or 0) * packet.time_base / self._time_base
        )
        size = packet.size
        packet.stream = self._stream
        self._container.mux(packet)
        self._packets += 1
        self._recorder._written_bytes += size
        self._last_end = max(self._last_end, end)

    def _finish(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except av.error.FFmpegError as exc:
                log.error("closing %s: %s", self.info.file, exc)
            self._container = None
        path = self._recorder.directory / self.info.file
        self.info.closed = True
        self.info.packets = self._packets
        self.info.bytes = path.stat().st_size if path.exists() else 0
        if self.info.first_pts is not None:
            self.info.duration_s = round(
                float((self._last_end - self.info.first_pts) * self._time_base), 3
            )

    def _size(self) -> int:
        try:
            return (self._recorder.directory / self.info.file).stat().st_size
        except FileNotFoundError:
            return 0


def open_track_file(path: Path, info: TrackInfo) -> tuple[av.container.OutputContainer, Any]:
    """Open a track file for codec-copy muxing in its format's container (flushed per packet)."""
    fmt = CONTAINER_FOR_CODEC[info.codec]
    options = {"flush_packets": "1"}
    if fmt == "webm":
        # Clusters are only written when they close: keep them short.
        options["cluster_time_limit"] = "1000"
    container = av.open(str(path), "w", format=fmt, options=options)
    codec = _HEADER_CODEC[info.codec]
    if info.kind == "video":
        stream = container.add_stream(codec, rate=30)
        stream.width = info.width
        stream.height = info.height
        stream.pix_fmt = "yuv420p"
    else:
        stream = container.add_stream(codec, rate=info.sample_rate)
        stream.layout = "stereo" if info.channels == 2 else "mono"
    stream.time_base = Fraction(info.time_base)
    return container, stream


class LessonRecorder:
    """Writes one lesson recording directory: manifest, timeline and one file per track.

    `max_bytes` bounds this recording; `min_free_bytes` keeps that much of the disk free.
    When either would be crossed the recorder stops every track cleanly, notes why in the
    manifest and the timeline, logs an error and calls `on_stop(reason)`.
    """

    def __init__(
        self,
        root_dir: Path | str,
        meta: LessonMeta,
        *,
        origin: str = "agent",
        max_bytes: int = DEFAULT_MAX_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        on_stop: Callable[[str], None] | None = None,
        max_queue_bytes: int = 64 * 1024**2,
        started_at: float | None = None,
        wait_when_full: bool = False,
    ) -> None:
        root = Path(root_dir)
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        if free < min_free_bytes:
            raise DiskBudgetExceeded(
                f"only {free // 2**20} MiB free under {root}; recording needs at least "
                f"{min_free_bytes // 2**20} MiB"
            )
        self.origin = check_id(origin, "origin")
        self.directory = _fresh_directory(root, meta.lesson)
        (self.directory / TRACKS_DIR).mkdir()
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.on_stop = on_stop
        self.stopped: str | None = None
        self.max_queue_bytes = max_queue_bytes
        self._queued_bytes = 0
        self._written_bytes = 0
        self.manifest = Manifest(meta=meta, started_at=started_at or time.time())
        self._lock = threading.Lock()
        # False for live capture (drop and count, never stall the lesson); True for
        # producers that may wait (write() then blocks while the queue is full).
        self.wait_when_full = wait_when_full
        self._drained = threading.Condition(self._lock)
        self._writers: list[TrackWriter] = []
        self._timeline = TimelineWriter(self.directory / TIMELINE_NAME)
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._save()
        self._thread = threading.Thread(
            target=self._run, name=f"recorder-{meta.lesson}", daemon=True
        )
        self._thread.start()

    @property
    def started_at(self) -> float:
        return self.manifest.started_at

    def now(self) -> float:
        """Seconds on the lesson clock."""
        return time.time() - self.manifest.started_at

    def add_track(
        self,
        source: str,
        kind: str,
        codec: str,
        *,
        width: int = 0,
        height: int = 0,
        rate: int | None = None,
        channels: int = 1,
        track_id: str | None = None,
        wall_at_pts0: float | None = None,
    ) -> TrackWriter:
        """Start a track file. `rate` is the packets' clock rate (90000 video, 48000 Opus).

        `wall_at_pts0`: Unix time at which pts 0 was captured, if the caller knows it;
        otherwise the time the first packet is written is used (off by the encode delay).
        """
        if self.stopped:
            raise DiskBudgetExceeded(self.stopped)
        if (kind == "video" and codec not in VIDEO_CODECS) or (
            kind == "audio" and (codec not in AUDIO_CODECS)
        ):
            raise ValueError(f"unsupported {kind} codec {codec!r}")
        if kind == "video" and (width <= 0 or height <= 0):
            raise ValueError("a video track needs width and height")
        rate = rate or (90000 if kind == "video" else 48000)
        with self._lock:
            base = check_id(track_id or source.replace(":", "-"), "track")
            ids = {t.id for t in self.manifest.tracks}
            tid, n = base, 1
            while tid in ids:
                n += 1
                tid = f"{base}-{n}"
            ext = EXTENSION_FOR_CONTAINER[CONTAINER_FOR_CODEC[codec]]
            info = TrackInfo(
                id=tid,
                source=source,
                kind=kind,
                codec=codec,
                origin=self.origin,
                file=f"{TRACKS_DIR}/{tid}.{ext}",
                time_base=f"1/{rate}",
                width=width,
                height=height,
                sample_rate=rate if kind == "audio" else 0,
                channels=channels if kind == "audio" else 0,
            )
            self.manifest.tracks.append(info)
            writer = TrackWriter(self, info, wall_at_pts0)
            self._writers.append(writer)
        self._queue.put(None)  # ask the thread to save the manifest
        return writer

    def event(self, kind: str, t: float | None = None, **fields: Any) -> None:
        """Append a timeline event at lesson time `t` (default: now)."""
        self._timeline.append(self.now() if t is None else t, kind, fields)

    def close(self, timeout: float = 30.0) -> None:
        """Finish every track, write the final manifest. Blocks: call it off the event loop."""
        for w in list(self._writers):
            w.close()
        self._queue.put(_Item(None, None))  # type: ignore[arg-type]
        self._thread.join(timeout)
        if self.manifest.ended_at is None:
            self.manifest.ended_at = time.time()
        self._save()
        self._timeline.close()

    def __enter__(self) -> LessonRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---

    def _first_packet(self, writer: TrackWriter, first_pts: int, wall: float) -> None:
        with self._lock:
            writer.info.first_pts = first_pts
            writer.info.offset_s = round(wall - self.manifest.started_at, 4)
        self._queue.put(None)

    def _save(self) -> None:
        with self._lock:
            self.manifest.save(self.directory)

    def _run(self) -> None:
        next_check = time.monotonic() + _CHECK_INTERVAL_S
        dirty = False
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                item = None
            if item is None:
                dirty = True
            elif item.writer is None:
                break
            elif item.packet is None:
                item.writer._finish()
                dirty = True
            else:
                with self._lock:
                    self._queued_bytes -= item.packet.size
                    self._drained.notify_all()
                if not self.stopped:
                    try:
                        item.writer._mux(item.packet)
                    except (av.error.FFmpegError, OSError) as exc:
                        self._stop(f"writing {item.writer.info.file} failed: {exc}")
                    # Payload bytes are counted as they go; file sizes (with container
                    # overhead) are checked once a second below.
                    if self._written_bytes >= self.max_bytes:
                        self._check_disk(force_size=self._written_bytes)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + _CHECK_INTERVAL_S
                self._check_disk()
            if dirty and (self._queue.empty() or now >= next_check - 0.5):
                self._save()
                dirty = False
        self._save()

    def _check_disk(self, force_size: int = 0) -> None:
        if self.stopped:
            return
        used = max(force_size, sum(w._size() for w in self._writers))
        if used >= self.max_bytes:
            self._stop(
                f"disk budget reached: this recording holds {_mib(used)} of the "
                f"{_mib(self.max_bytes)} allowed; recording stopped, the lesson "
                "continues live"
            )
            return
        free = shutil.disk_usage(self.directory).free
        if free < self.min_free_bytes:
            self._stop(
                f"disk almost full: {_mib(free)} free, {_mib(self.min_free_bytes)} "
                "must stay free; recording stopped, the lesson continues live"
            )

    def _stop(self, reason: str) -> None:
        log.error("lesson %s: %s", self.manifest.meta.lesson, reason)
        for w in self._writers:
            if not w.info.closed:
                w._finish()
                w.closed = True
        self.manifest.stopped = reason
        self.event("recording_stopped", reason=reason)
        self._save()
        # The callback runs before `stopped` is visible: whoever sees the recording
        # stopped also sees that it was told.
        if self.on_stop is not None:
            try:
                self.on_stop(reason)
            except Exception:
                log.exception("on_stop callback failed")
        self.stopped = reason
        with self._lock:
            self._drained.notify_all()  # a waiting producer must not wait for ever


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _fresh_directory(root: Path, lesson: str) -> Path:
    """`root/lesson`, or `root/lesson~2`... when an agent restarted during the lesson."""
    n = 1
    while True:
        path = root / (lesson if n == 1 else f"{lesson}~{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


UPLOADED_MARKER = ".uploaded"


def recording_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _started_at(directory: Path) -> float:
    try:
        return float(json.loads((directory / "manifest.json").read_text())["started_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return directory.stat().st_mtime


def enforce_retention(root_dir: Path | str, budget_bytes: int) -> list[Path]:
    """Delete the oldest *uploaded* recordings until those under `root_dir` fit the budget.

    A recording that was not uploaded (no `.uploaded` marker) is never deleted: the
    safety copy may be the only copy of that lesson.
    """
    root = Path(root_dir)
    if not root.is_dir():
        return []
    entries = []
    for d in root.iterdir():
        if d.is_dir() and (d / "manifest.json").exists():
            entries.append((_started_at(d), d, recording_size(d)))
    total = sum(size for _, _, size in entries)
    deleted: list[Path] = []
    for _, d, size in sorted(entries, key=lambda e: e[0]):
        if total <= budget_bytes:
            break
        if not (d / UPLOADED_MARKER).exists():
            continue
        shutil.rmtree(d)
        total -= size
        deleted.append(d)
        log.info("retention: deleted uploaded recording %s (%d MiB)", d, size // 2**20)
    return deleted
