"""The lesson in a room: its phase, raised hands, chat, call-on, mute and attendance.

Everything here is keyed by *classroom*, not by connection: a teaching point whose link
drops and comes back is still called on, still muted, still in the hand queue. The
receive policy (`may_receive`) is the one place that says who hears and sees whom; the
room (today `Room.sources_for`, after the router refactor `Router.sources_for`) asks it.

Every change is a room event (sent to the clients that may see it) and a line in the
lesson timeline (recording/timeline.py vocabulary), so replays get chapters from real
call-ons. A refused action changes nothing and is answered on the asking socket only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from media_server import agent_state
from media_server.publisher import SignallingError
from recording.timeline import KINDS, TimelineWriter, read_timeline
from tongke.tokens import POINT_ROLES, Claims, Role

if TYPE_CHECKING:
    from media_server.director import Director
    from media_server.participant import Participant
    from media_server.room import Room
    from media_server.source import MediaSource

log = logging.getLogger(__name__)

CHAT_MAX_CHARS = 500
CHAT_HISTORY = 200
# A burst of 5 messages, then one every 2 s: enough to talk, too few to flood a TV screen.
CHAT_BURST = 5
CHAT_WINDOW_S = 10.0
# The lesson ends by itself this long after its timetabled end (the teacher may overrun).
GRACE_S = 600.0
CLOCK_TICK_S = 1.0
# Roles that take part in the conversation; observers, recorders and students only watch.
SPEAKING_ROLES = frozenset({Role.MASTER, Role.POINT, Role.TUTOR})
# Roles whose attendance is counted (a recorder or an observer is not a class).
ATTENDING_ROLES = frozenset({Role.MASTER, Role.POINT, Role.AGENT})
PRIVATE_TO_MASTER = "master"
# Who sees the classroom devices' reports (agent_state): the master and the county's staff.
DEVICE_VIEWERS = frozenset({Role.MASTER, Role.OBSERVER, Role.ADMIN})
ROOM_CLOSED = "room_closed"


class Phase(StrEnum):
    WAITING = "waiting"
    LIVE = "live"
    ENDED = "ended"


@dataclass
class Hand:
    classroom: str
    name: str
    raised_at: float

    def describe(self) -> dict[str, Any]:
        return {"classroom": self.classroom, "name": self.name, "raised_at": self.raised_at}


@dataclass
class ChatMessage:
    seq: int
    at: float
    classroom: str
    name: str
    role: str
    text: str
    # None: the whole room; a point's classroom id: private between it and the master.
    private_with: str | None = None

    def visible_to(self, claims: Claims) -> bool:
        if self.private_with is None:
            return True
        return claims.role in (Role.MASTER, Role.ADMIN) or claims.classroom == self.private_with

    def describe(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "classroom": self.classroom,
            "name": self.name,
            "role": self.role,
            "text": self.text,
            "private_with": self.private_with,
        }


@dataclass
class Attendance:
    classroom: str
    name: str
    role: str
    joins: int = 0
    first_join: float | None = None
    last_leave: float | None = None
    present_s: float = 0.0
    # Open connections of this classroom and since when at least one was open.
    connections: int = 0
    since: float | None = None

    def seconds(self, now: float) -> float:
        return self.present_s + (now - self.since if self.since is not None else 0.0)

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "classroom": self.classroom,
            "name": self.name,
            "role": self.role,
            "present": self.connections > 0,
            "joins": self.joins,
            "first_join": self.first_join,
            "last_leave": self.last_leave,
            "present_s": round(self.seconds(now), 1),
        }


Clock = Callable[[], float]
Listener = Callable[[str, dict[str, Any]], None]


class Upstream(Protocol):
    """An edge node's way to the lesson's origin (media_server/relay_classroom.py)."""

    async def joined(self, participant: Participant) -> None: ...

    async def left(self, participant: Participant) -> None: ...

    async def action(
        self, who: Participant, kind: str, message: dict[str, Any]
    ) -> dict[str, Any]: ...

    def state_for(self, participant: Participant) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class LessonEnd:
    """The one event that says a lesson is over (docs/ARCHITECTURE.md, "Lesson end").

    `reason`: "master" (ended from the console), "timetable" (end time plus grace) or
    "closed" (the room was closed before the lesson ended).
    """

    room: str
    title: str
    reason: str
    by: str
    started_at: float | None
    ended_at: float

    def describe(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "title": self.title,
            "reason": self.reason,
            "by": self.by,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


LessonEndListener = Callable[[LessonEnd], None]


class Classroom:
    """The interaction state of one room's lesson."""

    def __init__(
        self, room: Room, *, timeline_dir: Path | None = None, clock: Clock = time.time
    ) -> None:
        self.room = room
        self.clock = clock
        self.phase = Phase.WAITING
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.hands: list[Hand] = []
        self.chat: deque[ChatMessage] = deque(maxlen=CHAT_HISTORY)
        self._chat_seq = 0
        self._chat_times: dict[str, deque[float]] = {}
        self.called_on: str | None = None
        self.called_on_since: float | None = None
        self.muted: set[str] = set()
        self.attendance: dict[str, Attendance] = {}
        # Each classroom device's latest report (media_server/agent_state.py).
        self.devices: dict[str, dict[str, Any]] = {}
        # Members of the lesson connected to an edge node (media_server/relay_classroom.py):
        # here, at the origin, they are as present as the room's own participants.
        self.remote: dict[str, Participant] = {}
        # On an edge node: the origin's classroom owns the lesson; this one forwards.
        self.upstream: Upstream | None = None
        # Told of every timeline event (the director, the server recorder).
        self.listeners: list[Listener] = []
        # Told once when the lesson is over, however it ended (`LessonEnd`).
        self.end_listeners: list[LessonEndListener] = []
        self._end_told = False
        self._clock_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._timeline: TimelineWriter | None = None
        if timeline_dir is not None:
            path = timeline_dir / f"{room.id}.jsonl"
            self._restore(path)
            timeline_dir.mkdir(parents=True, exist_ok=True)
            self._timeline = TimelineWriter(path)

    # -- the timetable ---------------------------------------------------------------

    @property
    def starts_at(self) -> float | None:
        return self.room.info.starts_at

    @property
    def ends_at(self) -> float | None:
        return self.room.info.ends_at

    def tick(self) -> None:
        """Follow the timetable: live at the start time, ended after the end plus grace."""
        now = self.clock()
        if self.phase is Phase.WAITING and self.starts_at is not None and now >= self.starts_at:
            self._set_phase(Phase.LIVE, by="timetable")
        if (
            self.phase is not Phase.ENDED
            and self.ends_at is not None
            and now >= self.ends_at + GRACE_S
        ):
            self._set_phase(Phase.ENDED, by="timetable")

    def start_clock(self) -> None:
        """Tick in the background while the room has a timetable and is not over."""
        if self.starts_at is None and self.ends_at is None:
            return
        if self._clock_task is None or self._clock_task.done():
            self._clock_task = asyncio.ensure_future(self._run_clock())

    async def _run_clock(self) -> None:
        while self.phase is not Phase.ENDED:
            self.tick()
            await asyncio.sleep(CLOCK_TICK_S)

    # -- the receive policy ----------------------------------------------------------

    def policy(self, viewer: Participant, sources: list[MediaSource]) -> list[MediaSource]:
        """The room router's receive policy: what `viewer` receives of `sources`."""
        return [s for s in sources if self.may_receive(viewer.claims, s)]

    def may_receive(self, viewer: Claims, source: MediaSource) -> bool:
        """Who receives what.

        An ended lesson forwards nothing. A muted point's microphone goes to nobody.
        A teaching point's downlink is 2-5 Mbit/s: it receives the master classroom, and
        the other points only while one of them is called on (then that point's camera
        and microphone go to everyone). Master, observers and recorders receive everyone.
        """
        if self.phase is Phase.ENDED:
            return False
        is_point = source.role is Role.POINT
        if is_point and source.kind == "audio" and source.classroom in self.muted:
            return False
        if viewer.role not in POINT_ROLES or not is_point:
            return True
        return source.classroom == self.called_on

    def in_focus(self, source: MediaSource) -> bool:
        """The called-on classroom's sources: the lesson's focus while it is called on."""
        return source.role is Role.POINT and source.classroom == self.called_on

    # -- participants ----------------------------------------------------------------

    def check_join(self, claims: Claims) -> None:
        if self.phase is Phase.ENDED and claims.role in (Role.POINT, Role.AGENT, Role.TUTOR):
            raise SignallingError("lesson_ended", "this lesson has ended; it cannot be joined")

    def check_publish(self) -> None:
        if self.phase is Phase.ENDED:
            raise SignallingError("lesson_ended", "this lesson has ended: no new media")

    def members(self) -> list[Participant]:
        """Everyone in the lesson: this node's participants and the edges' members."""
        return [*self.room.participants.values(), *self.remote.values()]

    async def add_member(self, member: Participant) -> None:
        """A participant of an edge node joins the lesson here (at its origin)."""
        self.remote[member.id] = member
        await self.joined(member)

    async def remove_member(self, member: Participant) -> None:
        # An edge that linked again has the same member on its new link already: that
        # one stays; the old one's connection is still counted off.
        if self.remote.get(member.id) is member:
            del self.remote[member.id]
        await self.left(member)

    async def joined(self, participant: Participant) -> None:
        """Count the join, tell the newcomer the whole state, and everyone the change."""
        if self.upstream is not None:
            await self.upstream.joined(participant)
            return
        claims = participant.claims
        if claims.role in ATTENDING_ROLES and claims.classroom:
            now = self.clock()
            entry = self.attendance.get(claims.classroom)
            if entry is None:
                entry = self.attendance[claims.classroom] = Attendance(
                    classroom=claims.classroom, name=participant.name, role=claims.role.value
                )
            entry.joins += 1
            entry.connections += 1
            if entry.first_join is None:
                entry.first_join = now
            if entry.since is None:
                entry.since = now
                self.record(
                    "join",
                    classroom=claims.classroom,
                    name=participant.name,
                    role=claims.role.value,
                )
        self.start_clock()
        await participant.send_json(
            {"type": "classroom", "event": None, "state": self.state(claims, history=True)}
        )
        await self._announce({"kind": "attendance"})

    async def left(self, participant: Participant) -> None:
        if self.upstream is not None:
            await self.upstream.left(participant)
            return
        claims = participant.claims
        entry = self.attendance.get(claims.classroom)
        if claims.role not in ATTENDING_ROLES or entry is None or entry.connections == 0:
            return
        entry.connections -= 1
        if entry.connections > 0:
            return
        now = self.clock()
        entry.present_s += now - (entry.since or now)
        entry.since = None
        entry.last_leave = now
        self.record("leave", classroom=claims.classroom, name=entry.name)
        events: list[dict[str, Any]] = [{"kind": "attendance"}]
        if claims.role is Role.POINT:
            if self._drop_hand(claims.classroom):
                self.record("hand_lowered", classroom=claims.classroom, reason="left")
            if self.called_on == claims.classroom:
                self._release(reason="left")
                events.append({"kind": "call_off", "classroom": claims.classroom, "reason": "left"})
        for event in events:
            await self._announce(event)

    # -- actions (one per message type; see HANDLERS) --------------------------------

    async def start(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        self._require(who, Role.MASTER, "start the lesson")
        if self.phase is Phase.ENDED:
            raise SignallingError("lesson_ended", "this lesson has already ended")
        if self.phase is Phase.LIVE:
            raise SignallingError("bad_state", "the lesson is already live")
        self._set_phase(Phase.LIVE, by=who.claims.classroom)
        return self._done("lesson_start")

    async def end(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        self._require(who, Role.MASTER, "end the lesson")
        if self.phase is Phase.ENDED:
            raise SignallingError("lesson_ended", "this lesson has already ended")
        self._set_phase(Phase.ENDED, by=who.claims.classroom)
        return self._done("lesson_end")

    async def raise_hand(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        self._require_point(who, "raise a hand")
        self._require_live()
        classroom = who.claims.classroom
        if not any(h.classroom == classroom for h in self.hands):
            name = self.known_points().get(classroom) or who.name
            self.hands.append(Hand(classroom, name, self.clock()))
            self.record("hand_raised", classroom=classroom, name=name, by=who.claims.role.value)
            await self._announce({"kind": "hand_raised", "classroom": classroom})
        return self._done("hand_raise")

    async def lower_hand(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        """A point (or its tutor) lowers its own hand; the master lowers any ('answered')."""
        role = who.claims.role
        if role in POINT_ROLES:
            classroom = who.claims.classroom
        elif role is Role.MASTER:
            classroom = self._point_field(message)
        else:
            raise SignallingError("forbidden", f"a {role.value} may not lower hands")
        self._require_live()
        if not self._drop_hand(classroom):
            raise SignallingError("bad_request", f"{classroom!r} has no raised hand")
        self.record("hand_lowered", classroom=classroom, by=who.claims.classroom)
        await self._announce({"kind": "hand_lowered", "classroom": classroom})
        return self._done("hand_lower")

    async def call_on(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        self._require(who, Role.MASTER, "call on a teaching point")
        self._require_live()
        classroom = self._point_field(message)
        if not self._present_points().get(classroom):
            raise SignallingError(
                "unknown_point", f"teaching point {classroom!r} is not in this lesson now"
            )
        if self.called_on == classroom:
            return self._done("call_on")
        if self.called_on is not None:
            previous = self.called_on
            self._release(reason="replaced")
            await self._announce({"kind": "call_off", "classroom": previous})
        name = self._present_points()[classroom]
        self.called_on, self.called_on_since = classroom, self.clock()
        self.record("call_on", classroom=classroom, name=name)
        if self._drop_hand(classroom):
            self.record("hand_lowered", classroom=classroom, reason="called_on")
        if classroom in self.muted:
            # Calling on a point is asking it to speak: its microphone must reach everyone.
            self.muted.discard(classroom)
            self.record("unmuted", classroom=classroom, reason="called_on")
        self.room.router.resubscribe()
        await self._announce({"kind": "call_on", "classroom": classroom, "name": name})
        return self._done("call_on")

    async def call_off(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        self._require(who, Role.MASTER, "release a teaching point")
        if self.called_on is None:
            raise SignallingError("bad_state", "no teaching point is called on")
        classroom = self.called_on
        self._release(reason="released")
        await self._announce({"kind": "call_off", "classroom": classroom})
        return self._done("call_off")

    async def mute(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        return await self._set_muted(who, message, True)

    async def unmute(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        return await self._set_muted(who, message, False)

    async def send_chat(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        role = who.claims.role
        if role not in SPEAKING_ROLES:
            raise SignallingError("forbidden", f"a {role.value} may not chat in a lesson")
        if self.phase is Phase.ENDED:
            raise SignallingError("lesson_ended", "this lesson has ended")
        text = message.get("text")
        if not isinstance(text, str) or not text.strip():
            raise SignallingError("bad_request", "chat needs 'text': a non-empty string")
        text = text.strip()
        if len(text) > CHAT_MAX_CHARS:
            raise SignallingError(
                "chat_too_long", f"a chat message is at most {CHAT_MAX_CHARS} characters"
            )
        to = message.get("to")
        private_with: str | None
        if to is None:
            private_with = None
        elif not isinstance(to, str):
            raise SignallingError("bad_request", "'to' must be a classroom id or 'master'")
        elif role in POINT_ROLES:
            if to != PRIVATE_TO_MASTER:
                raise SignallingError(
                    "forbidden", "a teaching point may talk privately with the master only"
                )
            private_with = who.claims.classroom
        else:
            if to not in self.known_points():
                raise SignallingError("unknown_point", f"{to!r} is not a point of this lesson")
            private_with = to
        now = self.clock()
        recent = self._chat_times.setdefault(who.claims.subject or who.id, deque())
        while recent and now - recent[0] >= CHAT_WINDOW_S:
            recent.popleft()
        if len(recent) >= CHAT_BURST:
            raise SignallingError(
                "chat_rate_limited",
                f"at most {CHAT_BURST} messages in {CHAT_WINDOW_S:.0f} s; wait a moment",
            )
        recent.append(now)
        self._chat_seq += 1
        chat = ChatMessage(
            seq=self._chat_seq,
            at=now,
            classroom=who.claims.classroom,
            name=who.name,
            role=role.value,
            text=text,
            private_with=private_with,
        )
        self.chat.append(chat)
        fields: dict[str, Any] = {"classroom": chat.classroom, "sender": chat.name, "text": text}
        if private_with is not None:
            fields["private_with"] = private_with
        self.record("chat", **fields)
        out = {"type": "chat", "message": chat.describe()}
        for p in self.members():
            if chat.visible_to(p.claims):
                await _send(p, out)
        return self._done("chat")

    async def report_device(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        """`agent_state`: a classroom's device (agent or console PC) reports itself."""
        if who.claims.role not in (Role.MASTER, Role.POINT, Role.AGENT):
            raise SignallingError(
                "forbidden", f"a {who.claims.role.value} has no classroom device to report"
            )
        state = agent_state.clean(message, self.clock())
        classroom = who.claims.classroom
        self.devices[classroom] = state
        out = {
            "type": "agent_state",
            "classroom": classroom,
            "state": agent_state.summary(state, self.clock()),
        }
        for p in self.members():
            if p.claims.role in DEVICE_VIEWERS:
                await _send(p, out)
        return self._done("agent_state")

    def device_summaries(self) -> dict[str, Any]:
        now = self.clock()
        return {c: agent_state.summary(s, now) for c, s in self.devices.items()}

    async def get_state(self, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        return {"type": "classroom", "event": None, "state": self.state(who.claims, history=True)}

    # -- state -----------------------------------------------------------------------

    def state(self, viewer: Claims, *, history: bool = False) -> dict[str, Any]:
        now = self.clock()
        present = self._present_points()
        points = []
        for classroom, name in self.known_points().items():
            points.append(
                {
                    "classroom": classroom,
                    "name": present.get(classroom) or name,
                    "present": classroom in present,
                    "hand": any(h.classroom == classroom for h in self.hands),
                    "muted": classroom in self.muted,
                    "called_on": classroom == self.called_on,
                }
            )
        out: dict[str, Any] = {
            "phase": self.phase.value,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "grace_s": GRACE_S,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "hands": [h.describe() for h in self.hands],
            "called_on": self.called_on,
            "called_on_since": self.called_on_since,
            "muted": sorted(self.muted),
            "points": points,
            "attendance": [a.describe(now) for a in self.attendance.values()],
            "now": now,
        }
        if viewer.role in DEVICE_VIEWERS:
            out["devices"] = self.device_summaries()
        director = getattr(self.room, "director", None)  # made after the classroom
        if director is not None:
            out["director"] = self.director().describe()
            out["program_codec"] = out["director"]["codec"]
        if history:
            out["chat"] = [m.describe() for m in self.chat if m.visible_to(viewer)]
        return out

    def report(self) -> dict[str, Any]:
        """Attendance for people after (or during) the lesson."""
        now = self.clock()
        return {
            "room": self.room.id,
            "title": self.room.info.title,
            "phase": self.phase.value,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "expected_points": list(self.room.info.points),
            "attendance": [a.describe(now) for a in self.attendance.values()],
        }

    def room_closed(self) -> None:
        """The room was closed (by hand or by the API): a lesson not yet over ends here."""
        if self.phase is not Phase.ENDED:
            self._set_phase(Phase.ENDED, by=ROOM_CLOSED)

    def director(self) -> Director:
        return self.room.director

    def close(self) -> None:
        if self._clock_task is not None:
            self._clock_task.cancel()
        if self._timeline is not None:
            self._timeline.close()

    # -- helpers ---------------------------------------------------------------------

    def _require(self, who: Participant, role: Role, what: str) -> None:
        if who.claims.role is not role:
            raise SignallingError(
                "forbidden", f"only the {role.value} may {what}, not a {who.claims.role.value}"
            )

    def _require_point(self, who: Participant, what: str) -> None:
        if who.claims.role not in POINT_ROLES:
            raise SignallingError(
                "forbidden",
                f"only a teaching point or its tutor may {what}, not a {who.claims.role.value}",
            )

    def _require_live(self) -> None:
        if self.phase is Phase.ENDED:
            raise SignallingError("lesson_ended", "this lesson has ended")
        if self.phase is not Phase.LIVE:
            raise SignallingError("not_live", "the lesson has not started yet")

    def _point_field(self, message: dict[str, Any]) -> str:
        classroom = message.get("classroom")
        if not isinstance(classroom, str) or not classroom:
            raise SignallingError("bad_request", "this needs 'classroom': a point's id")
        return classroom

    def _present_points(self) -> dict[str, str]:
        return {p.claims.classroom: p.name for p in self.members() if p.claims.role is Role.POINT}

    def known_points(self) -> dict[str, str]:
        """The lesson's points: timetabled ones, then any other point that came."""
        known = {c: c for c in self.room.info.points}
        for classroom, entry in self.attendance.items():
            if entry.role == Role.POINT.value:
                known[classroom] = entry.name
        known.update(self._present_points())
        return known

    def _drop_hand(self, classroom: str) -> bool:
        before = len(self.hands)
        self.hands = [h for h in self.hands if h.classroom != classroom]
        return len(self.hands) != before

    def _release(self, *, reason: str) -> None:
        classroom = self.called_on
        self.called_on = self.called_on_since = None
        self.record("call_off", classroom=classroom, reason=reason)
        self.room.router.resubscribe()

    async def _set_muted(
        self, who: Participant, message: dict[str, Any], muted: bool
    ) -> dict[str, Any]:
        if who.claims.role is Role.TUTOR:
            # The point's own teacher silences (or opens) its own classroom only.
            classroom = who.claims.classroom
            if message.get("classroom") not in (None, classroom):
                raise SignallingError("forbidden", "a tutor mutes its own classroom only")
        else:
            self._require(who, Role.MASTER, "mute or unmute a teaching point")
            classroom = self._point_field(message)
        if self.phase is Phase.ENDED:
            raise SignallingError("lesson_ended", "this lesson has ended")
        if classroom not in self.known_points():
            raise SignallingError("unknown_point", f"{classroom!r} is not a point of this lesson")
        action = "mute" if muted else "unmute"
        if (classroom in self.muted) == muted:
            return self._done(action)
        if muted:
            self.muted.add(classroom)
        else:
            self.muted.discard(classroom)
        self.record("muted" if muted else "unmuted", classroom=classroom, by=who.claims.role.value)
        self.room.router.resubscribe()
        await self._announce({"kind": "muted" if muted else "unmuted", "classroom": classroom})
        return self._done(action)

    def _set_phase(self, phase: Phase, *, by: str) -> None:
        now = self.clock()
        self.phase = phase
        if phase is Phase.LIVE:
            self.started_at = now
            self.record("lesson_started", by=by)
        else:
            self.ended_at = now
            if self.called_on is not None:
                self._release(reason="ended")
            self.hands = []
            self.record("lesson_ended", by=by)
        self.room.router.resubscribe()
        # The timetable changes the phase from a synchronous tick: announce in the background.
        self.announce_soon({"kind": f"lesson_{phase.value}", "by": by})
        if phase is Phase.ENDED:
            reason = {"timetable": "timetable", ROOM_CLOSED: "closed"}.get(by, "master")
            self._tell_end(reason, by)

    def announce_soon(self, event: dict[str, Any]) -> None:
        """Announce from synchronous code (a tick, a router callback) in the background."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: nobody is connected to tell
        task = asyncio.ensure_future(self._announce(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _tell_end(self, reason: str, by: str) -> None:
        """Tell the end listeners once per lesson (the archiver finalises the recording)."""
        if self._end_told:
            return
        self._end_told = True
        end = LessonEnd(
            room=self.room.id,
            title=self.room.info.title,
            reason=reason,
            by=by,
            started_at=self.started_at,
            ended_at=self.ended_at if self.ended_at is not None else self.clock(),
        )
        for listener in list(self.end_listeners):
            try:
                listener(end)
            except Exception:
                log.exception("lesson-end listener failed for %s", self.room.id)

    def record(self, kind: str, **fields: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"{kind!r} is not a timeline event kind")
        now = self.clock()
        fields["wall"] = round(now, 3)
        if self._timeline is not None:
            self._timeline.append(now - self.room.info.opened_at, kind, fields)
        for listener in list(self.listeners):
            try:
                listener(kind, dict(fields))
            except Exception:
                log.exception("classroom listener failed on %s", kind)

    def _restore(self, path: Path) -> None:
        """A restarted server picks the lesson's phase up from its timeline."""
        for event in read_timeline(path):
            wall = event.get("wall")
            if event.kind == "lesson_started":
                self.phase, self.started_at = Phase.LIVE, wall
            elif event.kind == "lesson_ended":
                # Told before the restart: the end is not told twice.
                self.phase, self.ended_at, self._end_told = Phase.ENDED, wall, True

    async def _announce(self, event: dict[str, Any]) -> None:
        upstream = self.upstream
        for p in self.members():
            # On an edge the state is the origin's (the last it sent), not this copy's.
            state = self.state(p.claims) if upstream is None else upstream.state_for(p)
            if state is not None:
                await _send(p, {"type": "classroom", "event": event, "state": state})

    @staticmethod
    def _done(action: str) -> dict[str, Any]:
        return {"type": "done", "action": action}


async def _send(participant: Participant, message: dict[str, Any]) -> None:
    try:
        await participant.send_json(message)
    except ConnectionError:
        pass


Handler = Callable[[Classroom, "Participant", dict[str, Any]], Awaitable[dict[str, Any]]]

# What a participant's own node answers even on an edge: what that node's router sends it.
LOCAL_ACTIONS = frozenset({"receive_mode", "watch_program"})


def _at_origin(kind: str, handler: Handler) -> Handler:
    """On an edge node the action is the origin's to take: forwarded, its answer returned."""

    async def run(c: Classroom, who: Participant, message: dict[str, Any]) -> dict[str, Any]:
        if c.upstream is not None:
            return await c.upstream.action(who, kind, message)
        return await handler(c, who, message)

    return run


# Signalling message type -> action. The signalling session dispatches every type it does
# not know itself through this table (docs/protocol.md §6).
ACTIONS: dict[str, Handler] = {
    "lesson_start": Classroom.start,
    "lesson_end": Classroom.end,
    "hand_raise": Classroom.raise_hand,
    "hand_lower": Classroom.lower_hand,
    "call_on": Classroom.call_on,
    "call_off": Classroom.call_off,
    "mute": Classroom.mute,
    "unmute": Classroom.unmute,
    "chat": Classroom.send_chat,
    "classroom_state": Classroom.get_state,
    "agent_state": Classroom.report_device,
    # The live director (media_server/director.py).
    "director": lambda c, who, m: c.director().command(who, m),
    "receive_mode": lambda c, who, m: c.director().set_receive_mode(who, m),
    "watch_program": lambda c, who, m: c.director().watch_program(who, m),
}
HANDLERS: dict[str, Handler] = {
    kind: handler if kind in LOCAL_ACTIONS else _at_origin(kind, handler)
    for kind, handler in ACTIONS.items()
}


def supervision(room: Room) -> dict[str, Any]:
    """One lesson as a county supervisor sees it: phase, points present, each link's quality.

    Uplink loss is what the SFU lost of a point's published media (before repair); the
    downlink figures are from the point's receiver reports (RTT, fraction lost).
    """
    classroom = room.classroom
    now = classroom.clock()
    points = []
    for entry in classroom.state(_SUPERVISOR)["points"]:
        members = [
            p for p in room.participants.values() if p.claims.classroom == entry["classroom"]
        ]
        packets = lost = 0
        rtts: list[float] = []
        down_loss: list[float] = []
        for p in members:
            for source in p.sources.values():
                for up in source.layers.values():
                    packets += up.stats.packets
                    lost += up.stats.lost
            for slot in p.subscriber.slots:
                down = slot.downtrack
                if down is None:
                    continue
                if down.stats.rtt_ms is not None:
                    rtts.append(down.stats.rtt_ms)
                if down.stats.fraction_lost is not None:
                    down_loss.append(down.stats.fraction_lost)
        points.append(
            {
                **entry,
                "uplink_loss_pct": round(100 * lost / (packets + lost), 2) if packets else None,
                "rtt_ms": round(max(rtts), 1) if rtts else None,
                "downlink_loss_pct": round(100 * max(down_loss), 2) if down_loss else None,
                "sources": sorted({s for p in members for s in p.sources}),
                "device": agent_state.summary(classroom.devices.get(entry["classroom"]), now),
            }
        )
    return {
        "room": room.id,
        "title": room.info.title,
        "master": room.info.master,
        "phase": classroom.phase.value,
        "started_at": classroom.started_at,
        "starts_at": classroom.starts_at,
        "ends_at": classroom.ends_at,
        "participants": len(room.participants),
        "master_present": any(p.claims.role is Role.MASTER for p in room.participants.values()),
        "points": points,
        "master_device": agent_state.summary(classroom.devices.get(room.info.master), now),
        "now": now,
    }


_SUPERVISOR = Claims(
    room="*", classroom="", role=Role.ADMIN, subject="supervisor", name="", expires_at=0
)
