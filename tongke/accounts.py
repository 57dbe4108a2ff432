"""People's accounts: who may sign in, with which role, bound to which school and classrooms.

Devices (classroom agents) keep their tokens and feeds; people sign in with a password
(argon2id through argon2-cffi) and get an HttpOnly session cookie (tongke/session_auth.py).
A teacher's classroom bindings decide which lessons they may open, and as what.

The tables live in the same database as the scheduler's (SQLite under the data directory
by default, PostgreSQL when configured) but on their own metadata: accounts do not depend
on a published timetable.
"""

from __future__ import annotations

import builtins
import csv
import datetime as dt
import hashlib
import io
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Boolean, DateTime, ForeignKey, String, Text, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from scheduler.db import make_engine
from tongke.database import create_schema
from tongke.errors import CodedError

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
CLASSROOM_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MIN_PASSWORD = 8
SESSION_TTL = dt.timedelta(hours=12)
CSV_FIELDS = ("username", "display_name", "role", "school", "classrooms", "password")

_hasher = PasswordHasher()
# Verifying against this keeps a login for an unknown user as slow as for a known one.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


class AccountRole(StrEnum):
    ADMIN = "admin"
    SCHEDULER = "scheduler"
    TEACHER = "teacher"
    STUDENT = "student"


class AccountError(CodedError):
    """Bad account input, or a sign-in that cannot succeed; nothing was changed."""


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    school: Mapped[str] = mapped_column(String(64), default="")
    # Classroom ids separated by spaces: a teacher teaches in one or a few rooms.
    classrooms: Mapped[str] = mapped_column(Text, default="")
    password_hash: Mapped[str] = mapped_column(String(200))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    @property
    def classroom_ids(self) -> list[str]:
        return self.classrooms.split()

    def describe(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "display_name": self.display_name,
            "role": self.role,
            "school": self.school,
            "classrooms": self.classroom_ids,
            "disabled": self.disabled,
        }


class WebSession(Base):
    __tablename__ = "web_sessions"

    # sha256 of the cookie value: a leaked database does not hand out live sessions.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(
        ForeignKey("accounts.username", ondelete="CASCADE"), index=True
    )
    csrf: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class SignedIn:
    account: dict[str, Any]
    csrf: str

    @property
    def username(self) -> str:
        return str(self.account["username"])

    @property
    def role(self) -> AccountRole:
        return AccountRole(self.account["role"])

    @property
    def classrooms(self) -> list[str]:
        return list(self.account["classrooms"])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands timezone-aware columns back naive.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


@dataclass(frozen=True)
class AccountSpec:
    """One validated account row (from the admin page, the CLI or a CSV line)."""

    username: str
    display_name: str
    role: AccountRole
    school: str
    classrooms: tuple[str, ...]
    password: str | None

    @classmethod
    def parse(cls, raw: dict[str, Any], *, need_password: bool, where: str = "") -> AccountSpec:
        at = f"{where}: " if where else ""
        username = str(raw.get("username") or "").strip()
        if not USERNAME_RE.match(username):
            raise AccountError("bad_request", f"{at}username must be 2-64 letters, digits or _.@-")
        display = str(raw.get("display_name") or "").strip() or username
        if len(display) > 64 or any(ord(c) < 32 for c in display):
            raise AccountError("bad_request", f"{at}display_name must be 1-64 printable chars")
        try:
            role = AccountRole(str(raw.get("role") or "").strip())
        except ValueError:
            roles = ", ".join(r.value for r in AccountRole)
            raise AccountError("bad_request", f"{at}role must be one of {roles}") from None
        school = str(raw.get("school") or "").strip()
        if len(school) > 64:
            raise AccountError("bad_request", f"{at}school is at most 64 characters")
        rooms_raw = raw.get("classrooms") or []
        if isinstance(rooms_raw, str):
            rooms_raw = re.split(r"[\s;,]+", rooms_raw)
        if not isinstance(rooms_raw, list):
            raise AccountError("bad_request", f"{at}classrooms must be a list of classroom ids")
        rooms = tuple(str(r).strip() for r in rooms_raw if str(r).strip())
        bad = [r for r in rooms if not CLASSROOM_RE.match(r)]
        if bad:
            raise AccountError("bad_request", f"{at}bad classroom id {bad[0]!r}")
        password = raw.get("password")
        if password in (None, ""):
            if need_password:
                raise AccountError("bad_request", f"{at}a password is required")
            password = None
        elif not isinstance(password, str) or len(password) < MIN_PASSWORD:
            raise AccountError(
                "weak_password", f"{at}a password needs at least {MIN_PASSWORD} characters"
            )
        return cls(username, display, role, school, rooms, password)


class Accounts:
    """Accounts and sign-in sessions over one database."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        create_schema(Base.metadata, self.engine)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    def _session(self) -> Session:
        return self._factory()

    def dispose(self) -> None:
        self.engine.dispose()

    # -- accounts -----------------------------------------------------------------------

    def create(self, spec: AccountSpec) -> dict[str, Any]:
        with self._session() as db, db.begin():
            if db.get(Account, spec.username) is not None:
                raise AccountError("exists", f"account {spec.username!r} already exists")
            account = self._new(spec)
            db.add(account)
            return account.describe()

    def _new(self, spec: AccountSpec) -> Account:
        assert spec.password is not None
        return Account(
            username=spec.username,
            display_name=spec.display_name,
            role=spec.role.value,
            school=spec.school,
            classrooms=" ".join(spec.classrooms),
            password_hash=_hasher.hash(spec.password),
            disabled=False,
            created_at=_now(),
        )

    def update(self, username: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change some fields; a password change or disabling ends the user's sessions."""
        allowed = {"display_name", "role", "school", "classrooms", "password", "disabled"}
        unknown = set(changes) - allowed
        if unknown:
            raise AccountError("bad_request", f"unknown fields: {', '.join(sorted(unknown))}")
        with self._session() as db, db.begin():
            account = db.get(Account, username)
            if account is None:
                raise AccountError("unknown_account", f"no account {username!r}")
            merged = {**account.describe(), **changes, "username": username}
            spec = AccountSpec.parse(merged, need_password=False)
            disabled = changes.get("disabled", account.disabled)
            if not isinstance(disabled, bool):
                raise AccountError("bad_request", "disabled must be true or false")
            account.display_name = spec.display_name
            account.role = spec.role.value
            account.school = spec.school
            account.classrooms = " ".join(spec.classrooms)
            account.disabled = disabled
            if spec.password is not None:
                account.password_hash = _hasher.hash(spec.password)
            if spec.password is not None or disabled:
                for s in db.scalars(select(WebSession).where(WebSession.username == username)):
                    db.delete(s)
            return account.describe()

    def list(self) -> list[dict[str, Any]]:
        with self._session() as db:
            return [a.describe() for a in db.scalars(select(Account).order_by(Account.username))]

    def get(self, username: str) -> dict[str, Any] | None:
        with self._session() as db:
            account = db.get(Account, username)
            return account.describe() if account else None

    def import_csv(self, text: str) -> builtins.list[dict[str, Any]]:
        """Create or update every row, or none: a bad row names its line and changes nothing.

        Columns: username, display_name, role, school, classrooms (separated by ; or
        spaces), password (required for new accounts; empty keeps an existing one).
        """
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
        missing = {"username", "role"} - set(reader.fieldnames or [])
        if missing:
            raise AccountError("bad_csv", f"the CSV needs a header with {', '.join(CSV_FIELDS)}")
        rows = list(reader)
        if not rows:
            raise AccountError("bad_csv", "the CSV has no accounts")
        seen: set[str] = set()
        with self._session() as db, db.begin():
            specs = []
            for number, row in enumerate(rows, start=2):
                where = f"line {number}"
                name = (row.get("username") or "").strip()
                exists = db.get(Account, name) is not None
                spec = AccountSpec.parse(row, need_password=not exists, where=where)
                if spec.username in seen:
                    raise AccountError("bad_csv", f"{where}: {spec.username!r} appears twice")
                seen.add(spec.username)
                specs.append((spec, exists))
            out = []
            for spec, exists in specs:
                if exists:
                    account = db.get(Account, spec.username)
                    assert account is not None
                    account.display_name = spec.display_name
                    account.role = spec.role.value
                    account.school = spec.school
                    account.classrooms = " ".join(spec.classrooms)
                    if spec.password is not None:
                        account.password_hash = _hasher.hash(spec.password)
                else:
                    account = self._new(spec)
                    db.add(account)
                out.append(account.describe())
            return out

    # -- sessions -----------------------------------------------------------------------

    def sign_in(self, username: str, password: str) -> tuple[str, SignedIn]:
        """Check a password; return a new session's cookie value and the signed-in user."""
        with self._session() as db, db.begin():
            account = db.get(Account, username) if USERNAME_RE.match(username) else None
            try:
                _hasher.verify(account.password_hash if account else _DUMMY_HASH, password)
            except (VerificationError, InvalidHashError):
                account = None
            if account is None or account.disabled:
                raise AccountError("bad_credentials", "wrong username or password")
            if _hasher.check_needs_rehash(account.password_hash):
                account.password_hash = _hasher.hash(password)
            cookie = secrets.token_urlsafe(32)
            csrf = secrets.token_urlsafe(24)
            now = _now()
            for old in db.scalars(select(WebSession).where(WebSession.expires_at < now)):
                db.delete(old)
            db.add(
                WebSession(
                    key=_key(cookie), username=username, csrf=csrf, expires_at=now + SESSION_TTL
                )
            )
            return cookie, SignedIn(account.describe(), csrf)

    def session(self, cookie: str | None) -> SignedIn | None:
        if not cookie:
            return None
        with self._session() as db:
            s = db.get(WebSession, _key(cookie))
            if s is None or _aware(s.expires_at) <= _now():
                return None
            account = db.get(Account, s.username)
            if account is None or account.disabled:
                return None
            return SignedIn(account.describe(), s.csrf)

    def sign_out(self, cookie: str | None) -> None:
        if not cookie:
            return
        with self._session() as db, db.begin():
            s = db.get(WebSession, _key(cookie))
            if s is not None:
                db.delete(s)
