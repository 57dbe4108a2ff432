"""`tongke media-node`: a media worker, started by `tongke serve --workers N` (not by hand)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "media-node",
        help="(internal) a media worker process; `tongke serve --workers N` starts these",
    )
    parser.add_argument("--node-id", required=True)
    parser.set_defaults(func=lambda args: _run(args.node_id))


def _run(node_id: str) -> int:
    from tongke.cluster.node import media_node_main

    return media_node_main(node_id)
