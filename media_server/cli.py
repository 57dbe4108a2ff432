"""`tongke serve`: the media server with every other package's routes."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from tongke.cluster.serve import start_service
from tongke.config import Config, load_config


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file with a [server] table")
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8080)")
    parser.add_argument("--data-dir", type=Path, help="where rooms, secrets and databases live")
    parser.add_argument(
        "--ice-address",
        action="append",
        dest="ice_addresses",
        help="offer this address as a host ICE candidate (repeatable; default: all interfaces)",
    )
    parser.add_argument("--public-url", help="the URL browsers and agents use to reach us")
    parser.add_argument(
        "--ice-port-range",
        metavar="LOW-HIGH",
        help="bind media (ICE host candidates) only to UDP ports in this range, e.g. 50000-50999",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="media worker processes on this host (default 0: one per core; 1: one process)",
    )
    parser.add_argument(
        "--redis-url", help="join the nodes sharing this Redis as one service (tongke/cluster)"
    )
    parser.add_argument(
        "--node-id", help="this host's name in the node registry (default: hostname)"
    )
    parser.add_argument(
        "--node-address", help="the address other nodes reach this host's media nodes at"
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(
        args.config,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        ice_addresses=args.ice_addresses,
        public_url=args.public_url,
        ice_port_range=args.ice_port_range,
        workers=getattr(args, "workers", None),
        redis_url=getattr(args, "redis_url", None),
        node_id=getattr(args, "node_id", None),
        node_address=getattr(args, "node_address", None),
    )


async def wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)

    async def run() -> None:
        server = await start_service(config)
        workers = f"; {server.workers} media workers" if server.workers > 1 else ""
        cluster = f"; cluster {config.cluster_name} via Redis" if config.redis_url else ""
        print(
            f"Tongke server listening on {server.url} (data in {config.data_dir}{workers}{cluster})",
            flush=True,
        )
        try:
            await wait_for_stop()
        finally:
            await server.stop()

    try:
        asyncio.run(run())
    except ValueError as exc:  # a configuration the server cannot run with
        print(f"tongke serve: {exc}", file=sys.stderr)
        return 2
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="run the media server (and the web app)")
    add_server_options(parser)
    parser.set_defaults(func=serve)
