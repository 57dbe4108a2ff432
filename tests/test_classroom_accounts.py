"""Sign-in for people: accounts, session cookie, CSRF, admin API, CSV import, room tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest

from tests.lesson_server import ROOT, ServerProcess
from tongke.accounts import AccountError, Accounts, AccountSpec
from tongke.tokens import Role, verify_token


def spec(username: str, role: str = "teacher", **kw: Any) -> AccountSpec:
    return AccountSpec.parse(
        {"username": username, "role": role, "password": "correct horse", **kw},
        need_password=True,
    )


def test_passwords_sessions_and_disabling(tmp_path: Path) -> None:
    accounts = Accounts(f"sqlite:///{tmp_path / 'a.db'}")
    accounts.create(spec("zhang", display_name="张老师", classrooms="c-master p-1"))
    with pytest.raises(AccountError) as err:
        accounts.create(spec("zhang"))
    assert err.value.code == "exists"
    with pytest.raises(AccountError) as err:
        accounts.sign_in("zhang", "wrong password")
    assert err.value.code == "bad_credentials"
    with pytest.raises(AccountError):
        accounts.sign_in("nobody", "correct horse")
    cookie, user = accounts.sign_in("zhang", "correct horse")
    assert user.classrooms == ["c-master", "p-1"] and user.account["display_name"] == "张老师"
    assert accounts.session(cookie) is not None
    assert accounts.session("forged") is None
    # The stored hash is argon2id, never the password.
    with accounts.engine.connect() as conn:
        stored = conn.exec_driver_sql("select password_hash from accounts").scalar_one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    accounts.update("zhang", {"disabled": True})
    assert accounts.session(cookie) is None
    with pytest.raises(AccountError):
        accounts.sign_in("zhang", "correct horse")
    with pytest.raises(AccountError) as err:
        AccountSpec.parse({"username": "x y", "role": "teacher"}, need_password=False)
    assert err.value.code == "bad_request"
    with pytest.raises(AccountError) as err:
        AccountSpec.parse(
            {"username": "li", "role": "teacher", "password": "short"}, need_password=True
        )
    assert err.value.code == "weak_password"
    accounts.dispose()


def test_csv_import_is_all_or_nothing(tmp_path: Path) -> None:
    accounts = Accounts(f"sqlite:///{tmp_path / 'a.db'}")
    good = (
        "username,display_name,role,school,classrooms,password\n"
        "wang,王老师,teacher,城关小学,c-master,password-1\n"
        "li,李老师,teacher,小河小学,p-xiaohe;p-2,password-2\n"
    )
    assert len(accounts.import_csv(good)) == 2
    bad = (
        "username,display_name,role,school,classrooms,password\n"
        "zhao,赵老师,teacher,,c-x,password-3\n"
        "wang,王老师,headmaster,,c-master,\n"  # unknown role on line 3
    )
    with pytest.raises(AccountError) as err:
        accounts.import_csv(bad)
    assert "line 3" in err.value.message
    assert [a["username"] for a in accounts.list()] == ["li", "wang"]  # zhao not created
    # Re-import updates bindings and keeps passwords when the column is empty.
    accounts.import_csv("username,role,classrooms,password\nli,teacher,p-xiaohe,\n")
    assert accounts.get("li")["classrooms"] == ["p-xiaohe"]  # type: ignore[index]
    accounts.sign_in("li", "password-2")
    accounts.dispose()


class Browserless:
    """An HTTP client with a cookie jar, like a browser tab without JavaScript."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        self.csrf = ""

    def call(
        self, method: str, path: str, body: Any = None, *, csrf: bool = True, raw: str = ""
    ) -> tuple[int, Any]:
        data = raw.encode() if raw else json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "text/csv" if raw else "application/json")
        if csrf and self.csrf:
            req.add_header("X-CSRF-Token", self.csrf)
        try:
            with self.opener.open(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def login(self, username: str, password: str) -> int:
        status, body = self.call(
            "POST", "/api/auth/login", {"username": username, "password": password}
        )
        if status == 200:
            self.csrf = body["csrf"]
        return status


def cli(server: ServerProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tongke", "accounts", "--data-dir", str(server.data_dir), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def test_sign_in_csrf_admin_and_room_tokens(server: ServerProcess) -> None:
    run = cli(server, "add", "root", "--role", "admin", "--password-stdin", stdin="admin-pass-1\n")
    assert run.returncode == 0, run.stderr
    bad = cli(server, "add", "xu", "--role", "teacher", "--password-stdin", stdin="short\n")
    assert bad.returncode == 2 and "8 characters" in bad.stderr

    admin = Browserless(server.url)
    assert admin.login("root", "wrong") == 401
    assert admin.login("root", "admin-pass-1") == 200
    teacher = {
        "username": "zhang",
        "display_name": "张老师",
        "role": "teacher",
        "classrooms": ["c-chengguan"],
        "password": "teach-pass-1",
    }
    status, body = admin.call("POST", "/api/accounts", teacher, csrf=False)
    assert status == 403 and body["error"]["code"] == "csrf"
    status, _ = admin.call("POST", "/api/accounts", teacher)
    assert status == 201
    status, body = admin.call(
        "POST",
        "/api/accounts/import",
        raw="username,role,classrooms,password\nli,teacher,p-xiaohe,teach-pass-2\n",
    )
    assert status == 200 and body["imported"] == 1

    # A teacher may not administer accounts.
    zhang = Browserless(server.url)
    assert zhang.login("zhang", "teach-pass-1") == 200
    status, body = zhang.call("GET", "/api/accounts")
    assert status == 403

    # Tokens from the session: the bindings decide the role; other lessons are refused.
    server.api(
        "POST", "/api/rooms", {"room": "math-1", "master": "c-chengguan", "points": ["p-xiaohe"]}
    )
    server.api("POST", "/api/rooms", {"room": "other-1", "master": "c-elsewhere"})
    status, body = zhang.call("POST", "/api/auth/room-token", {"room": "math-1"})
    assert status == 200 and body["role"] == "master"
    claims = verify_token(server.secret, body["token"], room="math-1")
    assert claims.role is Role.MASTER and claims.classroom == "c-chengguan"
    status, body = zhang.call("POST", "/api/auth/room-token", {"room": "other-1"})
    assert status == 403 and body["error"]["code"] == "not_your_lesson"
    li = Browserless(server.url)
    assert li.login("li", "teach-pass-2") == 200
    status, body = li.call("POST", "/api/auth/room-token", {"room": "math-1"})
    assert status == 200 and body["role"] == "point" and body["classroom"] == "p-xiaohe"
    # The point's own teacher asks for the tutor role: its classroom, no camera.
    status, body = li.call("POST", "/api/auth/room-token", {"room": "math-1", "as": "tutor"})
    assert status == 200 and body["role"] == "tutor" and body["classroom"] == "p-xiaohe"
    assert verify_token(server.secret, body["token"], room="math-1").role is Role.TUTOR
    status, body = zhang.call("POST", "/api/auth/room-token", {"room": "math-1", "as": "tutor"})
    assert status == 403 and body["error"]["code"] == "not_your_lesson"  # a master, not a point
    status, body = li.call("POST", "/api/auth/room-token", {"room": "math-1", "as": "master"})
    assert status == 400 and body["error"]["code"] == "bad_request"

    # The supervisor view is for admins and schedulers only.
    status, _ = li.call("GET", "/api/supervisor")
    assert status == 403
    status, body = admin.call("GET", "/api/supervisor")
    assert status == 200 and isinstance(body["lessons"], list)

    # Signing out ends the session; the cookie is HttpOnly.
    status, _ = zhang.call("POST", "/api/auth/logout")
    assert status == 200
    status, body = zhang.call("GET", "/api/auth/me")
    assert status == 401
    req = urllib.request.Request(
        server.url + "/api/auth/login",
        method="POST",
        data=json.dumps({"username": "li", "password": "teach-pass-2"}).encode(),
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
