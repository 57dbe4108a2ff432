"""`tongke audit`: read the audit log from the server's database (table or CSV)."""

from __future__ import annotations

import argparse
import sys
import time

from tongke.audit import ACTIONS, AuditLog, _since, to_csv
from tongke.config import load_config


def show(args: argparse.Namespace) -> int:
    config = load_config(args.config, data_dir=args.data_dir)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    audit = AuditLog(config.resolved_database_url())
    try:
        rows = audit.query(
            since=_since(args.since),
            until=_since(args.until),
            action=args.action,
            room=args.room,
            limit=args.limit,
        )
    finally:
        audit.close()
    if args.csv:
        sys.stdout.write(to_csv(rows))
        return 0
    for row in reversed(rows):
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["at"]))
        print(f"{at}Z  {row['action']:<26} {row['actor']:<28} {row['role']:<9} "
              f"{row['room']:<24} {row['ip']:<15} {row['detail']}")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="show or export (CSV) the audit log")
    p.add_argument("--since", help="from this date/time (UTC), e.g. 2026-09-01")
    p.add_argument("--until", help="before this date/time (UTC)")
    p.add_argument("--action", choices=ACTIONS)
    p.add_argument("--room")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--csv", action="store_true", help="CSV for a spreadsheet")
    p.add_argument("--config", type=str, default=None)
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=show)
