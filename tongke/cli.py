"""`tongke` command line: each package registers its own sub-commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules exposing `register(subparsers)`; each adds commands whose `func(args)` returns
# an exit status.
COMMAND_MODULES = (
    "media_server.cli",
    "classroom_agent.cli",
    "tongke.demo",
    "tongke.token_cli",
    "tongke.audit_cli",
    "recording.cli",
    "scheduler.cli",
    "tongke.accounts_cli",
    "tongke.cluster.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tongke", description="Tongke: live, synchronized 1+N classrooms."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"tongke: {exc}", file=sys.stderr)
        return 2
