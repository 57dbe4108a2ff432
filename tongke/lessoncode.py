"""One-time lesson codes: what a lesson link carries instead of a room token.

A link in a browser's address bar ends up in its history, in screenshots and in chat
forwards. So a link carries a code, not a token: signed, short-lived (30 minutes by
default), good for one exchange. The lesson page trades it at `POST /api/lesson/exchange`
for the room token, which it keeps in memory, and the server also sets it as an HttpOnly
cookie so that reloading the page works without the (spent) code.

A code holds the claims of the token it yields, not the token itself: reading a code
from a history file gives nothing once it was used or expired.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import jwt
import sqlalchemy as sa

from tongke.database import create_schema
from tongke.tokens import ALGORITHM, Role, TokenError, issue_token

CODE_TTL_S = 30 * 60
_TYPE = "lesson-code"


def issue_code(
    secret: str,
    *,
    room: str,
    classroom: str,
    role: Role | str,
    name: str = "",
    token_ttl_s: int = 4 * 3600,
    code_ttl_s: int = CODE_TTL_S,
    now: float | None = None,
) -> str:
    issued = int(now if now is not None else time.time())
    payload = {
        "typ": _TYPE,
        "jti": uuid.uuid4().hex,
        "room": room,
        "classroom": classroom,
        "role": Role(role).value,
        "name": name,
        "ttl": int(token_ttl_s),
        "iat": issued,
        "exp": issued + code_ttl_s,
    }
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


_metadata = sa.MetaData()
spent_codes = sa.Table(
    "spent_lesson_codes",
    _metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


class CodeBook:
    """Redeems codes once. Spent codes are remembered until they would have expired.

    With a database URL (the server's: SQLite in the data directory, or PostgreSQL) the
    spent codes are rows with the code's id as primary key, so a restarted server, or
    another server process on the same database, never honours a code twice: the insert
    of a second redemption fails. Without one they live in memory (tests, scripts).
    """

    def __init__(self, secret: str, database_url: str | None = None) -> None:
        self._secret = secret
        self._spent: dict[str, float] = {}
        self._engine: sa.engine.Engine | None = None
        if database_url:
            connect_args = {"timeout": 30} if database_url.startswith("sqlite") else {}
            self._engine = sa.create_engine(database_url, connect_args=connect_args)
            create_schema(_metadata, self._engine)

    def redeem(self, code: object, *, now: float | None = None) -> tuple[str, dict[str, Any]]:
        """The room token a code yields and the code's claims; TokenError when it cannot.

        Blocking when a database is used: call it from a thread in a server."""
        if not isinstance(code, str) or not code:
            raise TokenError("code_missing", "the lesson link has no code")
        try:
            data = jwt.decode(
                code,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "jti", "room", "role"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError(
                "code_expired", "this lesson link has expired; ask for a new link"
            ) from None
        except jwt.PyJWTError:
            raise TokenError("code_invalid", "this lesson link is not valid") from None
        if data.get("typ") != _TYPE:
            raise TokenError("code_invalid", "this lesson link is not valid")
        clock = now if now is not None else time.time()
        if not self._spend(str(data["jti"])[:64], float(data["exp"]), clock):
            raise TokenError(
                "code_used",
                "this lesson link was already opened once; ask for a new link",
            )
        token = issue_token(
            self._secret,
            room=str(data["room"]),
            classroom=str(data.get("classroom", "")),
            role=Role(str(data["role"])),
            name=str(data.get("name", "")),
            ttl_s=int(data.get("ttl", 4 * 3600)),
            now=clock,
        )
        return token, data

    def _spend(self, jti: str, expires_at: float, now: float) -> bool:
        """Mark a code spent; False when it already was."""
        if self._engine is None:
            for old, exp in list(self._spent.items()):
                if exp < now:
                    del self._spent[old]
            if jti in self._spent:
                return False
            self._spent[jti] = expires_at
            return True
        try:
            with self._engine.begin() as conn:
                conn.execute(spent_codes.delete().where(spent_codes.c.expires_at < now))
                conn.execute(spent_codes.insert().values(jti=jti, expires_at=expires_at))
        except sa.exc.IntegrityError:
            return False
        return True

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def cookie_name(room: str) -> str:
    """One cookie per lesson; room ids may hold characters cookie names may not."""
    return "tk_" + hashlib.sha256(room.encode()).hexdigest()[:16]


def lesson_url(base_url: str, room: str, code: str) -> str:
    return f"{base_url.rstrip('/')}/lesson/{room}?code={code}"
