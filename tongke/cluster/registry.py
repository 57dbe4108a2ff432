"""The node registry and room placement in Redis (redis-py asyncio).

Keys under `<cluster_name>:` — `node:<id>` a node's announcement (JSON, expires after the
heartbeat TTL), `nodes` the set of ids ever announced (pruned as keys expire), `rooms`
room -> owning node id, `facts` room -> the lesson's facts (JSON), and the pub/sub
channel `events` (room_opened, room_closed, room_moved).

Redis is where nodes agree, never where media goes: every call here has a short timeout
and raises `RegistryUnavailable`, which callers log and ride out with what they knew.
Nothing in Redis is trusted: a malformed entry is logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, fields
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from media_server.room import LessonInfo
from tongke.cluster.nodes import BadNode, NodeInfo

log = logging.getLogger(__name__)

# Atomic and sticky: the first claim of a room wins, every later one learns the owner.
_CLAIM = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner then return owner end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return ARGV[2]
"""
# Compare-and-set: move a room off a node only if nobody moved it already.
_MOVE = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner == false or owner == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return ARGV[3]
end
return owner
"""
# Forget a node's announcement only if it is still that instance's.
_DROP = """
local raw = redis.call('GET', KEYS[1])
if raw and string.find(raw, ARGV[1], 1, true) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class RegistryUnavailable(Exception):
    """Redis did not answer, or answered with an error."""


class Outage:
    """Logs a dependency going away once (and every 30 s after), and its return once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self._last_log = 0.0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self._last_log = now
            log.warning(
                "%s unavailable (%s); lessons go on with what this node knows",
                self.what,
                exc or type(exc).__name__,
            )
        elif now - self._last_log >= 30:
            self._last_log = now
            log.warning("%s still unavailable after %.0f s (%s)", self.what, now - self.since, exc)

    def ok(self) -> None:
        if self.since is not None:
            log.warning("%s is back after %.1f s", self.what, time.monotonic() - self.since)
            self.since = None

    @property
    def down(self) -> bool:
        return self.since is not None


def lesson_from_json(raw: str | bytes) -> LessonInfo:
    """A lesson's facts as another node stored them; ValueError when they are not."""
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("room"), str):
        raise ValueError("not a lesson")
    known = {f.name for f in fields(LessonInfo)}
    info = LessonInfo(**{k: v for k, v in data.items() if k in known})
    if not isinstance(info.points, list) or not all(isinstance(p, str) for p in info.points):
        raise ValueError("points must be a list of classroom ids")
    for key in ("title", "master"):
        if not isinstance(getattr(info, key), str):
            raise ValueError(f"{key} must be text")
    for key in ("opened_at", "starts_at", "ends_at"):
        value = getattr(info, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{key} must be a time")
    return info


class Registry:
    def __init__(self, url: str, *, prefix: str = "tongke", ttl_s: float = 3.0) -> None:
        self.url = url
        self.prefix = prefix
        self.ttl_s = ttl_s
        # Short timeouts: a Redis that does not answer must not hold up a join for long.
        # One quick retry: after Redis restarts, each pooled connection fails once.
        self.redis = aioredis.from_url(
            url,
            decode_responses=True,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
            retry_on_error=[RedisConnectionError],
        )
        self.outage = Outage(f"Redis at {_safe_url(url)}")
        self._claim = self.redis.register_script(_CLAIM)
        self._move = self.redis.register_script(_MOVE)
        self._drop = self.redis.register_script(_DROP)
        # (node id, instance) pairs already reported as stale or duplicate: log once.
        self._reported: set[tuple[str, str, str]] = set()

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def channel(self) -> str:
        return self.key("events")

    async def _call(self, what: Awaitable[Any]) -> Any:
        try:
            result = await asyncio.wait_for(what, timeout=2.0)
        except (RedisError, OSError, TimeoutError) as exc:
            self.outage.failed(exc)
            raise RegistryUnavailable(str(exc) or type(exc).__name__) from exc
        self.outage.ok()
        return result

    async def close(self) -> None:
        await self.redis.aclose()

    # -- nodes ----------------------------------------------------------------------

    async def announce(self, node: NodeInfo) -> bool:
        """Heartbeat: (re)write our announcement. False when another live process holds our id."""
        key = self.key("node", node.id)
        raw = await self._call(self.redis.get(key))
        if raw is not None:
            try:
                current = NodeInfo.from_json(raw)
            except BadNode as exc:
                log.warning("node %s: replacing an unreadable announcement (%s)", node.id, exc)
            else:
                if current.instance != node.instance:
                    self._report(
                        "duplicate",
                        node.id,
                        current.instance,
                        "node id %r announced twice: %s (instance %s) is live, so this process "
                        "(%s, instance %s) stays out of the registry; give each node its own "
                        "node_id",
                        node.id,
                        current.url,
                        current.instance,
                        node.url,
                        node.instance,
                    )
                    return False
        node.at = time.time()
        pipe = self.redis.pipeline()
        pipe.set(key, node.to_json(), px=int(self.ttl_s * 1000))
        pipe.sadd(self.key("nodes"), node.id)
        await self._call(pipe.execute())
        return True

    async def withdraw(self, node: NodeInfo) -> None:
        await self._call(self._drop(keys=[self.key("node", node.id)], args=[node.instance]))

    async def nodes(self) -> list[NodeInfo]:
        """Live nodes. Expired ones leave the set; unreadable or stale ones are skipped."""
        ids = sorted(await self._call(self.redis.smembers(self.key("nodes"))))
        if not ids:
            return []
        raws = await self._call(self.redis.mget([self.key("node", i) for i in ids]))
        live, gone = [], []
        now = time.time()
        for node_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                gone.append(node_id)
                continue
            try:
                node = NodeInfo.from_json(raw)
            except BadNode as exc:
                self._report(
                    "bad",
                    node_id,
                    str(raw)[:40],
                    "node %r: bad announcement ignored (%s)",
                    node_id,
                    exc,
                )
                continue
            if node.id != node_id:
                self._report(
                    "bad", node_id, node.id, "node key %r holds node %r: ignored", node_id, node.id
                )
                continue
            # A heartbeat older than a few TTLs (a node whose clock or writes lag) is not
            # a live node, whatever Redis's expiry says.
            if now - node.at > max(3 * self.ttl_s, 10.0):
                self._report(
                    "stale",
                    node.id,
                    node.instance,
                    "node %r: stale heartbeat (%.0f s old) ignored",
                    node.id,
                    now - node.at,
                )
                continue
            live.append(node)
        if gone:
            with contextlib.suppress(RegistryUnavailable):
                await self._call(self.redis.srem(self.key("nodes"), *gone))
        return live

    def _report(self, kind: str, node_id: str, detail: str, message: str, *args: object) -> None:
        if (kind, node_id, detail) not in self._reported:
            self._reported.add((kind, node_id, detail))
            log.error(message, *args)

    # -- placement ------------------------------------------------------------------

    async def owner(self, room: str) -> str | None:
        owner: str | None = await self._call(self.redis.hget(self.key("rooms"), room))
        return owner

    async def claim(self, room: str, node_id: str) -> str:
        owner: str = await self._call(self._claim(keys=[self.key("rooms")], args=[room, node_id]))
        return owner

    async def move(self, room: str, from_node: str, to_node: str) -> str:
        owner: str = await self._call(
            self._move(keys=[self.key("rooms")], args=[room, from_node, to_node])
        )
        if owner == to_node:
            await self.publish({"type": "room_moved", "room": room, "node": to_node})
        return owner

    async def placements(self) -> dict[str, str]:
        rooms: dict[str, str] = await self._call(self.redis.hgetall(self.key("rooms")))
        return rooms

    # -- facts and events -------------------------------------------------------------

    async def put_facts(self, info: LessonInfo) -> None:
        await self._call(
            self.redis.hset(
                self.key("facts"), info.room, json.dumps(asdict(info), ensure_ascii=False)
            )
        )
        await self.publish({"type": "room_opened", "room": info.room})

    async def facts(self, room: str) -> LessonInfo | None:
        raw = await self._call(self.redis.hget(self.key("facts"), room))
        if raw is None:
            return None
        try:
            return lesson_from_json(raw)
        except (ValueError, TypeError) as exc:
            log.error("lesson %r: unreadable facts in Redis ignored (%s)", room, exc)
            return None

    async def put_phase(self, room: str, kind: str, wall: float) -> None:
        """The lesson's last phase event, for a node on another host that takes it over."""
        await self._call(
            self.redis.hset(self.key("phase"), room, json.dumps({"kind": kind, "wall": wall}))
        )

    async def keep_phase(self, room: str, kind: str, wall: float) -> None:
        """Heartbeat: put the phase back if Redis lost it (restarted empty)."""
        await self._call(
            self.redis.hsetnx(self.key("phase"), room, json.dumps({"kind": kind, "wall": wall}))
        )

    async def phase(self, room: str) -> tuple[str, float] | None:
        raw = await self._call(self.redis.hget(self.key("phase"), room))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            kind, wall = data["kind"], data["wall"]
            if kind not in ("lesson_started", "lesson_ended") or isinstance(wall, bool):
                raise ValueError(kind)
            return kind, float(wall)
        except (ValueError, TypeError, KeyError) as exc:
            log.error("lesson %r: unreadable phase in Redis ignored (%s)", room, exc)
            return None

    async def forget_room(self, room: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hdel(self.key("rooms"), room)
        pipe.hdel(self.key("facts"), room)
        pipe.hdel(self.key("phase"), room)
        await self._call(pipe.execute())
        await self.publish({"type": "room_closed", "room": room})

    async def publish(self, event: dict[str, Any]) -> None:
        await self._call(self.redis.publish(self.channel, json.dumps(event)))

    async def listen(self, handle: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Deliver the channel's events until cancelled, resubscribing after outages."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self.outage.ok()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        event = json.loads(message["data"])
                        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                            raise ValueError("not an event object")
                    except ValueError as exc:
                        log.error("cluster event ignored: %s (%r)", exc, str(message["data"])[:80])
                        continue
                    try:
                        await handle(event)
                    except Exception:
                        log.exception("cluster event %s failed", event.get("type"))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.outage.failed(exc)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError) as exc:
                    log.debug("closing the event subscription: %r", exc)
            await asyncio.sleep(1.0)


def _safe_url(url: str) -> str:
    """The Redis URL without its password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
