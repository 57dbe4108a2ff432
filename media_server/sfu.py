"""The SFU service: rooms, sessions and how PeerConnections are made."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiortc import RTCConfiguration, RTCPeerConnection

from media_server import guard
from media_server.room import Rooms
from media_server.uptrack import SFU_LATENCY

if TYPE_CHECKING:
    from media_server.signalling import Session


class Sfu:
    def __init__(self, *, secret: str, state_dir: Path | None, max_message_bytes: int) -> None:
        guard.install()
        self.secret = secret
        self.max_message_bytes = max_message_bytes
        self.rooms = Rooms(state_dir / "rooms.json" if state_dir is not None else None)
        self.sessions: set[Session] = set()
        self.peer_connections: set[RTCPeerConnection] = set()

    def new_peer_connection(self) -> RTCPeerConnection:
        # No STUN/TURN: the server's host candidates are what clients connect to.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.peer_connections.add(pc)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState == "closed":
                self.peer_connections.discard(pc)

        return pc

    def stats(self) -> dict[str, Any]:
        rooms = {}
        forwarded = 0
        for room in self.rooms.rooms.values():
            tracks = []
            for source in room.sources():
                for up in source.layers.values():
                    tracks.append(
                        {
                            "track": up.track_id,
                            "codec": up.codec,
                            "packets": up.stats.packets,
                            "lost": up.stats.lost,
                            "recovered": up.stats.recovered,
                            "keyframes": up.stats.keyframes,
                            "subscribers": len(up.downtracks),
                        }
                    )
            down = nacks = retransmitted = kf_requests = 0
            for p in room.participants.values():
                for slot in p.subscriber.slots:
                    if slot.downtrack is not None:
                        down += slot.downtrack.stats.packets
                        nacks += slot.downtrack.stats.nacks
                        retransmitted += slot.downtrack.stats.retransmitted
                        kf_requests += slot.downtrack.stats.keyframe_requests
            forwarded += down
            rooms[room.id] = {
                "participants": len(room.participants),
                "tracks": tracks,
                "packets_forwarded": down,
                "nacks_received": nacks,
                "packets_retransmitted": retransmitted,
                "keyframe_requests": kf_requests,
            }
        return {
            "rooms": rooms,
            "packets_forwarded": forwarded,
            "sessions": len(self.sessions),
            "peer_connections": len(self.peer_connections),
            "tasks": len(asyncio.all_tasks()),
            "latency_ms": {
                "p50": SFU_LATENCY.percentile_ms(0.5),
                "p99": SFU_LATENCY.percentile_ms(0.99),
            },
            **guard.snapshot(),
        }

    async def close(self) -> None:
        for session in list(self.sessions):
            await session.ws.close()
        await self.rooms.close_all()
