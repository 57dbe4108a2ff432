"""`tongke token` and `tongke room`: issue room tokens and open rooms from the shell."""

from __future__ import annotations

import argparse

from media_server.http import lesson_url
from media_server.room import LessonInfo, Rooms
from tongke.config import load_config
from tongke.tokens import Role, issue_token


def token(args: argparse.Namespace) -> int:
    config = load_config(args.config, data_dir=args.data_dir)
    value = issue_token(
        config.ensure_secret(),
        room=args.room,
        classroom=args.classroom,
        role=Role(args.role),
        name=args.name or "",
        ttl_s=int(args.hours * 3600),
    )
    if args.url:
        print(lesson_url(config.base_url, args.room, value))
    else:
        print(value)
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
    p.add_argument("--url", action="store_true", help="print the browser link instead")
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
