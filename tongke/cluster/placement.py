"""Which media node hosts a room: least loaded at first placement, sticky after.

`LocalPlacement` places on this host's workers (no Redis); `RedisPlacement` places on
every live node of the service through the registry, atomically, and rides out a Redis
outage with what it last knew. Both re-place a room whose node died or cannot be reached.

Cascade hook: `EDGE_POLICY`, when set (the relay's module sets it), is asked whether a
participant arriving at this host should be served by a local edge of the room's origin
instead of being proxied to the origin (an origin above its load threshold).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tongke.cluster.nodes import NodeInfo, least_loaded
from tongke.cluster.registry import Registry, RegistryUnavailable

log = logging.getLogger(__name__)


@dataclass
class Route:
    """Where a participant of a room goes: the origin, or an edge of it on this host."""

    origin: NodeInfo
    edge: NodeInfo | None = None

    @property
    def node(self) -> NodeInfo:
        return self.edge or self.origin


# (room, origin, this host's live nodes) -> a local node to serve as an edge, or None.
EdgePolicy = Callable[[str, NodeInfo, list[NodeInfo]], NodeInfo | None]
EDGE_POLICY: list[EdgePolicy] = []
# How long a node this front could not reach is passed over.
SUSPECT_S = 2.0


def load_threshold_policy(participants: int) -> EdgePolicy:
    """An edge on this host once the origin holds `participants` or more (config
    `edge_participants`); the least loaded of this host's other nodes serves it."""

    def policy(room: str, origin: NodeInfo, local: list[NodeInfo]) -> NodeInfo | None:
        if origin.participants < participants:
            return None
        others = [n for n in local if n.id != origin.id]
        return least_loaded(others) if others else None

    return policy


class Placement(Protocol):
    async def route(self, room: str, *, may_edge: bool = False) -> Route | None: ...

    async def owner(self, room: str) -> NodeInfo | None: ...

    async def failed(self, room: str, node: NodeInfo) -> None: ...

    async def closed(self, room: str) -> NodeInfo | None: ...

    async def describe(self) -> dict[str, Any]: ...


def with_edge(room: str, origin: NodeInfo, local: list[NodeInfo], may_edge: bool) -> Route:
    if not may_edge:
        return Route(origin=origin)
    for policy in EDGE_POLICY:
        edge = policy(room, origin, local)
        if edge is not None and edge.id != origin.id:
            return Route(origin=origin, edge=edge)
    return Route(origin=origin)


class LocalPlacement:
    """This host's workers only, in memory (the front is the one placer)."""

    def __init__(self, local: Callable[[], list[NodeInfo]]) -> None:
        self.local = local
        self.owners: dict[str, str] = {}
        # Placed since the last load report: so that a burst does not all land on one.
        self.pending: Counter[str] = Counter()
        # Workers the front could not reach, and since when: skipped for a moment, until
        # the pool has seen them exit (or answer again).
        self.suspects: dict[str, float] = {}

    def _live(self) -> dict[str, NodeInfo]:
        now = time.monotonic()
        self.suspects = {k: t for k, t in self.suspects.items() if now - t < SUSPECT_S}
        return {n.id: n for n in self.local() if n.id not in self.suspects}

    async def route(self, room: str, *, may_edge: bool = False) -> Route | None:
        live = self._live()
        current = self.owners.get(room)
        if current in live:
            return with_edge(room, live[current], list(live.values()), may_edge)
        if not live:
            return None
        node = least_loaded(list(live.values()), self.pending)
        self.pending[node.id] += 1
        if current is not None:
            log.warning("room %s re-placed from media node %s to %s", room, current, node.id)
        self.owners[room] = node.id
        return Route(origin=node)

    async def owner(self, room: str) -> NodeInfo | None:
        live = self._live()
        current = self.owners.get(room)
        return live.get(current) if current else None

    async def failed(self, room: str, node: NodeInfo) -> None:
        self.suspects[node.id] = time.monotonic()
        if self.owners.get(room) == node.id:
            del self.owners[room]

    def node_died(self, node: NodeInfo) -> None:
        moved = [room for room, owner in self.owners.items() if owner == node.id]
        for room in moved:
            del self.owners[room]
        if moved:
            log.warning("media node %s died; its rooms %s will be re-placed", node.id, moved)

    def loads_reported(self) -> None:
        self.pending.clear()

    async def closed(self, room: str) -> NodeInfo | None:
        node = await self.owner(room)
        self.owners.pop(room, None)
        return node

    async def describe(self) -> dict[str, Any]:
        return {
            "redis": False,
            "nodes": [vars(n) for n in self.local()],
            "rooms": dict(self.owners),
        }


class RedisPlacement:
    """Every live node of the service, placed through Redis."""

    def __init__(self, registry: Registry, local: Callable[[], list[NodeInfo]]) -> None:
        self.registry = registry
        self.local = local
        # What we last knew, for when Redis does not answer.
        self.known_nodes: dict[str, NodeInfo] = {}
        self.owners: dict[str, str] = {}
        self.pending: Counter[str] = Counter()
        # Nodes this front could not reach, and since when: not placed on for a TTL.
        self.suspects: dict[str, float] = {}
        self._nodes_at = 0.0

    async def _live(self) -> dict[str, NodeInfo]:
        now = time.monotonic()
        if now - self._nodes_at > 0.5:
            nodes = await self.registry.nodes()
            self.known_nodes = {n.id: n for n in nodes}
            self.pending.clear()
            self._nodes_at = now
        ttl = max(self.registry.ttl_s, SUSPECT_S)
        self.suspects = {k: t for k, t in self.suspects.items() if now - t < ttl}
        return {k: n for k, n in self.known_nodes.items() if k not in self.suspects}

    async def route(self, room: str, *, may_edge: bool = False) -> Route | None:
        try:
            live = await self._live()
            current = await self.registry.owner(room)
            if current in live:
                self.owners[room] = current
                return with_edge(room, live[current], self._local_live(live), may_edge)
            if not live:
                # Redis restarted empty and no heartbeat has come back yet, or every node
                # is suspect: this host's own nodes still serve.
                return self._without_redis(room)
            candidate = least_loaded(list(live.values()), self.pending)
            if current is None:
                got = await self.registry.claim(room, candidate.id)
            else:
                got = await self.registry.move(room, current, candidate.id)
                log.warning("room %s re-placed from node %s to %s", room, current, got)
            self.pending[got] += 1
            self.owners[room] = got
            node = live.get(got)
            if node is None:
                # Someone else placed it on a node we do not see yet: ask again.
                self._nodes_at = 0.0
                node = (await self._live()).get(got)
            return Route(origin=node) if node is not None else None
        except RegistryUnavailable:
            return self._without_redis(room)

    def _local_live(self, live: dict[str, NodeInfo]) -> list[NodeInfo]:
        local_ids = {n.id for n in self.local()}
        return [n for k, n in live.items() if k in local_ids]

    def _without_redis(self, room: str) -> Route | None:
        """Redis is down: the node we last knew, else one of this host's own."""
        current = self.owners.get(room)
        if current is not None and current in self.known_nodes and current not in self.suspects:
            return Route(origin=self.known_nodes[current])
        local = [n for n in self.local() if n.id not in self.suspects]
        if not local:
            return None
        node = least_loaded(local, self.pending)
        self.pending[node.id] += 1
        self.owners[room] = node.id
        log.warning(
            "no answer or no live node from Redis: room %s placed on this host's node %s",
            room,
            node.id,
        )
        return Route(origin=node)

    async def owner(self, room: str) -> NodeInfo | None:
        try:
            live = await self._live()
            current = await self.registry.owner(room)
        except RegistryUnavailable:
            current = self.owners.get(room)
            live = self.known_nodes
        return live.get(current) if current else None

    async def failed(self, room: str, node: NodeInfo) -> None:
        self.suspects[node.id] = time.monotonic()
        if self.owners.get(room) == node.id:
            del self.owners[room]

    def node_died(self, node: NodeInfo) -> None:
        """A local worker exited: drop its announcement at once instead of waiting a TTL."""
        self.suspects[node.id] = time.monotonic()
        task = asyncio.ensure_future(self._withdraw(node))
        _KEEP.add(task)
        task.add_done_callback(_KEEP.discard)

    async def _withdraw(self, node: NodeInfo) -> None:
        with contextlib.suppress(RegistryUnavailable):
            await self.registry.withdraw(node)

    async def closed(self, room: str) -> NodeInfo | None:
        node = await self.owner(room)
        self.owners.pop(room, None)
        try:
            await self.registry.forget_room(room)
        except RegistryUnavailable:
            log.warning("Redis unavailable: room %s closed here only", room)
        return node

    async def describe(self) -> dict[str, Any]:
        try:
            live = await self._live()
            rooms = await self.registry.placements()
        except RegistryUnavailable as exc:
            return {
                "redis": False,
                "error": str(exc),
                "nodes": [vars(n) for n in self.known_nodes.values()],
                "rooms": dict(self.owners),
            }
        return {"redis": True, "nodes": [vars(n) for n in live.values()], "rooms": rooms}


_KEEP: set[asyncio.Task[None]] = set()
