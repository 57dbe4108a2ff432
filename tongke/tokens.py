"""Room tokens: JWTs naming one room, one classroom and one role.

A token for one lesson opens no other: every check names the room it is for.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import jwt

from tongke.errors import CodedError

ALGORITHM = "HS256"


class Role(StrEnum):
    MASTER = "master"
    POINT = "point"
    OBSERVER = "observer"
    AGENT = "agent"
    RECORDER = "recorder"
    ADMIN = "admin"
    SCHEDULER = "scheduler"
    STUDENT = "student"
    # A teaching point's own teacher: local controls for that classroom (hand, mute,
    # what it receives) and the private line to the master; publishes nothing.
    TUTOR = "tutor"


# Roles that may publish media into a room.
PUBLISHING_ROLES = frozenset({Role.MASTER, Role.POINT, Role.AGENT})
# Roles whose tokens are not bound to one room ("*").
GLOBAL_ROLES = frozenset({Role.ADMIN, Role.SCHEDULER})
# Roles that receive as a teaching point does (the point's device and its teacher).
POINT_ROLES = frozenset({Role.POINT, Role.TUTOR})


class TokenError(CodedError):
    """The token is missing, malformed, expired, or not valid for what was asked."""


@dataclass(frozen=True)
class Claims:
    room: str
    classroom: str
    role: Role
    subject: str
    name: str
    expires_at: int

    def allows_room(self, room: str) -> bool:
        return self.room == room or (self.room == "*" and self.role in GLOBAL_ROLES)


def issue_token(
    secret: str,
    *,
    room: str,
    classroom: str,
    role: Role | str,
    name: str = "",
    ttl_s: int = 4 * 3600,
    subject: str | None = None,
    now: float | None = None,
) -> str:
    issued = int(now if now is not None else time.time())
    role = Role(role)
    payload = {
        "room": room,
        "classroom": classroom,
        "role": role.value,
        "sub": subject or f"{classroom}:{uuid.uuid4().hex[:8]}",
        "name": name or classroom,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify_token(
    secret: str, token: str | None, *, room: str | None = None, roles: frozenset[Role] | None = None
) -> Claims:
    """Decode and check a token; raise TokenError with a reason a person can act on."""
    if not token:
        raise TokenError("token_missing", "a room token is required")
    try:
        data = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "room", "role"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token_expired", "the token has expired; ask for a new link") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token_invalid", "the token was not issued by this server") from None
    except jwt.PyJWTError as exc:
        raise TokenError("token_invalid", f"the token is not valid: {exc}") from None
    try:
        role = Role(data["role"])
    except ValueError:
        raise TokenError("token_invalid", f"unknown role {data['role']!r}") from None
    claims = Claims(
        room=str(data["room"]),
        classroom=str(data.get("classroom", "")),
        role=role,
        subject=str(data.get("sub", "")),
        name=str(data.get("name", "")),
        expires_at=int(data["exp"]),
    )
    if room is not None and not claims.allows_room(room):
        raise TokenError("token_wrong_room", f"this token is for another lesson, not {room!r}")
    if roles is not None and claims.role not in roles:
        raise TokenError("token_role", f"role {claims.role.value!r} may not do this")
    return claims


def peek_claims(token: str) -> dict[str, object]:
    """Read a token's claims without checking its signature.

    For clients (agents) that must know which room a token opens; only the server,
    which holds the secret, decides whether the token is any good.
    """
    try:
        return dict(jwt.decode(token, options={"verify_signature": False, "verify_exp": False}))
    except jwt.PyJWTError as exc:
        raise TokenError("token_invalid", f"the token is not a JWT: {exc}") from None


# -- where a request's token may travel -------------------------------------------------

FEEDS_PREFIX = "/api/schedule/feeds/"


class _Request(Protocol):
    """The parts of an aiohttp request `request_token` reads (tokens.py stays aiohttp-free)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def path(self) -> str: ...

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def cookies(self) -> Mapping[str, str]: ...


def feed_cookie_name(classroom: str) -> str:
    """The point console's HttpOnly cookie holding its classroom's feed token."""
    return "tkf_" + hashlib.sha256(classroom.encode()).hexdigest()[:16]


def request_token(request: _Request) -> str | None:
    """A request's token: the `Authorization: Bearer` header, nowhere else.

    Two exceptions, both on the timetable feeds: `?token=` (a calendar app can only
    subscribe to a URL; the access log redacts it, and feed tokens are revocable), and
    the point console's HttpOnly feed cookie (set when an old `?feed=` link is opened).
    Everywhere else a token in a query string is ignored: it would end up in browser
    history, proxies' logs and Referer headers.
    """
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    path = request.path
    if not path.startswith(FEEDS_PREFIX):
        return None
    if request.query.get("token"):
        return request.query["token"]
    name = path[len(FEEDS_PREFIX) :].rsplit(".", 1)[0]
    return request.cookies.get(feed_cookie_name(name)) or None
