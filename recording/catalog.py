"""The replay catalog: who may see which replay, search, and signed expiring links.

Media links carry their signature in the path (`/replay-files/<exp>/<sig>/<lesson>/...`)
so that the relative URLs inside HLS playlists inherit it: one signature covers one
lesson's replay until it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recording.manifest import write_json_atomic
from recording.package import REPLAY_JSON
from tongke.tokens import Claims, Role

LINK_TTL_S = 6 * 3600
FILES_PREFIX = "/replay-files"
SEARCH_FIELDS = ("school", "subject", "grade", "teacher", "date")


def sign(secret: str, lesson: str, expires: int) -> str:
    mac = hmac.new(secret.encode(), f"replay:{lesson}:{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:18]).decode().rstrip("=")


def signed_base(
    secret: str, lesson: str, ttl_s: int = LINK_TTL_S, now: float | None = None
) -> tuple[str, int]:
    expires = int((now if now is not None else time.time()) + ttl_s)
    return f"{FILES_PREFIX}/{expires}/{sign(secret, lesson, expires)}/{lesson}/", expires


def check_signature(
    secret: str, lesson: str, expires: int, sig: str, now: float | None = None
) -> str | None:
    """None if the link is good, else the reason it is not."""
    if not hmac.compare_digest(sign(secret, lesson, expires), sig):
        return "bad_signature"
    if expires < (now if now is not None else time.time()):
        return "link_expired"
    return None


@dataclass
class Catalog:
    replays_root: Path

    def entries(self) -> list[dict[str, Any]]:
        out = []
        if not self.replays_root.is_dir():
            return out
        for d in self.replays_root.iterdir():
            if d.name.startswith(".") or not d.is_dir():
                continue
            try:
                entry = json.loads((d / REPLAY_JSON).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(entry, dict) and entry.get("lesson") == d.name:
                out.append(entry)
        out.sort(key=lambda e: e.get("started_at", 0), reverse=True)
        return out

    def entry(self, lesson: str) -> dict[str, Any] | None:
        return next((e for e in self.entries() if e["lesson"] == lesson), None)


# Who may watch a replay, set by the lesson's teacher or an admin:
#   schools  students of the lesson's schools (the master's and the points'); the default
#   county   every student of this server's schools
#   public   anyone, also without signing in
VISIBILITIES = ("schools", "county", "public")


def visibility(entry: dict[str, Any]) -> str:
    # `public` (older replays have only that) and `visibility` are kept in step.
    if entry.get("public"):
        return "public"
    value = entry.get("visibility")
    return str(value) if value in VISIBILITIES else "schools"


def set_visibility(replays_root: Path, lesson: str, value: str) -> bool:
    """Change who may watch a published replay (replay.json rewritten atomically);
    False when there is no such replay."""
    path = replays_root / lesson / REPLAY_JSON
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    entry["visibility"] = value
    entry["public"] = value == "public"
    write_json_atomic(path, entry)
    return True


def may_see(entry: dict[str, Any], claims: Claims | None) -> bool:
    """Admins see all; a room token sees its own lesson; students what the replay's
    visibility allows them; without a token, public replays only."""
    vis = visibility(entry)
    if vis == "public":
        return True
    if claims is None:
        return False
    if claims.role in (Role.ADMIN, Role.SCHEDULER) and claims.room == "*":
        return True
    if entry.get("lesson") == claims.room:
        return True
    if claims.role != Role.STUDENT:
        return False
    if vis == "county":
        return True
    return claims.classroom in (entry.get("schools") or [entry.get("school")])


def matches(entry: dict[str, Any], filters: dict[str, str]) -> bool:
    for key in SEARCH_FIELDS:
        want = filters.get(key, "").strip()
        if want and str(entry.get(key, "")).casefold() != want.casefold():
            return False
    since, until = filters.get("from", ""), filters.get("to", "")
    if (since and entry.get("date", "") < since) or (until and entry.get("date", "") > until):
        return False
    q = filters.get("q", "").strip().casefold()
    if q:
        hay = (
            " ".join(
                str(entry.get(k, "")) for k in ("title", "teacher", "subject", "school", "lesson")
            )
            + " "
            + " ".join(c.get("title", "") for c in entry.get("chapters", []))
        )
        if q not in hay.casefold():
            return False
    return True


def summary(entry: dict[str, Any], secret: str, ttl_s: int = LINK_TTL_S) -> dict[str, Any]:
    base, expires = signed_base(secret, entry["lesson"], ttl_s)
    return {
        **{
            k: entry.get(k)
            for k in (
                "lesson",
                "title",
                "school",
                "school_name",
                "subject",
                "grade",
                "teacher",
                "date",
                "duration_s",
                "public",
                "started_at",
            )
        },
        "visibility": visibility(entry),
        "chapters": len(entry.get("chapters", [])),
        "views": [v["label"] for v in entry.get("views", []) if v["kind"] == "video"],
        "poster_url": base + entry.get("poster", "poster.jpg"),
        "base_url": base,
        "player_url": f"/static/player.html?src={base}",
        "expires_at": expires,
    }
