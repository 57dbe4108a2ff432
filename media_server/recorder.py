"""The server's own recording of every lesson, from the room router's packet tap.

A `RoomRecording` is a tap on a lesson room's router: every source a participant of the
room publishes gets a DownTrack into a `TrackSink` (top layer, from its next keyframe).
The sink is on the forwarding hot path, so it only stamps the packet's arrival and puts
it on a queue; one recorder thread for the whole server depacketizes
(`media_server/depacketizer.py`) and hands frames to the project's recording writer
(`recording/writer.py`), whose own thread muxes and writes. Nothing here blocks the
event loop, and nothing is decoded or encoded.

The layout is the agent's (docs/recording-format.md), one recording per classroom so
that `recording/merge.py` joins each track with that classroom's safety copy:

    recordings/<lesson>/server/<classroom>/<lesson>[~n]/   origin "server"

Each track's place on the lesson clock comes from the publisher's sender reports (the
same wall clock the agent's copy is placed by), from the packet's arrival until the
first report is in. When the lesson ends (or its room is closed) the recording is
finished and handed to `on_finished`, which adds it to the lesson recording for the
archiver. A server killed mid-lesson leaves playable files; the restarted server writes
a new recording beside them (`~2`) and both are handed over at the lesson's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from media_server.classroom import Phase
from media_server.depacketizer import Depacketizer, Frame
from media_server.downtrack import DownTrack
from media_server.room import Room, Rooms
from media_server.source import MediaSource
from recording.errors import RecordingError
from recording.manifest import LessonMeta, check_id
from recording.writer import DiskBudgetExceeded, LessonRecorder, TrackWriter

log = logging.getLogger(__name__)

SERVER_DIR = "server"
CODECS = ("h264", "vp8", "opus")
PAYLOAD_TYPES = {"h264": 102, "vp8": 96, "opus": 111}
# Packets waiting for the recorder thread: about 30 s of ten 720p lessons. Past this
# the thread cannot keep up, and dropping (counted) keeps the lessons themselves going.
MAX_QUEUED = 100_000
SENDER_REPORT_INTERVAL_S = 1.0
# A publisher whose clock (its sender reports) is further than this from ours is not
# trusted (an unsynchronised classroom box): its packets are placed by arrival.
CLOCK_TRUST_S = 2.0
# A stream whose timestamps move this far against the publisher's clock has jumped (a
# publisher that restarted them): it continues as a new track file.
DRIFT_S = 2.0
_NTP_EPOCH = 2208988800
# The recorder asks a publisher for a keyframe after a loss at most this often: on a thin
# rural uplink every keyframe costs, the encoder sends one every couple of seconds
# anyway, and the classroom's own copy fills such holes.
KEYFRAME_REQUEST_INTERVAL_S = 2.0
# A recording left from before this server started is handed over once nothing has been
# written to it for this long.
LEFTOVER_QUIET_S = 30.0

# (lesson, [(classroom, recording directory)]): the finished server recording.
Finished = Callable[[str, list[tuple[str, Path]]], Awaitable[None]]

_RTP, _RTCP, _END, _BARRIER, _STOP = range(5)


def _dir_name(classroom: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", classroom).lstrip("._-") or "x"


def server_recordings(lesson_dir: Path, *, quiet_s: float = 0.0) -> list[tuple[str, Path]]:
    """Every server recording left for a lesson: (classroom directory name, path).

    `quiet_s`: only recordings nothing was written to for that long (another server
    process on the same data directory may still be recording the others)."""
    root = lesson_dir / SERVER_DIR
    if not root.is_dir():
        return []
    now = time.time()
    return [
        (c.name, r)
        for c in sorted(root.iterdir())
        if c.is_dir()
        for r in sorted(c.iterdir())
        if (r / "manifest.json").exists()
        and (quiet_s <= 0 or now - max(f.stat().st_mtime for f in r.rglob("*")) >= quiet_s)
    ]


class ServerRecorder:
    """Records every lesson room of one server; see the module docstring."""

    def __init__(
        self,
        recordings: Path,
        *,
        on_finished: Finished | None = None,
        idle_s: float = 300.0,
    ) -> None:
        self.recordings = recordings
        self.on_finished = on_finished
        # A room nobody has published in for this long is over as far as the recording
        # goes (a lesson nobody ended): what was recorded is handed over, and recording
        # starts again if someone publishes later (the replay is then rebuilt).
        self.idle_s = idle_s
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._rooms: dict[str, RoomRecording] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reports: asyncio.Task[None] | None = None
        self._live: set[TrackSink] = set()  # the thread's own
        self._open_rooms: Rooms | None = None
        self.dropped = 0  # packets the thread could not take (counted, never blocking)

    # -- lifecycle (event loop) -------------------------------------------------------

    def start(self, rooms: Rooms | None) -> None:
        """Record every open and future room; hand over what a stopped server left.
        (`None`: only start the recorder thread, for rooms recorded by hand.)"""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="server-recorder", daemon=True)
        self._thread.start()
        self._reports = asyncio.ensure_future(self._send_reports())
        if rooms is None:
            return
        self._open_rooms = rooms
        rooms.opened.append(self.room_opened)
        rooms.closing.append(self.room_closing)
        for room in list(rooms.rooms.values()):
            self.room_opened(room)
        self._spawn(self._hand_over_leftovers(rooms))

    def room_opened(self, room: Room) -> None:
        if room.id in self._rooms or room.classroom.phase is Phase.ENDED:
            return
        try:
            check_id(room.id, "lesson")
        except RecordingError:
            log.warning("room %r: its id cannot name a recording; not recorded", room.id)
            return
        recording = RoomRecording(self, room)
        self._rooms[room.id] = recording
        room.classroom.listeners.append(recording.on_event)
        room.router.add_tap(recording)

    async def room_closing(self, room: Room) -> None:
        await self.finish(room.id)

    async def finish(self, lesson: str, *, quiet_s: float = 0.0) -> None:
        """The lesson is over: close its files and hand them to `on_finished` (once)."""
        recording = self._rooms.pop(lesson, None)
        if recording is not None:
            await recording.stop()
        parts = await asyncio.to_thread(
            server_recordings, self.recordings / lesson, quiet_s=quiet_s
        )
        if parts and self.on_finished is not None:
            try:
                await self.on_finished(lesson, parts)
            except Exception:
                # The files stay under server/: the next start hands them over again.
                log.exception("lesson %s: handing the server's recording over failed", lesson)

    async def close(self) -> None:
        """The server stops: close every file cleanly, hand nothing over (the lessons go
        on after a restart)."""
        for recording in list(self._rooms.values()):
            await recording.stop()
        self._rooms.clear()
        if self._reports is not None:
            self._reports.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._thread is not None:
            self._queue.put((_STOP,))
            await asyncio.to_thread(self._thread.join, 10)

    async def _hand_over_idle(self, room: Room) -> None:
        log.info(
            "room %s: nobody has published for %.0f s; handing its recording over",
            room.id,
            self.idle_s,
        )
        await self.finish(room.id)
        still_open = self._open_rooms is not None and self._open_rooms.rooms.get(room.id) is room
        if still_open and room.classroom.phase is not Phase.ENDED:
            self.room_opened(room)  # ready for whoever publishes next

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hand_over_leftovers(self, rooms: Rooms) -> None:
        """Recordings a killed server left for lessons that ended (or whose room went)
        while it was down are handed over, once nothing writes to them any more (another
        server process on this data directory may be recording them): checked at start
        and twice more, LEFTOVER_QUIET_S apart."""
        for attempt in range(3):
            if attempt:
                await asyncio.sleep(LEFTOVER_QUIET_S)
            dirs = await asyncio.to_thread(
                lambda: (
                    [d for d in self.recordings.iterdir() if (d / SERVER_DIR).is_dir()]
                    if self.recordings.is_dir()
                    else []
                )
            )
            for lesson_dir in dirs:
                room = rooms.rooms.get(lesson_dir.name)
                if room is None or room.classroom.phase is Phase.ENDED:
                    try:
                        await self.finish(lesson_dir.name, quiet_s=LEFTOVER_QUIET_S)
                    except Exception:
                        log.exception(
                            "lesson %s: handing its recording over failed", lesson_dir.name
                        )

    async def _send_reports(self) -> None:
        """Once a second, every sink hears its stream's sender report (the publisher's
        NTP/RTP mapping in the sink's timestamps), as a subscriber would; rooms left
        without publishers for `idle_s` are handed over."""
        while True:
            await asyncio.sleep(SENDER_REPORT_INTERVAL_S)
            now = time.monotonic()
            for recording in list(self._rooms.values()):
                if recording.sinks or not recording.recorded:
                    recording.idle_since = now
                elif now - recording.idle_since >= self.idle_s and not recording.stopped:
                    self._spawn(self._hand_over_idle(recording.room))
                for sink in list(recording.sinks.values()):
                    report = sink.down.sender_report() if sink.down is not None else None
                    if report is not None:
                        sink.send_rtcp(report)

    def queued(self) -> int:
        """Packets (and control items) waiting for the recorder thread."""
        return self._queue.qsize()

    def _put(self, item: tuple[Any, ...]) -> None:
        self._queue.put(item)

    # -- the recorder thread ----------------------------------------------------------

    def _run(self) -> None:
        next_flush = 0.0
        while True:
            try:
                item: tuple[Any, ...] | None = self._queue.get(timeout=0.1)
            except queue.Empty:
                item = None
            if item is not None:
                if item[0] == _STOP:
                    break
                try:
                    self._handle(item)
                except Exception:
                    log.exception("server recorder: an item failed")
            now = time.time()
            if now >= next_flush:
                next_flush = now + 0.1
                for sink in list(self._live):
                    try:
                        sink.flush(now)
                    except Exception:
                        log.exception("server recorder: flushing %s failed", sink.name)

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == _RTP:
            sink = item[1]
            if sink not in self._live:
                self._live.add(sink)
            sink.on_packet(item[3], item[2])
        elif kind == _RTCP:
            item[1].on_report(item[2], item[3])
        elif kind == _END:
            self._live.discard(item[1])
            item[1].end()
        elif kind == _BARRIER:
            done: asyncio.Future[None] = item[1]
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_resolve, done)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class RoomRecording:
    """The tap on one room's router (RouterTap); its per-classroom recordings."""

    def __init__(self, recorder: ServerRecorder, room: Room) -> None:
        self.recorder = recorder
        self.room = room
        self.root = recorder.recordings / room.id / SERVER_DIR
        self.sinks: dict[MediaSource, TrackSink] = {}
        # Written by the recorder thread only, read by the loop after a barrier.
        self.recorders: dict[str, LessonRecorder] = {}
        self._refused: set[str] = set()
        self.stopped = False
        self.recorded = False  # some source was recorded
        self.idle_since = time.monotonic()

    # RouterTap
    def source_added(self, source: MediaSource) -> None:
        # Only what is published here: a relayed source is recorded on its own node,
        # the director's program is made of sources recorded already.
        if self.stopped or source.participant not in self.room.router.participants:
            return
        if source.codec not in CODECS or source in self.sinks:
            return
        sink = TrackSink(self, source)
        self.sinks[source] = sink
        self.recorded = True
        sink.down = self.room.router.attach_sink(
            source,
            sink,
            ssrc=random.getrandbits(32) | 1,
            payload_type=PAYLOAD_TYPES[source.codec],
            layer="h",
        )

    def source_removed(self, source: MediaSource) -> None:
        sink = self.sinks.pop(source, None)
        if sink is not None:
            sink.closed = True
            self.recorder._put((_END, sink))

    def on_event(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "lesson_ended":
            self.recorder._spawn(self.recorder.finish(self.room.id))

    async def stop(self) -> None:
        """No more packets; every file closed and its manifest final."""
        if self.stopped:
            return
        self.stopped = True
        self.room.router.remove_tap(self)
        with contextlib.suppress(ValueError):
            self.room.classroom.listeners.remove(self.on_event)
        for source, sink in list(self.sinks.items()):
            if sink.down is not None:
                self.room.router.detach_sink(sink.down)
            self.source_removed(source)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.recorder._put((_BARRIER, done))
        await done
        for rec in list(self.recorders.values()):
            await asyncio.to_thread(rec.close)

    # -- recorder thread ----------------------------------------------------------------

    def recorder_for(self, classroom: str) -> LessonRecorder | None:
        rec = self.recorders.get(classroom)
        if rec is not None:
            return None if rec.stopped else rec  # a disk budget stop is for the lesson
        if classroom in self._refused:
            return None
        info = self.room.info
        try:
            rec = LessonRecorder(
                self.root / _dir_name(classroom),
                LessonMeta(
                    lesson=self.room.id,
                    school="",
                    subject="",
                    grade="",
                    teacher="",
                    title=info.title or info.room,
                ),
                origin="server",
            )
        except (DiskBudgetExceeded, OSError) as exc:
            log.error("lesson %s: not recording %s: %s", self.room.id, classroom, exc)
            self._refused.add(classroom)
            return None
        self.recorders[classroom] = rec
        return rec


class TrackSink:
    """One source's packets into track files (PacketSink; the hot path side is two
    methods that only queue)."""

    def __init__(self, room: RoomRecording, source: MediaSource) -> None:
        self.room = room
        self.source = source
        self.name = source.track_id
        self.down: DownTrack | None = None
        self.closed = False
        self._put = room.recorder._queue.put
        self._queue = room.recorder._queue
        # Recorder thread state.
        self.depacketizer = Depacketizer(source.codec)
        self.video = source.kind == "video"
        self.rate = 90000 if self.video else 48000
        self.writer: TrackWriter | None = None
        self._ts0 = 0
        self._wall0 = 0.0
        self._size: tuple[int, int] | None = None
        self._provisional = True  # _wall0 is the arrival time, not yet the sender's clock
        self._report: tuple[float, int] | None = None  # (wall, unwrapped rtp) of the last SR
        self._clock_warned = False
        self._jumped = False
        self._asked_at = -KEYFRAME_REQUEST_INTERVAL_S

    # -- PacketSink: the forwarding hot path ----------------------------------------------

    def send_rtp(self, packet: bytes) -> None:
        if self._queue.qsize() > MAX_QUEUED:
            self.room.recorder.dropped += 1
            return
        self._put((_RTP, self, time.time(), packet))

    def send_rtcp(self, packet: bytes) -> None:
        self._put((_RTCP, self, packet, time.time()))

    # -- recorder thread ----------------------------------------------------------------

    def on_packet(self, data: bytes, arrival: float) -> None:
        self._frames(self.depacketizer.push(data, arrival))

    def flush(self, now: float) -> None:
        self._frames(self.depacketizer.flush(now))

    def end(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_report(self, data: bytes, made_at: float) -> None:
        """A sender report (RFC 3550 6.4.1) in this stream's timestamps, made at `made_at`
        (our clock): where the publisher's clock stands against the stream."""
        if len(data) < 20 or data[1] != 200 or self.depacketizer.timestamp_ref is None:
            return
        ntp = int.from_bytes(data[8:16], "big")
        wall = (ntp >> 32) - _NTP_EPOCH + (ntp & 0xFFFFFFFF) / 2**32
        if abs(wall - made_at) > CLOCK_TRUST_S:
            # The publisher's clock is off: its packets are placed by their arrival.
            if self._report is not None or not self._clock_warned:
                log.warning(
                    "%s: the publisher's clock is %.1f s off ours", self.name, wall - made_at
                )
                self._clock_warned = True
            self._report = None
            return
        self._report = (
            wall,
            self.depacketizer.extend_timestamp(int.from_bytes(data[16:20], "big")),
        )
        if self.writer is None:
            return
        sender = self._sender_wall(self._ts0)
        if self._provisional:
            self.writer.correct_start(sender)
            self._wall0, self._provisional = sender, False
        elif abs(sender - self._wall0) > DRIFT_S:
            # The stream's timestamps no longer run with the publisher's clock (it
            # restarted them): continue in a new file, placed by the new mapping.
            self._jumped = True

    def _sender_wall(self, timestamp: int) -> float:
        assert self._report is not None
        return self._report[0] + (timestamp - self._report[1]) / self.rate

    def _frames(self, frames: list[Frame]) -> None:
        if self.depacketizer.keyframe_wanted:
            self.depacketizer.keyframe_wanted = False
            self._ask_keyframe()
        for frame in frames:
            self._frame(frame)

    def _frame(self, frame: Frame) -> None:
        if self.video:
            if frame.keyframe and frame.size is not None:
                if self.writer is None or frame.size != self._size or self._jumped:
                    self._start(frame)
            if self.writer is None:
                return
        elif self.writer is None or self._jumped:
            self._start(frame)
            if self.writer is None:
                return
        assert self.writer is not None
        if not self.writer.write_frame(frame.data, frame.timestamp - self._ts0, frame.keyframe):
            self.writer = None  # the recording stopped (disk budget); the lesson goes on

    def _start(self, frame: Frame) -> None:
        """A new track file from this frame on (the first, after a picture size change or
        a jump of the stream's timestamps).

        A frame is placed by the publisher's clock (its sender reports), not by when it
        arrived: a frame the server recovered seconds late belongs where it was taken.
        Until the first report, the arrival stands in and is corrected then.
        """
        self.end()
        self._jumped = False
        rec = self.room.recorder_for(self.source.classroom)
        if rec is None:
            return
        provisional = self._report is None
        wall = frame.arrival if provisional else self._sender_wall(frame.timestamp)
        width, height = frame.size or (0, 0)
        try:
            self.writer = rec.add_track(
                self.source.source,
                self.source.kind,
                self.source.codec,
                width=width,
                height=height,
                rate=self.rate,
                wall_at_pts0=wall,
            )
        except (RecordingError, ValueError, DiskBudgetExceeded) as exc:
            log.error("lesson %s: cannot record %s: %s", self.room.room.id, self.name, exc)
            return
        self._ts0, self._wall0, self._size, self._provisional = (
            frame.timestamp,
            wall,
            frame.size,
            provisional,
        )

    def _ask_keyframe(self) -> None:
        loop = self.room.recorder._loop
        down = self.down
        now = time.monotonic()
        if now - self._asked_at < KEYFRAME_REQUEST_INTERVAL_S:
            return
        self._asked_at = now
        if loop is not None and down is not None and not self.closed:
            loop.call_soon_threadsafe(down.request_keyframe)


__all__ = ["ServerRecorder", "server_recordings"]
