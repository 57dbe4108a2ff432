"""Each classroom's link quality as the server sees it, now and over the last hour.

`classroom_quality` reads what the control loops already keep (the subscriber's
`SubscriberBandwidth.describe()`, DownTrack and UpTrack counters, the packet cache for
frame rates); it runs when someone asks (a scrape, the sampler), never per packet.
`QualityHistory` samples every classroom of every open lesson every few seconds into a
bounded ring (an hour), which the ops page draws and /metrics reports the latest of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tongke.tokens import Role

if TYPE_CHECKING:
    from media_server.participant import Participant
    from media_server.room import Room, Rooms

log = logging.getLogger(__name__)

HISTORY_S = 3600.0
# Classrooms, not viewers: whose link a supervisor answers for.
CLASSROOM_ROLES = frozenset({Role.MASTER, Role.POINT})


@dataclass(slots=True)
class Quality:
    """One classroom's links at one moment (None: not known yet)."""

    t: float
    estimate_bps: int | None  # downlink estimate (the worst of its connections)
    down_loss: float | None  # fraction the classroom reports losing of what we send
    up_loss: float | None  # fraction of its published media we lost since the last sample
    rtt_ms: float | None
    fps: float | None  # frame rate of the video it receives (0: nothing moving)
    paused: int  # video sources paused for it (bandwidth or by hand)
    forwarded_packets: int  # what it receives, cumulative (for the next interval)
    up_packets: int  # what it published, cumulative
    up_lost: int


_CUMULATIVE = frozenset({"forwarded_packets", "up_packets", "up_lost"})


def public(q: Quality) -> dict[str, Any]:
    """A sample as the ops page gets it (the running counters stay inside)."""
    return {k: v for k, v in asdict(q).items() if k not in _CUMULATIVE}


def _worst(values: Iterable[float | int | None], pick: Any) -> Any:
    known = [v for v in values if v is not None]
    return pick(known) if known else None


def classroom_quality(
    members: list[Participant], now: float, frame_rates: dict[int, float] | None = None
) -> Quality:
    """The quality of one classroom's connections (a classroom may have a device and a page).

    `frame_rates` (id of an UpTrack -> its frame rate) is shared by the callers that walk
    many classrooms, so each layer's packet cache is read once per walk.
    """
    frame_rates = {} if frame_rates is None else frame_rates
    links = [p.subscriber.bandwidth.describe() for p in members if p.subscriber.bandwidth]
    downtracks = [s.downtrack for p in members for s in p.subscriber.slots if s.downtrack]
    video = [d for d in downtracks if d.source is not None and d.source.kind == "video"]
    paused = sum(1 for d in video if d.forwarder.paused)
    rates = []
    for d in video:
        up = d.current
        if up is not None:
            if id(up) not in frame_rates:
                frame_rates[id(up)] = up.frame_rate()
            rates.append(frame_rates[id(up)])
    fps = max(rates) if rates else (0.0 if video else None)
    up_packets = up_lost = 0
    for p in members:
        for source in p.sources.values():
            for up in source.layers.values():
                up_packets += up.stats.packets
                up_lost += up.stats.lost
    return Quality(
        t=now,
        estimate_bps=_worst((link["estimate_bps"] for link in links), min),
        down_loss=_worst((link["loss"] for link in links), max),
        up_loss=None,
        rtt_ms=_worst((link["rtt_ms"] for link in links), max),
        fps=fps,
        paused=paused,
        forwarded_packets=sum(d.stats.packets for d in downtracks),
        up_packets=up_packets,
        up_lost=up_lost,
    )


def classrooms_of(room: Room) -> dict[str, tuple[str, list[Participant]]]:
    """classroom id -> (role, its participants) for the classrooms present in `room`."""
    out: dict[str, tuple[str, list[Participant]]] = {}
    for p in room.participants.values():
        if p.claims.role in CLASSROOM_ROLES:
            out.setdefault(p.claims.classroom, (p.claims.role.value, []))[1].append(p)
    return out


class QualityHistory:
    """A ring of samples per (lesson, classroom): the last hour at `interval_s`."""

    def __init__(self, rooms: Rooms, *, interval_s: float = 10.0) -> None:
        self.rooms = rooms
        self.interval_s = max(0.2, interval_s)
        self.samples: dict[tuple[str, str], deque[Quality]] = {}
        self.roles: dict[tuple[str, str], str] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def size(self) -> int:
        return max(2, int(HISTORY_S / self.interval_s))

    def sample(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        frame_rates: dict[int, float] = {}
        for room in list(self.rooms.rooms.values()):
            for classroom, (role, members) in classrooms_of(room).items():
                key = (room.id, classroom)
                ring = self.samples.get(key)
                if ring is None:
                    ring = self.samples[key] = deque(maxlen=self.size)
                self.roles[key] = role
                q = classroom_quality(members, now, frame_rates)
                if ring:
                    last = ring[-1]
                    got = q.up_packets - last.up_packets
                    lost = q.up_lost - last.up_lost
                    if got >= 0 and lost >= 0 and got + lost > 0:  # else: it reconnected
                        q.up_loss = round(lost / (got + lost), 4)
                ring.append(q)
        # A classroom that left keeps its history for the hour, then it goes.
        for key in [k for k, ring in self.samples.items() if now - ring[-1].t > HISTORY_S]:
            del self.samples[key]
            self.roles.pop(key, None)

    def latest(self) -> dict[tuple[str, str], Quality]:
        return {key: ring[-1] for key, ring in self.samples.items() if ring}

    def lesson(self, room: str, since: float = 0.0) -> list[dict[str, Any]]:
        """Every classroom's samples of one lesson (newer than `since`), for the ops page."""
        out = []
        for (room_id, classroom), ring in sorted(self.samples.items()):
            if room_id != room:
                continue
            points = [public(q) for q in ring if q.t > since]
            out.append(
                {
                    "classroom": classroom,
                    "role": self.roles.get((room_id, classroom)),
                    "samples": points,
                }
            )
        return out

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a lesson changing under us must not end the history
                log.exception("quality sampling failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ops-quality-history")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
