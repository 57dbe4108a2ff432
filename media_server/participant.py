"""One connected client in a room: its token, its two PeerConnections, its sources."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCPeerConnection

from media_server.publisher import POINT_PUBLISH_START_BPS, PUBLISH_START_BPS, Publisher
from media_server.source import MediaSource
from media_server.subscriber import Subscriber
from media_server.uptrack import UpTrack
from tongke.tokens import Claims, Role

log = logging.getLogger(__name__)


# Where a downlink estimate starts, by who is receiving (the provincial policy floors):
# a teaching point has 2-5 Mbit/s, the master classroom and the county's offices an
# urban line of 10 Mbit/s. The estimate then follows what the receiver reports.
POINT_START_BPS = 2_500_000
URBAN_START_BPS = 8_000_000


def initial_downlink_bps(role: Role) -> int:
    return POINT_START_BPS if role is Role.POINT else URBAN_START_BPS


def initial_uplink_bps(role: Role) -> int:
    return POINT_PUBLISH_START_BPS if role is Role.POINT else PUBLISH_START_BPS


class Participant:
    def __init__(
        self,
        *,
        participant_id: str,
        claims: Claims,
        name: str,
        send_json: Callable[[dict[str, Any]], Awaitable[None]],
        pc_factory: Callable[[], RTCPeerConnection],
        on_tracks: Callable[[Participant, list[UpTrack], list[UpTrack]], None],
        adaptive: bool = True,
        audio_red: bool = True,
    ) -> None:
        self.id = participant_id
        self.claims = claims
        self.name = name
        self.send_json = send_json
        self.sources: dict[str, MediaSource] = {}
        self._pc_factory = pc_factory
        self.publisher = Publisher(
            track_prefix=participant_id,
            on_tracks=lambda added, removed: on_tracks(self, added, removed),
            pc_factory=self._watched_pc,
            send_json=send_json,
            round_trip_ms=self._round_trip_ms,
            initial_bps=initial_uplink_bps(claims.role),
        )
        self.subscriber = Subscriber(
            participant=participant_id,
            send_json=send_json,
            pc_factory=self._watched_pc,
            adaptive=adaptive,
            audio_red=audio_red,
            initial_bps=initial_downlink_bps(claims.role),
        )
        self.subscriber.uplink_queue_ms = self._uplink_queue_ms
        self.closed = False
        # Set by the signalling session: tells the client it was replaced, closes it.
        self.on_replaced: Callable[[], Awaitable[None]] | None = None
        # Set by the signalling session: a media path died; closing the session makes
        # the client rejoin (its own recovery) instead of sitting "connected" and silent.
        self.on_media_failed: Callable[[str], Awaitable[None]] | None = None

    def _round_trip_ms(self) -> float | None:
        bandwidth = self.subscriber.bandwidth
        return bandwidth.estimator.rtt_ms if bandwidth is not None else None

    def _uplink_queue_ms(self) -> float:
        delay = self.publisher.uplink_delay
        return delay.estimate.queue_ms if delay is not None else 0.0

    def _watched_pc(self) -> RTCPeerConnection:
        pc = self._pc_factory()

        @pc.on("connectionstatechange")
        async def _state() -> None:
            current = pc is self.publisher.pc or pc is self.subscriber.pc
            if pc.connectionState in ("failed", "closed") and current and not self.closed:
                which = "publish" if pc is self.publisher.pc else "subscribe"
                log.info("participant %s: %s connection %s", self.id, which, pc.connectionState)
                if self.on_media_failed is not None:
                    await self.on_media_failed(which)

        return pc

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "classroom": self.claims.classroom,
            "name": self.name,
            "role": self.claims.role.value,
            "sources": sorted(self.sources),
        }

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.publisher.close()
        await self.subscriber.close()
