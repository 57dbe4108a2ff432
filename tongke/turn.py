"""Time-limited TURN credentials for schools whose firewalls block UDP.

The TURN REST scheme that coturn implements (``use-auth-secret``): the server and the
TURN relay share a secret; a credential is the username ``"<expiry>:<classroom>"`` (Unix
seconds) and the password ``base64(HMAC-SHA1(secret, username))``. The relay checks the
HMAC and refuses a username whose expiry has passed, so nothing is stored per user and a
leaked credential dies on its own. The server hands them out in the ``joined`` message
(``ice_servers``, the shape of WebRTC's RTCIceServer), fresh on every join.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

# A lesson is 40-45 minutes; the credential must outlive the allocation refreshes of a
# whole lesson (plus a late start and overrun), and a reconnect fetches a new one.
DEFAULT_TTL_S = 4 * 3600
SCHEMES = ("turn", "turns", "stun")


class TurnConfigError(ValueError):
    """turn_urls / turn_secret / turn_ttl are unusable; the message names the key."""


def credential(
    secret: str, classroom: str, ttl_s: int, now: float | None = None
) -> tuple[str, str]:
    """``(username, password)`` valid for ``ttl_s`` seconds from ``now``."""
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{classroom}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


@dataclass(frozen=True)
class TurnSettings:
    urls: tuple[str, ...]
    secret: str
    ttl_s: int = DEFAULT_TTL_S

    @classmethod
    def from_config(cls, urls: list[str], secret: str, ttl_s: int) -> TurnSettings | None:
        """None when no TURN is configured; TurnConfigError when it is half configured."""
        if not urls:
            return None
        for url in urls:
            scheme = url.split(":", 1)[0]
            if scheme not in SCHEMES or ":" not in url:
                raise TurnConfigError(
                    f"turn_urls: {url!r} is not a turn:, turns: or stun: URL "
                    "(e.g. turn:turn.example.cn:3478?transport=tcp)"
                )
        if not secret:
            raise TurnConfigError(
                "turn_secret: required with turn_urls (coturn's static-auth-secret)"
            )
        if ttl_s < 60:
            raise TurnConfigError(f"turn_ttl: at least 60 seconds, got {ttl_s}")
        return cls(urls=tuple(urls), secret=secret, ttl_s=ttl_s)

    def ice_servers(self, classroom: str, now: float | None = None) -> list[dict[str, Any]]:
        """The ``ice_servers`` of a ``joined`` message for ``classroom``."""
        username, password = credential(self.secret, classroom, self.ttl_s, now)
        return [{"urls": list(self.urls), "username": username, "credential": password}]


def ice_servers_for(settings: TurnSettings | None, classroom: str) -> list[dict[str, Any]]:
    """What the server puts in ``joined``: empty without TURN."""
    return [] if settings is None else settings.ice_servers(classroom)


def _preference(url: str) -> int:
    """aiortc uses one TURN URL: TCP reaches the most school networks, then TLS, then UDP."""
    scheme = url.split(":", 1)[0]
    transport = parse_qs(url.split("?", 1)[1]).get("transport", ["udp"])[0] if "?" in url else "udp"
    if scheme == "stun":
        return 0
    if scheme == "turn" and transport == "tcp":
        return 1
    if scheme == "turns":
        return 2
    return 3


def order_for_aiortc(ice_servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same servers with URLs reordered so aiortc's single TURN choice is TCP first.

    A relay candidate is only used when direct paths fail, so preferring TCP costs
    nothing where UDP works and reaches schools whose firewalls drop UDP.
    """
    out = []
    for server in ice_servers:
        urls = server.get("urls", [])
        urls = [urls] if isinstance(urls, str) else list(urls)
        out.append({**server, "urls": sorted(urls, key=_preference)})
    return out
