"""`tongke token` and `tongke room`: issue room tokens and open rooms from the shell."""

from __future__ import annotations

import argparse
import getpass

from media_server.room import LessonInfo, Rooms
from tongke.audit import AuditLog
from tongke.config import load_config
from tongke.lessoncode import CODE_TTL_S, issue_code, lesson_url
from tongke.tokens import Role, issue_token
from tongke.untrusted import display_text_problem


def token(args: argparse.Namespace) -> int:
    config = load_config(args.config, data_dir=args.data_dir)
    problem = display_text_problem(args.name) if args.name else None
    if problem is not None:
        raise ValueError(f"--name {problem}")
    fields = {
        "room": args.room,
        "classroom": args.classroom,
        "role": Role(args.role),
        "name": args.name or "",
    }
    ttl_s = int(args.hours * 3600)
    if args.url:
        # A person's link: a one-time code, never the token itself (docs/security.md).
        code = issue_code(
            config.ensure_secret(),
            **fields,
            token_ttl_s=ttl_s,
            code_ttl_s=int(args.code_minutes * 60),
        )
        print(lesson_url(config.base_url, args.room, code))
    else:
        print(issue_token(config.ensure_secret(), **fields, ttl_s=ttl_s))
    config.data_dir.mkdir(parents=True, exist_ok=True)
    audit = AuditLog(config.resolved_database_url())
    audit.record(
        "token_minted",
        actor=f"cli:{getpass.getuser()}",
        room=args.room,
        classroom=args.classroom,
        minted_role=args.role,
        ttl_s=ttl_s,
        link=bool(args.url),
    )
    audit.close()
    return 0


def open_room(args: argparse.Namespace) -> int:
    config = load_config(args.config, data_dir=args.data_dir)
    rooms = Rooms(config.data_dir / "rooms.json")
    rooms.open(LessonInfo(room=args.room, title=args.title, master=args.master, points=args.point))
    print(f"room {args.room} is open; restart or reload the server to pick it up if it runs")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="issue a room token (JWT) for one lesson and role")
    p.add_argument("room")
    p.add_argument("--classroom", required=True)
    p.add_argument("--role", choices=[r.value for r in Role], default="observer")
    p.add_argument("--name")
    p.add_argument("--hours", type=float, default=4.0)
    p.add_argument(
        "--url", action="store_true", help="print a one-time browser link instead of the token"
    )
    p.add_argument(
        "--code-minutes",
        type=float,
        default=CODE_TTL_S / 60,
        help="how long the link may wait to be opened (default 30)",
    )
    p.add_argument("--config", type=str, default=None)
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=token)

    r = sub.add_parser("room", help="open a lesson room on this machine's server")
    r.add_argument("room")
    r.add_argument("--title", default="")
    r.add_argument("--master", default="")
    r.add_argument("--point", action="append", default=[])
    r.add_argument("--config", type=str, default=None)
    r.add_argument("--data-dir", default=None)
    r.set_defaults(func=open_room)
