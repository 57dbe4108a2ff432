"""`tongke agent`: run a classroom agent (master classroom or teaching point)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from classroom_agent.agent import AgentStopped, ClassroomAgent, summary_line, write_report_path
from classroom_agent.config import AgentConfig, ConfigError, default_sources, load_config
from tongke.ice import use_host_addresses


def agent_argv(
    server: str,
    token: str,
    role: str,
    *,
    classroom: str | None = None,
    ice_addresses: Sequence[str] = (),
    recording_dir: Path | None = None,
    options: Sequence[str] = ("--synthetic", "--no-window", "--quiet"),
) -> list[str]:
    """The command line that runs an agent in its own process (demo, benchmarks)."""
    argv = [sys.executable, "-m", "tongke", "agent", "--server", server, "--token", token]
    argv += ["--role", role]
    if classroom:
        argv += ["--classroom", classroom]
    for address in ice_addresses:
        argv += ["--ice-address", address]
    if recording_dir is not None:
        argv += ["--recording-dir", str(recording_dir)]
    return argv + list(options)


def agent_config(args: argparse.Namespace) -> AgentConfig:
    config = load_config(args.config) if args.config else AgentConfig()
    if args.server:
        config.server_url = args.server
    if args.token:
        config.token, config.token_file = args.token, None
    elif args.token_file:
        config.token, config.token_file = "", Path(args.token_file)
    if args.classroom:
        config.classroom_id = args.classroom
    if args.recording_dir:
        config.recording.dir = args.recording_dir
    role_changed = args.role is not None and args.role != config.role
    if args.role:
        config.role = args.role
    if args.synthetic:
        config.synthetic_pattern = args.synthetic
    if args.synthetic or role_changed or not config.sources:
        config.synthetic = config.synthetic or bool(args.synthetic)
        if not args.config or role_changed or args.synthetic:
            config.sources = default_sources(
                config.role, config.synthetic, config.synthetic_pattern
            )
    return config


def run_agent(args: argparse.Namespace) -> int:
    try:
        config = agent_config(args)
    except ConfigError as exc:
        print(f"tongke agent: {exc}", file=sys.stderr)
        return 2
    if args.report_interval <= 0:
        print("tongke agent: --report-interval must be positive", file=sys.stderr)
        return 2
    if args.ice_address:
        use_host_addresses(args.ice_address)
    window = None
    if not args.no_window:
        from classroom_agent.window import open_window

        window = open_window(f"Tongke · {config.classroom_id or config.role}")
    report = write_report_path(args.report)
    quiet = args.quiet

    def show(snapshot: dict) -> None:
        if not quiet:
            print(summary_line(snapshot), flush=True)

    try:
        agent = ClassroomAgent(
            config,
            window=window,
            report=report,
            report_interval_s=args.report_interval,
            on_quality=show,
            record=not args.no_recording,
        )
    except AgentStopped as exc:
        print(f"tongke agent: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"Tongke agent for {agent.classroom or config.role} ({config.role}) → lesson "
            f"{agent.room} on {config.server_url}",
            flush=True,
        )
        try:
            await agent.run(stop)
        except AgentStopped as exc:
            print(f"tongke agent: {exc}", file=sys.stderr)
            return 2
        return 0

    try:
        return asyncio.run(main())
    finally:
        if report is not None:
            report.close()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "agent",
        help="run a classroom agent: publish this classroom, receive the lesson",
        description="Publish a classroom's cameras, screen and microphone to a lesson and "
        "receive the others. Reconnects by itself when the server or the link goes away.",
    )
    p.add_argument("--config", type=Path, help="agent TOML file (see docs/agent.md)")
    p.add_argument("--server", help="server URL, e.g. http://sfu.county.example:8080")
    p.add_argument("--token", help="the room token for this classroom and lesson")
    p.add_argument("--token-file", help="read the room token from this file")
    p.add_argument("--classroom", help="this classroom's id (shown to others)")
    p.add_argument("--role", choices=["master", "point"], help="master classroom or teaching point")
    p.add_argument(
        "--synthetic",
        nargs="?",
        const="card",
        choices=["card", "noise"],
        help="synthetic sources instead of devices: the test card (default) or a "
        "high-entropy scene that fills the bitrate like a real camera (noise)",
    )
    p.add_argument(
        "--report", type=Path, help="append per-track quality as JSON lines to this file"
    )
    p.add_argument(
        "--report-interval",
        type=float,
        default=5.0,
        help="seconds between quality reports (default 5)",
    )
    p.add_argument("--no-window", action="store_true", help="never open a local window")
    p.add_argument(
        "--recording-dir", type=Path, help="where the safety copy of what we publish is written"
    )
    p.add_argument(
        "--no-recording", action="store_true", help="no safety copy (the server may still record)"
    )
    p.add_argument("--quiet", action="store_true", help="no quality lines on stdout")
    p.add_argument(
        "--ice-address", action="append", help="offer only this address to ICE (repeatable)"
    )
    p.set_defaults(func=run_agent)
