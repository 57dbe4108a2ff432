"""A room's router: what is published, who receives what, and the packet taps.

The router is the one owner of a lesson's media wiring (as mediasoup's Router and
LiveKit's room do): publishers' tracks are grouped into sources here, the receive policy
decides each participant's sources, and taps (the recorder, a relay to another node)
see every source come and go and attach packet sinks to it. Participants only ask; the
router applies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from media_server.downtrack import DownTrack
from media_server.sink import PacketSink
from media_server.source import SOURCE_LABELS, MediaSource
from media_server.uptrack import UpTrack
from tongke.tokens import Role

if TYPE_CHECKING:
    from media_server.participant import Participant

log = logging.getLogger(__name__)


class RouterTap(Protocol):
    """Sees every source of a room come and go (a recorder, a relay)."""

    def source_added(self, source: MediaSource) -> None: ...

    def source_removed(self, source: MediaSource) -> None: ...


Policy = Callable[["Participant", list[MediaSource]], list[MediaSource]]


def default_policy(viewer: Participant, sources: list[MediaSource]) -> list[MediaSource]:
    """What one participant receives.

    A teaching point's downlink is 2-5 Mbit/s: it receives the master classroom, not
    the other points. The master classroom, observers and recorders receive everyone.
    """
    if viewer.claims.role is not Role.POINT:
        return sources
    return [s for s in sources if s.role is not Role.POINT]


class Router:
    def __init__(self) -> None:
        self.participants: dict[str, Participant] = {}
        self.policy: Policy = default_policy
        self._taps: list[RouterTap] = []
        self._sinks: list[DownTrack] = []
        # Sources no local participant publishes: the director's program, sources relayed
        # from another node. Their owner adds, re-layers and removes them here.
        self._detached: list[MediaSource] = []

    # -- sources ------------------------------------------------------------------------

    def sources(self) -> list[MediaSource]:
        own = [s for p in self.participants.values() for s in p.sources.values()]
        return own + self._detached if self._detached else own

    def sources_for(self, viewer: Participant) -> list[MediaSource]:
        return [s for s in self.policy(viewer, self.sources()) if s.participant != viewer.id]

    def publish(
        self, participant: Participant, added: list[UpTrack], removed: list[UpTrack]
    ) -> None:
        """Group a publisher's new and removed layers into its sources and re-route."""
        gone: list[MediaSource] = []
        new: list[MediaSource] = []
        changed: set[MediaSource] = set()
        for up in removed:
            source = participant.sources.get(up.source)
            if source is None:
                continue
            source.layers = {k: v for k, v in source.layers.items() if v is not up}
            changed.add(source)
            if not source.layers:
                del participant.sources[up.source]
                gone.append(source)
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
                    role=participant.claims.role,
                )
                participant.sources[up.source] = source
                new.append(source)
            source.layers = {**source.layers, up.layer: up}
            changed.add(source)
        if not changed:
            return
        self._reselect(changed)
        for source in gone:
            self._source_gone(source)
        for source in new:
            for tap in list(self._taps):
                tap.source_added(source)
        self.resubscribe()

    def _reselect(self, sources: set[MediaSource]) -> None:
        """Let subscriptions of sources that gained or lost layers choose again."""
        for p in self.participants.values():
            for slot in p.subscriber.slots:
                if slot.downtrack is not None and slot.source in sources:
                    slot.downtrack.reselect()
        for down in self._sinks:
            if down.source in sources:
                down.reselect()

    def _source_gone(self, source: MediaSource) -> None:
        for tap in list(self._taps):
            tap.source_removed(source)
        for down in [d for d in self._sinks if d.source is source]:
            self.detach_sink(down)

    # -- sources without a local publisher -----------------------------------------------

    def add_source(self, source: MediaSource) -> None:
        """Route a source that no participant here publishes (`source.participant` names
        its owner, e.g. "director" or a relay); taps see it like any other."""
        if source in self._detached:
            return
        self._detached.append(source)
        for tap in list(self._taps):
            tap.source_added(source)
        self.resubscribe()

    def set_layers(self, source: MediaSource, layers: dict[str, UpTrack]) -> None:
        """Give a detached source other layers (the director cutting to another camera,
        a relay's layer arriving): every subscription moves at the new layer's next
        keyframe, and the outgoing stream stays continuous."""
        source.layers = dict(layers)
        self._reselect({source})

    def remove_source(self, source: MediaSource) -> None:
        if source not in self._detached:
            return
        self._detached.remove(source)
        self._source_gone(source)
        self.resubscribe()

    # -- participants ---------------------------------------------------------------------

    def add(self, participant: Participant) -> None:
        self.participants[participant.id] = participant
        participant.subscriber.update(self.sources_for(participant))

    def remove(self, participant: Participant) -> list[MediaSource]:
        """Forget a participant; returns the sources it took with it."""
        if self.participants.pop(participant.id, None) is None:
            return []
        gone = list(participant.sources.values())
        participant.sources.clear()
        for source in gone:
            self._source_gone(source)
        if gone:
            self.resubscribe()
        return gone

    def resubscribe(self) -> None:
        """Apply the policy to everyone (after a publish, a leave or a policy change)."""
        for p in self.participants.values():
            p.subscriber.update(self.sources_for(p))

    # -- taps and sinks -------------------------------------------------------------------

    def add_tap(self, tap: RouterTap) -> None:
        self._taps.append(tap)
        for source in self.sources():
            tap.source_added(source)

    def remove_tap(self, tap: RouterTap) -> None:
        if tap in self._taps:
            self._taps.remove(tap)

    def attach_sink(
        self,
        source: MediaSource,
        sink: PacketSink,
        *,
        ssrc: int,
        payload_type: int,
        layer: str | None = "h",
        first: bool = False,
    ) -> DownTrack:
        """Forward `source` (best layer at or below `layer`) into `sink` from its next
        keyframe on, as one continuous stream with our `ssrc` and `payload_type`.

        `first`: this sink gets each packet before every participant's DownTrack (a relay
        to another node, whose audience would otherwise wait behind the local fan-out)."""
        down = DownTrack(sink=sink, ssrc=ssrc, payload_type=payload_type, first=first)
        down.forwarder.pinned = layer
        self._sinks.append(down)
        down.bind(source)
        return down

    @property
    def tap_downtracks(self) -> list[DownTrack]:
        """The DownTracks into taps' sinks (a recorder, a relay), not to participants."""
        return list(self._sinks)

    def detach_sink(self, down: DownTrack) -> None:
        if down in self._sinks:
            self._sinks.remove(down)
        down.close()

    def close(self) -> None:
        for down in list(self._sinks):
            self.detach_sink(down)
        self._taps.clear()
