"""The SFU service: rooms, sessions and how PeerConnections are made."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection

from media_server import guard
from media_server.room import Rooms
from media_server.uptrack import SFU_LATENCY
from tongke import rtc_internals

if TYPE_CHECKING:
    from media_server.signalling import Session
    from tongke.turn import TurnSettings


class Sfu:
    def __init__(
        self,
        *,
        secret: str,
        state_dir: Path | None,
        max_message_bytes: int,
        adaptive: bool = True,
        rooms: Rooms | None = None,
        audio_red: bool = True,
    ) -> None:
        guard.install()
        # Estimation, allocation and pacing per subscriber; off only to measure their cost.
        self.adaptive = adaptive
        self.audio_red = audio_red
        rtc_internals.install()
        self.secret = secret
        self.max_message_bytes = max_message_bytes
        # A media worker (tongke/cluster) brings its own, not persisted: the front keeps
        # the room facts.
        self.rooms = rooms or Rooms(state_dir / "rooms.json" if state_dir is not None else None)
        self.sessions: set[Session] = set()
        self.peer_connections: set[RTCPeerConnection] = set()
        # TURN for clients behind UDP-blocking firewalls (issue 8 item 8, tongke/turn.py).
        self.turn: TurnSettings | None = None

    def new_peer_connection(self) -> RTCPeerConnection:
        # No STUN/TURN: the server's host candidates are what clients connect to.
        # max-bundle: with aiortc's default (balanced), a second transceiver of a kind
        # created before the first negotiation keeps a transport of its own that BUNDLE
        # never replaces, and its media silently never flows.
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
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
            taps = room.router.tap_downtracks
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
                            "keyframe_requests_sent": up.stats.keyframe_requests,
                            # Participants receiving it; a recorder or relay is a tap.
                            "subscribers": sum(1 for d in up.downtracks if d not in taps),
                            "taps": sum(1 for d in up.downtracks if d in taps),
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
            receiving = [
                {
                    "participant": p.id,
                    "classroom": p.claims.classroom,
                    "role": p.claims.role.value,
                    "downlink": p.subscriber.bandwidth.describe()
                    if p.subscriber.bandwidth is not None
                    else None,
                    "uplink": p.publisher.describe_uplink() if p.publisher.tracks else None,
                    "tracks": [
                        {
                            "mid": slot.transceiver.mid,
                            "track": slot.source.track_id if slot.source else None,
                            "packets": slot.downtrack.stats.packets if slot.downtrack else None,
                            "layer": slot.downtrack.current.layer
                            if slot.downtrack and slot.downtrack.current
                            else None,
                            "rtt_ms": slot.downtrack.stats.rtt_ms if slot.downtrack else None,
                            "retransmit_refused": slot.downtrack.stats.retransmit_refused
                            if slot.downtrack
                            else None,
                            "keyframe_requests": slot.downtrack.stats.keyframe_requests
                            if slot.downtrack
                            else None,
                            "keyframes_asked": slot.downtrack.stats.keyframes_asked
                            if slot.downtrack
                            else None,
                            "fraction_lost": slot.downtrack.stats.fraction_lost
                            if slot.downtrack
                            else None,
                        }
                        for slot in p.subscriber.slots
                    ],
                }
                for p in room.participants.values()
            ]
            rooms[room.id] = {
                "participants": len(room.participants),
                "receiving": receiving,
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
            "datagrams_dropped": dict(rtc_internals.DATAGRAM_DROPS),
            "handler_errors": dict(rtc_internals.HANDLER_ERRORS),
            **guard.snapshot(),
        }

    async def close(self) -> None:
        for session in list(self.sessions):
            await session.ws.close()
        await self.rooms.close_all()
