"""What the registry knows of a media node, and reading it back without trusting it."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class BadNode(ValueError):
    """A registry entry that is not a node announcement we can use."""


@dataclass
class NodeInfo:
    """A media node: where to reach it and how busy it is."""

    id: str
    url: str
    # A new value each time a node process starts: tells a restarted node from the old
    # one, and a second process that announces itself under the same id from the first.
    instance: str
    host: str = ""
    rooms: int = 0
    participants: int = 0
    pid: int = 0
    # When the node last said this (its own clock, Unix seconds).
    at: float = field(default_factory=time.time)

    @property
    def load(self) -> tuple[int, int]:
        return (self.participants, self.rooms)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> NodeInfo:
        try:
            data: Any = json.loads(raw)
        except ValueError as exc:
            raise BadNode(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadNode("not an object")
        for key in ("id", "url", "instance"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise BadNode(f"{key!r} missing or not a string")
        if not data["url"].startswith(("http://", "https://")):
            raise BadNode(f"url {data['url']!r} is not http(s)")
        for key in ("rooms", "participants", "pid"):
            value = data.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BadNode(f"{key!r} must be a count")
        at = data.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise BadNode("'at' must be a time")
        host = data.get("host", "")
        return cls(
            id=data["id"],
            url=data["url"].rstrip("/"),
            instance=data["instance"],
            host=host if isinstance(host, str) else "",
            rooms=data.get("rooms", 0),
            participants=data.get("participants", 0),
            pid=data.get("pid", 0),
            at=float(at),
        )


def least_loaded(nodes: list[NodeInfo], pending: dict[str, int] | None = None) -> NodeInfo:
    """The node with the fewest participants (then rooms), counting placements in flight."""
    pending = pending or {}
    return min(nodes, key=lambda n: (n.participants + pending.get(n.id, 0), n.rooms, n.id))
