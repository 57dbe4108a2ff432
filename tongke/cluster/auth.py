"""Requests between a front and its media nodes: signed with the service secret.

Media nodes trust two things only from a caller that holds the secret: the internal
`/_cluster/` routes, and the address of the client a front proxies (rate limits and the
audit log must see the pupil's address, not the front's).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from aiohttp import web
from aiohttp.typedefs import Handler

SIGNATURE = "X-Tongke-Cluster"
CLIENT = "X-Tongke-Client"
MAX_AGE_S = 120


def sign(secret: str, purpose: str, now: float | None = None) -> str:
    stamp = int(time.time() if now is None else now)
    mac = hmac.new(secret.encode(), f"{purpose}|{stamp}".encode(), hashlib.sha256)
    return f"{stamp}.{mac.hexdigest()}"


def verify(secret: str, purpose: str, value: str | None, now: float | None = None) -> bool:
    if not value or "." not in value:
        return False
    stamp_text, _, mac = value.partition(".")
    try:
        stamp = int(stamp_text)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - stamp) > MAX_AGE_S:
        return False
    expected = sign(secret, purpose, stamp).partition(".")[2]
    return hmac.compare_digest(expected, mac)


def internal_headers(secret: str) -> dict[str, str]:
    return {SIGNATURE: sign(secret, "internal")}


def client_headers(secret: str, remote: str | None) -> dict[str, str]:
    """Headers with which a front tells a node whose connection it proxies."""
    if not remote:
        return {}
    return {CLIENT: remote, SIGNATURE: sign(secret, f"client:{remote}")}


def require_internal(request: web.Request, secret: str) -> None:
    if not verify(secret, "internal", request.headers.get(SIGNATURE)):
        raise web.HTTPForbidden(
            text='{"error": {"code": "forbidden", "message": "cluster-internal route"}}',
            content_type="application/json",
        )


def forwarded_client_middleware(secret: str) -> object:
    """The proxied client's address becomes `request.remote` when a front signed it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        remote = request.headers.get(CLIENT)
        if remote and verify(secret, f"client:{remote}", request.headers.get(SIGNATURE)):
            request = request.clone(remote=remote)
        return await handler(request)

    return middleware
