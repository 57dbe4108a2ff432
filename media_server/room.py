"""Rooms: one per lesson. Who is in it, what they publish, who receives what."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from media_server.classroom import Classroom, LessonEndListener
from media_server.director import Director
from media_server.participant import Participant
from media_server.router import Router
from media_server.source import MediaSource
from media_server.uptrack import UpTrack
from tongke.tokens import PUBLISHING_ROLES

log = logging.getLogger(__name__)


@dataclass
class LessonInfo:
    """What the server needs to open a lesson's room."""

    room: str
    title: str = ""
    master: str = ""
    points: list[str] = field(default_factory=list)
    opened_at: float = field(default_factory=time.time)
    # The timetabled start and end (Unix seconds) when the lesson is scheduled.
    starts_at: float | None = None
    ends_at: float | None = None


class Room:
    """A lesson's room: its participants' lifecycle and its router (media wiring)."""

    def __init__(
        self,
        info: LessonInfo,
        *,
        timeline_dir: Path | None = None,
        end_listeners: list[LessonEndListener] | None = None,
    ) -> None:
        self.info = info
        self.router = Router()
        self._ids = itertools.count(1)
        # Phase, hands, chat, call-on, mute, attendance; its policy says who receives what.
        self.classroom = Classroom(self, timeline_dir=timeline_dir)
        if end_listeners is not None:
            # Shared with Rooms: a listener added there later hears this room's end too.
            self.classroom.end_listeners = end_listeners
        # The program video, and which points receive it instead of the cameras.
        self.director = Director(self)
        self.router.policy = self.director.policy

    @property
    def id(self) -> str:
        return self.info.room

    @property
    def participants(self) -> dict[str, Participant]:
        return self.router.participants

    def next_participant_id(self) -> str:
        return f"p{next(self._ids)}"

    def sources(self) -> list[MediaSource]:
        return self.router.sources()

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self.info),
            "participants": [p.describe() for p in self.participants.values()],
            # What participants publish; the director's program is described on its own.
            "tracks": [s.describe() for s in self.sources() if s is not self.director.program],
            "director": self.director.describe(),
        }

    async def broadcast(self, message: dict[str, Any], *, skip: Participant | None = None) -> None:
        # One recipient that cannot be sent to (a closing socket, or anything else) must
        # not keep the message from everyone after it.
        for p in list(self.participants.values()):
            if p is not skip:
                try:
                    await p.send_json(message)
                except ConnectionError:
                    pass
                except Exception:
                    log.exception("broadcast to %s failed", p.id)

    async def add(self, participant: Participant) -> None:
        # A classroom agent that reconnects with its token replaces its stale session
        # (its old socket may not have timed out yet). Viewers sharing one link coexist.
        if participant.claims.role in PUBLISHING_ROLES:
            stale = [
                p
                for p in self.participants.values()
                if p.claims.subject == participant.claims.subject and p is not participant
            ]
            for old in stale:
                await self.remove(old)
                if old.on_replaced is not None:
                    await old.on_replaced()
        # The called-on classroom's picture is what the lesson is about while it speaks:
        # on a thin line it ranks with the teacher camera, not behind the board.
        participant.subscriber.focus = self.classroom.in_focus
        self.router.add(participant)
        await self.broadcast(
            {"type": "participant_joined", "participant": participant.describe()}, skip=participant
        )
        await self.classroom.joined(participant)

    async def remove(self, participant: Participant) -> None:
        if participant.id not in self.participants:
            return
        self.router.remove(participant)
        await participant.close()
        await self.broadcast({"type": "participant_left", "participant": participant.id})
        await self.classroom.left(participant)

    def on_tracks(
        self, participant: Participant, added: list[UpTrack], removed: list[UpTrack]
    ) -> None:
        self.router.publish(participant, added, removed)

    async def close(self, *, end_lesson: bool = True) -> None:
        """Close the room; `end_lesson=False` when the server only shuts down (a restarted
        server picks the lesson up again, so it has not ended)."""
        if end_lesson:
            self.classroom.room_closed()
        for p in list(self.participants.values()):
            await self.remove(p)
        self.director.close()
        self.router.close()
        self.classroom.close()


class Rooms:
    """Open rooms, persisted so that a restarted server still knows today's lessons."""

    def __init__(self, state_file: Path | None = None, *, timeline_dir: Path | None = None) -> None:
        self._state_file = state_file
        if timeline_dir is None and state_file is not None:
            timeline_dir = state_file.parent / "timelines"
        self._timeline_dir = timeline_dir
        self.rooms: dict[str, Room] = {}
        # Other packages (the scheduler) can tell us about lessons we were not told of.
        self.resolvers: list[Callable[[str], LessonInfo | None]] = []
        # Told of every room opened from now on (the server recorder, the cluster sharing
        # its facts), and awaited before a room is closed for good (not when the server
        # merely shuts down).
        self.opened: list[Callable[[Room], None]] = []
        self.closing: list[Callable[[Room], Awaitable[None]]] = []
        # Told once per lesson when it ends, however it ends (the archiver subscribes;
        # media_server/classroom.LessonEnd). Append to it; it is shared by every room.
        self.lesson_end_listeners: list[LessonEndListener] = []
        if state_file is not None and state_file.exists():
            for raw in json.loads(state_file.read_text()):
                info = LessonInfo(**raw)
                self.rooms[info.room] = Room(
                    info, timeline_dir=self._timeline_dir, end_listeners=self.lesson_end_listeners
                )

    def get(self, room_id: str) -> Room | None:
        room = self.rooms.get(room_id)
        if room is None:
            for resolve in self.resolvers:
                info = resolve(room_id)
                if info is not None:
                    return self.open(info)
        return room

    def open(self, info: LessonInfo) -> Room:
        room = self.rooms.get(info.room)
        if room is None:
            room = self.rooms[info.room] = Room(
                info, timeline_dir=self._timeline_dir, end_listeners=self.lesson_end_listeners
            )
            self._save()
            for opened in list(self.opened):
                opened(room)
        return room

    async def close(self, room_id: str) -> bool:
        room = self.rooms.get(room_id)
        if room is None:
            return False
        for closing in list(self.closing):
            try:
                await closing(room)
            except Exception:
                log.exception("closing room %s: a listener failed", room_id)
        if self.rooms.pop(room_id, None) is None:
            return False
        self._save()
        await room.close()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(room.close(end_lesson=False) for room in self.rooms.values()))

    def _save(self) -> None:
        if self._state_file is None:
            return
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps([asdict(r.info) for r in self.rooms.values()], ensure_ascii=False)
        )
        tmp.replace(self._state_file)
