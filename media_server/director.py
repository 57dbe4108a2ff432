"""The live director: one `program` video per lesson, cut at keyframes, never decoded.

A human director in a 1+N lesson watches the teacher, cuts to the slides when the
teacher shares or turns them, to the pupil who answers while a point is called on, and
back to the teacher. This does the same from the lesson's events (docs/ARCHITECTURE.md,
"The live director"):

1. while a teaching point is called on: that point's camera;
2. for `COURSEWARE_HOLD_S` after the master shares courseware or a slide changes: the
   courseware;
3. otherwise the teacher camera (then the board camera, then anything the master shows).

A source that has sent nothing for `STALE_S` is skipped (a frozen camera is not cut
to); cuts between the teacher and the courseware are at least `MIN_SHOT_S` apart (a
call-on and its release cut at once). In manual mode the master's console chooses the
shot and the rules wait until it hands back to automatic.

The program is a Router *detached source*: a cut is `Router.set_layers(program, layers)`,
which moves every subscription at the new camera's next keyframe (asked for at once) in
one continuous stream. Only sources of the program's codec can be cut in (a decoder
follows a resolution change at a keyframe, not a codec change): the program takes the
codec of the first camera it shows, and publishers are told it (`program_codec`).

Who receives the program: the recorder's tap (so it is recorded like any source), the
master console's program monitor and any observer that asks (`watch_program`), and a
teaching point *instead of* the master's cameras and the courseware when its link is
thin: chosen by the point (`receive_mode`), or automatically from its downlink estimate.
Nobody else pays for a second copy of a camera they already receive.

On an edge node (media_server/relay.py) the lesson's program is the origin's: the
director there cuts nothing and adopts the program relayed from the origin (its cuts
arrive as one continuous stream), while the receive modes of the edge's own points stay
the edge's to follow.

A slide change is seen without decoding: screen content costs almost nothing while it
stands still, so a delta frame many times the size of the recent ones is a new slide
(`SlideWatch`, a packet sink on the courseware). Each is a `slide` line in the timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from media_server.downtrack import DownTrack
from media_server.publisher import SignallingError
from media_server.rtpbytes import SEQ_TS, is_keyframe_start, payload_bounds
from media_server.source import MediaSource
from tongke.tokens import POINT_ROLES, Role

if TYPE_CHECKING:
    from media_server.participant import Participant
    from media_server.room import Room

log = logging.getLogger(__name__)

DIRECTOR = "director"  # the program's `participant`: no participant publishes it
PROGRAM = "program"
COURSEWARE_HOLD_S = 12.0  # long enough to read a new slide, then back to the teacher
MIN_SHOT_S = 2.0
STALE_S = 2.0
TICK_S = 0.5
# A point in automatic receive mode takes the program alone below this downlink
# estimate (the teacher camera's middle layer, the courseware and the audio no longer
# fit), and everything again above the second figure held for `ALL_HOLD_S`.
PROGRAM_BELOW_BPS = 1_200_000
ALL_ABOVE_BPS = 1_800_000
PROGRAM_HOLD_S = 3.0
ALL_HOLD_S = 10.0
RECEIVE_MODES = ("auto", "program", "all")
# Until a point chooses, it receives every source and the rural allocator pauses what
# does not fit (media_server/allocator.py); "auto" hands the choice to the estimate here.
DEFAULT_RECEIVE_MODE = "all"
# Slide change: a delta frame this many times the median of the recent ones, and big.
SLIDE_RATIO = 6.0
SLIDE_MIN_BYTES = 4000
SLIDE_MIN_GAP_S = 3.0
RECENT_CUTS = 20

# Shot reasons, as the consoles show them.
CALL_ON, COURSEWARE, TEACHER, BOARD, OTHER, MANUAL = (
    "call_on",
    "courseware",
    "teacher",
    "board",
    "other",
    "manual",
)

Clock = Callable[[], float]


@dataclass
class Cut:
    at: float  # wall time
    track: str | None
    reason: str

    def describe(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "track": self.track, "reason": self.reason}


class SlideWatch:
    """A packet sink on a courseware source that notices a new slide from frame sizes."""

    def __init__(self, codec: str, on_slide: Callable[[], None], clock: Clock) -> None:
        self._codec = codec
        self._on_slide = on_slide
        self._clock = clock
        self._ts: int | None = None
        self._size = 0
        self._key = False
        self._recent: deque[int] = deque(maxlen=15)
        self._last_slide = float("-inf")
        self.down: DownTrack | None = None

    def send_rtp(self, packet: bytes) -> None:
        try:
            start, end = payload_bounds(packet)
        except ValueError:
            return
        ts = SEQ_TS.unpack_from(packet, 2)[1]
        if ts != self._ts:
            self._frame_done()
            self._ts, self._size, self._key = ts, 0, False
        self._size += end - start
        if is_keyframe_start(self._codec, packet, start, end):
            self._key = True

    def send_rtcp(self, packet: bytes) -> None:
        pass

    def _frame_done(self) -> None:
        if self._ts is None or self._key:
            return  # a keyframe is big because a receiver asked for one, not a slide
        size = self._size
        if len(self._recent) >= 5:
            typical = statistics.median(self._recent)
            now = self._clock()
            if (
                size >= SLIDE_MIN_BYTES
                and size >= SLIDE_RATIO * typical
                and now - self._last_slide >= SLIDE_MIN_GAP_S
            ):
                self._last_slide = now
                self._on_slide()
        self._recent.append(size)


class Director:
    """One per room: owns the program source and decides what is on it."""

    def __init__(self, room: Room, *, clock: Clock = time.monotonic) -> None:
        self.room = room
        self.router = room.router
        self.classroom = room.classroom
        self.clock = clock
        self.program: MediaSource | None = None
        self.on_air: MediaSource | None = None
        self.reason = ""
        self.mode = "auto"
        self.manual: MediaSource | None = None
        self.cuts: deque[Cut] = deque(maxlen=RECENT_CUTS)
        self._last_cut = float("-inf")
        self._urgent = False  # the next cut need not wait for MIN_SHOT_S
        self._live: frozenset[str] = frozenset()  # cameras sending pictures, last tick
        self._courseware_until = float("-inf")
        self._slides = 0
        self._watches: dict[MediaSource, SlideWatch] = {}
        # Points' receive modes (by classroom) and who takes the program alone now.
        self.receive_modes: dict[str, str] = {}
        self.program_only: set[str] = set()
        # Participants (not points) that asked to watch the program (`watch_program`).
        self.watchers: set[str] = set()
        self._thin_since: dict[str, float] = {}
        self._wide_since: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # An edge of the lesson: the program is the origin's, relayed (`set_relayed`).
        self.relayed = False
        self.router.add_tap(self)
        self.classroom.listeners.append(self._on_event)

    # -- the receive policy ------------------------------------------------------------

    def policy(self, viewer: Participant, sources: list[MediaSource]) -> list[MediaSource]:
        """The classroom's policy, plus who receives the program instead of the cameras."""
        allowed = self.classroom.policy(viewer, sources)
        if viewer.claims.role not in POINT_ROLES:
            if viewer.id in self.watchers:
                return allowed
            return [s for s in allowed if s is not self.program]
        if viewer.claims.classroom in self.program_only and self.program in allowed:
            # A thin link: the program alone, with every voice (audio is cheap and the
            # program carries the picture of whoever speaks).
            return [s for s in allowed if s is self.program or s.kind == "audio"]
        return [s for s in allowed if s is not self.program]

    # -- router tap: sources come and go -------------------------------------------------

    def set_relayed(self, relayed: bool) -> None:
        """This node is (or stops being) an edge of the lesson: show the origin's program."""
        if relayed == self.relayed:
            return
        self.relayed = relayed
        own = self.program is not None and not _relayed_program(self.program)
        if relayed and own:
            assert self.program is not None
            self.router.remove_source(self.program)
            self.program = self.on_air = None
        if relayed:
            relayed_in = next((s for s in self.router.sources() if _relayed_program(s)), None)
            if relayed_in is not None:
                self.program = relayed_in
        elif self.program is not None and _relayed_program(self.program):
            self.program = self.on_air = None
        self.router.resubscribe()
        self.decide(urgent=True)

    def source_added(self, source: MediaSource) -> None:
        if self.relayed and _relayed_program(source):
            # Taps hear of a source before the router subscribes anyone: in time.
            self.program = source
            return
        if source.participant == DIRECTOR or source.kind != "video" or _relayed_program(source):
            return
        self._ensure_running()
        self.classroom.announce_soon({"kind": "cameras"})
        if source.source == "courseware" and source.role is Role.MASTER and not self.relayed:
            self._courseware_until = self.clock() + COURSEWARE_HOLD_S
            self._watch(source)
            # Shared just now: on air as soon as its first pictures arrive.
            self._urgent = True
        self.decide()

    def source_removed(self, source: MediaSource) -> None:
        if source is self.program and _relayed_program(source):
            self.program = None
            return
        if source.participant == DIRECTOR or source.kind != "video" or _relayed_program(source):
            return
        self.classroom.announce_soon({"kind": "cameras"})
        watch = self._watches.pop(source, None)
        if watch is not None and watch.down is not None:
            self.router.detach_sink(watch.down)
        if source is self.manual:
            self.mode, self.manual = "auto", None
        if source is self.on_air:
            self.on_air = None
            self.decide(urgent=True)

    def _watch(self, source: MediaSource) -> None:
        if source in self._watches:
            return
        watch = SlideWatch(source.codec, lambda: self._slide(source), lambda: self.clock())
        # The watch's own SSRC and payload type never leave the server.
        watch.down = self.router.attach_sink(source, watch, ssrc=0x51DE, payload_type=96)
        self._watches[source] = watch

    def _slide(self, source: MediaSource) -> None:
        self._slides += 1
        self._courseware_until = self.clock() + COURSEWARE_HOLD_S
        self.classroom.record("slide", index=self._slides, track=source.track_id, by=DIRECTOR)
        self.decide(urgent=True)

    # -- classroom events ----------------------------------------------------------------

    def _on_event(self, kind: str, fields: dict[str, Any]) -> None:
        if kind in ("call_on", "call_off", "lesson_started"):
            self.decide(urgent=kind in ("call_on", "call_off"))

    # -- deciding ------------------------------------------------------------------------

    def decide(self, *, urgent: bool = False) -> None:
        """Cut to the shot the rules (or the master) want, if it differs from the air."""
        if self._closed or self.relayed:
            return
        shot: MediaSource | None
        if self.mode == "manual" and self.manual is not None and self._usable(self.manual):
            shot, reason = self.manual, MANUAL
        else:
            shot, reason = self._automatic()
        if shot is None:
            if self.on_air is None and self.program is not None and self.program.layers:
                # The shot left and nothing can stand in: the program holds no camera
                # (its subscribers idle) until one comes back.
                self.router.set_layers(self.program, {})
            return
        if shot is self.on_air:
            self.reason = reason
            self._sync_layers()
            return
        if (
            not (urgent or self._urgent)
            and reason != MANUAL
            and self.clock() - self._last_cut < MIN_SHOT_S
            and self.on_air is not None
            and self._usable(self.on_air)
        ):
            return  # the tick comes back to it
        self._cut(shot, reason)

    def _automatic(self) -> tuple[MediaSource | None, str]:
        cameras = [s for s in self.router.sources() if self._usable(s)]
        called = self.classroom.called_on
        if called is not None:
            of_point = [s for s in cameras if s.classroom == called and s.role is Role.POINT]
            shot = _prefer(of_point, ("point_camera",))
            if shot is not None:
                return shot, CALL_ON
        master = [s for s in cameras if s.role is Role.MASTER]
        courseware = next((s for s in master if s.source == "courseware"), None)
        if courseware is not None and self.clock() < self._courseware_until:
            return courseware, COURSEWARE
        for name, reason in (("teacher_camera", TEACHER), ("board_camera", BOARD)):
            shot = next((s for s in master if s.source == name), None)
            if shot is not None:
                return shot, reason
        others = [s for s in master if s is not courseware]
        if others:
            return others[0], OTHER
        return courseware, COURSEWARE

    def _usable(self, source: MediaSource) -> bool:
        """A live video of the program's codec (or any video before the program exists)."""
        if source.kind != "video" or source.participant == DIRECTOR or not source.layers:
            return False
        if _relayed_program(source):
            return False
        if self.program is not None and source.codec != self.program.codec:
            return False
        if source not in self.router.sources():
            return False
        newest = max(up.last_packet_at for up in source.layers.values())
        return time.time() - newest < STALE_S

    def _cut(self, shot: MediaSource, reason: str) -> None:
        if self.program is None:
            self.program = MediaSource(
                participant=DIRECTOR,
                classroom=self.room.info.master,
                name="导播",
                source=PROGRAM,
                kind="video",
                codec=shot.codec,
                label="Program",
            )
            self.router.add_source(self.program)
        self.on_air, self.reason = shot, reason
        self._last_cut = self.clock()
        self._urgent = False
        self.router.set_layers(self.program, dict(shot.layers))
        cut = Cut(time.time(), shot.track_id, reason)
        self.cuts.append(cut)
        log.info("room %s: program cut to %s (%s)", self.room.id, shot.track_id, reason)
        self.classroom.announce_soon({"kind": "program_cut", **cut.describe()})

    def _sync_layers(self) -> None:
        """Follow the shot's layers when its publisher adds or drops one."""
        if self.program is None or self.on_air is None:
            return
        if self.program.layers != self.on_air.layers:
            self.router.set_layers(self.program, dict(self.on_air.layers))

    # -- the master's console ------------------------------------------------------------

    async def command(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        """`director`: {"mode": "auto"} or {"track": "<participant>/<source>"} (manual)."""
        if who.claims.role is not Role.MASTER:
            raise SignallingError(
                "forbidden",
                f"only the master may direct the program, not a {who.claims.role.value}",
            )
        mode, track = message.get("mode"), message.get("track")
        if mode == "auto" and track is None:
            self.mode, self.manual = "auto", None
            self.decide(urgent=True)
        elif isinstance(track, str) and mode in (None, "manual"):
            source = next((s for s in self.router.sources() if s.track_id == track), None)
            if source is None or source.participant == DIRECTOR or source.kind != "video":
                raise SignallingError("unknown_track", f"{track!r} is not a camera in this lesson")
            if self.program is not None and source.codec != self.program.codec:
                raise SignallingError(
                    "codec_mismatch",
                    f"{track!r} is {source.codec}, the program is {self.program.codec}: "
                    "it cannot be cut in without re-encoding",
                )
            if not self._usable(source):
                raise SignallingError("no_signal", f"{track!r} is sending no pictures now")
            self.mode, self.manual = "manual", source
            self.decide(urgent=True)
        else:
            raise SignallingError(
                "bad_request", "director needs {'mode': 'auto'} or {'track': a camera's id}"
            )
        self.classroom.announce_soon({"kind": "director", "mode": self.mode})
        return {"type": "done", "action": "director"}

    async def watch_program(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        """`watch_program`: the master console's monitor (or an observer) receives the
        program too (`on`: true) or not; points choose with `receive_mode` instead."""
        if who.claims.role in POINT_ROLES:
            raise SignallingError(
                "forbidden", "a teaching point chooses the program with receive_mode"
            )
        on = message.get("on")
        if not isinstance(on, bool):
            raise SignallingError("bad_request", "watch_program needs 'on': true or false")
        if (who.id in self.watchers) != on:
            if on:
                self.watchers.add(who.id)
            else:
                self.watchers.discard(who.id)
            self.router.resubscribe()
        return {"type": "done", "action": "watch_program"}

    async def set_receive_mode(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        """`receive_mode`: a point (or its tutor) chooses the program alone, everything, or
        automatic; the master may choose for any point (`classroom`)."""
        mode = message.get("mode")
        if mode not in RECEIVE_MODES:
            raise SignallingError(
                "bad_request", f"'mode' must be one of {', '.join(RECEIVE_MODES)}"
            )
        role = who.claims.role
        classroom: Any = who.claims.classroom
        if role in POINT_ROLES:
            pass
        elif role is Role.MASTER:
            classroom = message.get("classroom")
            if not isinstance(classroom, str) or classroom not in self.classroom.known_points():
                raise SignallingError(
                    "unknown_point", f"{classroom!r} is not a point of this lesson"
                )
        else:
            raise SignallingError(
                "forbidden", f"a {role.value} does not choose what points receive"
            )
        self.receive_modes[classroom] = mode
        self._thin_since.pop(classroom, None)
        self._wide_since.pop(classroom, None)
        if mode == "program":
            self._program_only(classroom, True)
        elif mode == "all":
            self._program_only(classroom, False)
        return {"type": "done", "action": "receive_mode"}

    def _program_only(self, classroom: str, on: bool) -> None:
        if (classroom in self.program_only) == on:
            return
        if on:
            self.program_only.add(classroom)
        else:
            self.program_only.discard(classroom)
        self.router.resubscribe()
        self.classroom.announce_soon(
            {"kind": "receive_mode", "classroom": classroom, "program_only": on}
        )

    def _follow_links(self) -> None:
        """Points in automatic mode: the program alone while their downlink is thin."""
        now = self.clock()
        for p in list(self.router.participants.values()):
            classroom = p.claims.classroom
            bandwidth = p.subscriber.bandwidth
            if p.claims.role is not Role.POINT or bandwidth is None:
                continue
            if self.receive_modes.get(classroom, DEFAULT_RECEIVE_MODE) != "auto":
                continue
            estimate = bandwidth.estimate_bps
            thin = estimate < PROGRAM_BELOW_BPS
            wide = estimate > ALL_ABOVE_BPS
            if thin:
                self._thin_since.setdefault(classroom, now)
            else:
                self._thin_since.pop(classroom, None)
            if wide:
                self._wide_since.setdefault(classroom, now)
            else:
                self._wide_since.pop(classroom, None)
            if classroom not in self.program_only:
                if thin and now - self._thin_since[classroom] >= PROGRAM_HOLD_S:
                    self._program_only(classroom, True)
            elif wide and now - self._wide_since[classroom] >= ALL_HOLD_S:
                self._program_only(classroom, False)

    # -- state and lifetime ----------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "program": self.program.track_id if self.program is not None else None,
            "codec": self.program.codec if self.program is not None else None,
            "mode": self.mode,
            "on_air": self.on_air.track_id if self.on_air is not None else None,
            "reason": self.reason,
            "cuts": [c.describe() for c in self.cuts][-5:],
            "program_only": sorted(self.program_only),
            "receive_modes": dict(self.receive_modes),
            # What the master's console offers to cut to.
            "cameras": [
                {
                    "track": s.track_id,
                    "classroom": s.classroom,
                    "name": s.name,
                    "source": s.source,
                    "label": s.label,
                    "usable": self._usable(s),
                }
                for s in self.router.sources()
                if s.kind == "video" and s.participant != DIRECTOR and not _relayed_program(s)
            ],
        }

    def _ensure_running(self) -> None:
        if self._closed or (self._task is not None and not self._task.done()):
            return
        with contextlib.suppress(RuntimeError):  # no loop: a test driving it by hand
            asyncio.get_running_loop()
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        # An empty room needs no director: the next camera that comes starts it again.
        while not self._closed and self.router.participants:
            await asyncio.sleep(TICK_S)
            try:
                self.tick()
            except Exception:
                log.exception("director tick failed in room %s", self.room.id)

    def tick(self) -> None:
        """Expire the courseware hold, skip frozen cameras, follow thin links."""
        self.decide()
        self._follow_links()
        live = frozenset(s.track_id for s in self.router.sources() if self._usable(s))
        if live != self._live:
            self._live = live
            self.classroom.announce_soon({"kind": "cameras"})  # the console's buttons

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        for watch in self._watches.values():
            if watch.down is not None:
                self.router.detach_sink(watch.down)
        self._watches.clear()
        self.router.remove_tap(self)
        if self.program is not None and not _relayed_program(self.program):
            self.router.remove_source(self.program)


def _relayed_program(source: MediaSource) -> bool:
    """An origin's program, imported over a relay link (its participant is
    "<origin node>~director", media_server/relay_link.py)."""
    return source.source == PROGRAM and source.participant.endswith("~" + DIRECTOR)


def _prefer(sources: list[MediaSource], names: tuple[str, ...]) -> MediaSource | None:
    for name in names:
        for s in sources:
            if s.source == name:
                return s
    return sources[0] if sources else None
