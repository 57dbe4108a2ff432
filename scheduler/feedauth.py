"""Feed tokens: a classroom (or its agent) reads its own schedule and nothing else.

A feed token is an ordinary room token whose room is `feed:<classroom>` or
`feed-agent:<agent>`, so it opens no lesson room and no other classroom's feed.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from scheduler.ical import classroom_exists, classrooms_of_agent
from tongke.tokens import Role, issue_token


def feed_room(ident: str, *, agent: bool) -> str:
    return f"feed-agent:{ident}" if agent else f"feed:{ident}"


def feed_path(ident: str, *, agent: bool) -> str:
    return f"/api/schedule/feeds/agent/{ident}" if agent else f"/api/schedule/feeds/{ident}"


def feed_token(
    db: Session, secret: str, ident: str, *, agent: bool, ttl_s: int = 180 * 24 * 3600
) -> tuple[str, str]:
    if agent:
        if not classrooms_of_agent(db, ident):
            raise ValueError(f"unknown agent {ident!r}")
    elif not classroom_exists(db, ident):
        raise ValueError(f"unknown classroom {ident!r}")
    token = issue_token(
        secret,
        room=feed_room(ident, agent=agent),
        classroom=ident,
        role=Role.AGENT,
        name=ident,
        ttl_s=ttl_s,
    )
    return token, feed_path(ident, agent=agent)
