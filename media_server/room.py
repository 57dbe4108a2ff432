"""Rooms: one per lesson. Who is in it, what they publish, who receives what."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from media_server.classroom import Classroom
from media_server.participant import Participant
from media_server.publisher import SignallingError
from media_server.source import SOURCE_LABELS, MediaSource
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
    def __init__(self, info: LessonInfo, *, timeline_dir: Path | None = None) -> None:
        self.info = info
        self.participants: dict[str, Participant] = {}
        self._ids = itertools.count(1)
        # Phase, hands, chat, call-on, mute, attendance; also owns the receive policy.
        self.classroom = Classroom(self, timeline_dir=timeline_dir)

    @property
    def id(self) -> str:
        return self.info.room

    def next_participant_id(self) -> str:
        return f"p{next(self._ids)}"

    def sources(self) -> list[MediaSource]:
        return [s for p in self.participants.values() for s in p.sources.values()]

    def sources_for(self, viewer: Participant) -> list[MediaSource]:
        """What one participant receives: the classroom's policy (call-on, mute, phase)."""
        may_receive = self.classroom.may_receive
        return [
            s
            for p in self.participants.values()
            for s in p.sources.values()
            if may_receive(viewer.claims, p.claims, s)
        ]

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self.info),
            "participants": [p.describe() for p in self.participants.values()],
            "tracks": [s.describe() for s in self.sources()],
        }

    async def broadcast(self, message: dict[str, Any], *, skip: Participant | None = None) -> None:
        for p in list(self.participants.values()):
            if p is not skip:
                try:
                    await p.send_json(message)
                except ConnectionError:
                    pass

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
        self.participants[participant.id] = participant
        await self.broadcast(
            {"type": "participant_joined", "participant": participant.describe()}, skip=participant
        )
        participant.subscriber.update(self.sources_for(participant))
        await self.classroom.joined(participant)

    async def remove(self, participant: Participant) -> None:
        if self.participants.pop(participant.id, None) is None:
            return
        had_sources = bool(participant.sources)
        participant.sources.clear()
        await participant.close()
        if had_sources:
            self.resubscribe()
        await self.broadcast({"type": "participant_left", "participant": participant.id})
        await self.classroom.left(participant)

    def on_tracks(
        self, participant: Participant, added: list[UpTrack], removed: list[UpTrack]
    ) -> None:
        for up in removed:
            source = participant.sources.get(up.source)
            if source is not None:
                source.layers = {k: v for k, v in source.layers.items() if v is not up}
                if not source.layers:
                    del participant.sources[up.source]
        for up in added:
            source = participant.sources.get(up.source)
            if source is None:
                source = MediaSource(
                    participant=participant.id,
                    classroom=participant.claims.classroom,
                    name=participant.name,
                    source=up.source,
                    kind=up.kind,
                    codec=up.codec,
                    label=up.label or SOURCE_LABELS.get(up.source, up.source),
                )
                participant.sources[up.source] = source
            elif source.codec != up.codec or source.kind != up.kind:
                raise SignallingError(
                    "bad_request", f"all layers of {up.source} must use one kind and codec"
                )
            source.layers = {**source.layers, up.layer: up}
        if added or removed:
            self._reselect(participant)
            self.resubscribe()

    def _reselect(self, publisher: Participant) -> None:
        """Let DownTracks of a source that gained or lost layers pick their layer again."""
        mine = set(publisher.sources.values())
        for p in self.participants.values():
            for slot in p.subscriber.slots:
                if slot.downtrack is not None and slot.source in mine:
                    slot.downtrack.set_max_layer(slot.downtrack.max_layer)

    def resubscribe(self) -> None:
        for p in self.participants.values():
            p.subscriber.update(self.sources_for(p))

    async def close(self) -> None:
        for p in list(self.participants.values()):
            await self.remove(p)
        self.classroom.close()


class Rooms:
    """Open rooms, persisted so that a restarted server still knows today's lessons."""

    def __init__(self, state_file: Path | None = None) -> None:
        self._state_file = state_file
        self._timeline_dir = state_file.parent / "timelines" if state_file is not None else None
        self.rooms: dict[str, Room] = {}
        # Other packages (the scheduler) can tell us about lessons we were not told of.
        self.resolvers: list[Callable[[str], LessonInfo | None]] = []
        if state_file is not None and state_file.exists():
            for raw in json.loads(state_file.read_text()):
                info = LessonInfo(**raw)
                self.rooms[info.room] = Room(info, timeline_dir=self._timeline_dir)

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
            room = self.rooms[info.room] = Room(info, timeline_dir=self._timeline_dir)
            self._save()
        return room

    async def close(self, room_id: str) -> bool:
        room = self.rooms.pop(room_id, None)
        if room is None:
            return False
        self._save()
        await room.close()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(room.close() for room in self.rooms.values()))

    def _save(self) -> None:
        if self._state_file is None:
            return
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps([asdict(r.info) for r in self.rooms.values()], ensure_ascii=False)
        )
        tmp.replace(self._state_file)
