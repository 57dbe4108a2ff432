"""`tongke accounts ...`: manage people's accounts from the server's shell."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tongke.accounts import AccountError, AccountRole, Accounts, AccountSpec
from tongke.config import load_config


def _accounts(args: argparse.Namespace) -> Accounts:
    cfg = load_config(args.config, data_dir=args.data_dir, database_url=args.database_url)
    return Accounts(cfg.resolved_database_url())


def _password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if args.ask_password:
        return getpass.getpass("password: ")
    return None


def _run(fn: Callable[..., Any]) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            out = fn(args)
        except AccountError as exc:
            print(f"tongke accounts: {exc.message}", file=sys.stderr)
            return 2
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0

    return wrapped


@_run
def add(args: argparse.Namespace) -> object:
    spec = AccountSpec.parse(
        {
            "username": args.username,
            "display_name": args.name,
            "role": args.role,
            "school": args.school,
            "classrooms": args.classroom,
            "password": _password(args),
        },
        need_password=True,
    )
    return _accounts(args).create(spec)


@_run
def update(args: argparse.Namespace) -> object:
    changes: dict[str, object] = {}
    for key, value in (("display_name", args.name), ("role", args.role), ("school", args.school)):
        if value is not None:
            changes[key] = value
    if args.classroom is not None:
        changes["classrooms"] = args.classroom
    if args.disable:
        changes["disabled"] = True
    if args.enable:
        changes["disabled"] = False
    password = _password(args)
    if password is not None:
        changes["password"] = password
    return _accounts(args).update(args.username, changes)


@_run
def list_accounts(args: argparse.Namespace) -> object:
    return _accounts(args).list()


@_run
def import_csv(args: argparse.Namespace) -> object:
    accounts = _accounts(args).import_csv(Path(args.file).read_text(encoding="utf-8-sig"))
    return {"imported": len(accounts)}


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("accounts", help="people's sign-in accounts (admin)")
    p.add_argument("--config", type=Path)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--database-url")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    roles = [r.value for r in AccountRole]

    def password_flags(q: argparse.ArgumentParser) -> None:
        g = q.add_mutually_exclusive_group()
        g.add_argument("--password-stdin", action="store_true", help="read the password")
        g.add_argument("--ask-password", action="store_true", help="prompt for it")

    a = acts.add_parser("add", help="create an account")
    a.add_argument("username")
    a.add_argument("--role", required=True, choices=roles)
    a.add_argument("--name", default="", help="display name (张老师)")
    a.add_argument("--school", default="")
    a.add_argument("--classroom", action="append", default=[], help="bind a classroom id")
    password_flags(a)
    a.set_defaults(func=add)

    u = acts.add_parser("update", help="change an account (bindings, role, password)")
    u.add_argument("username")
    u.add_argument("--role", choices=roles)
    u.add_argument("--name")
    u.add_argument("--school")
    u.add_argument("--classroom", action="append", help="the classrooms (replaces them)")
    u.add_argument("--disable", action="store_true")
    u.add_argument("--enable", action="store_true")
    password_flags(u)
    u.set_defaults(func=update)

    ls = acts.add_parser("list", help="list accounts")
    ls.set_defaults(func=list_accounts)

    im = acts.add_parser("import", help="create/update accounts from a CSV file, all or none")
    im.add_argument("file", help="username,display_name,role,school,classrooms,password")
    im.set_defaults(func=import_csv)
