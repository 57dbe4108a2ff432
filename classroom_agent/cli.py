"""`tongke agent`: run a classroom agent (master classroom or teaching point)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from classroom_agent.agent import AgentStopped, ClassroomAgent, summary_line, write_report_path
from classroom_agent.config import AgentConfig, ConfigError, default_sources, load_config
from classroom_agent.timetable import FeedFollower, ScheduledLesson, Timetable
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


def lesson_config(base: AgentConfig, lesson: ScheduledLesson, own_sources: bool) -> AgentConfig:
    """The agent configuration for one lesson of the timetable: its token and role."""
    config = dataclasses.replace(base, token=lesson.token, token_file=None, role=lesson.role)
    if lesson.classroom:
        config.classroom_id = lesson.classroom
    if not own_sources or lesson.role != base.role:
        config.sources = default_sources(lesson.role, base.synthetic, base.synthetic_pattern)
    return config


def run_feed(
    args: argparse.Namespace, base: AgentConfig, clock: Callable[[], float] = time.time
) -> int:
    """`tongke agent --feed URL`: run every lesson of the classroom's timetable on time."""
    cache = args.feed_cache or base.recording.dir.parent / "feed-cache.json"
    timetable = Timetable(args.feed, cache)
    own_sources = bool(args.config)

    async def run_lesson(lesson: ScheduledLesson, stop: asyncio.Event) -> None:
        config = lesson_config(base, lesson, own_sources)
        agent = ClassroomAgent(config, record=not args.no_recording, upload=not args.no_recording)
        if not args.quiet:
            print(
                f"Tongke agent: lesson {lesson.room} ({lesson.title}) as {lesson.role}", flush=True
            )
        try:
            await agent.run(stop)
        except AgentStopped as exc:
            # The lesson was ended or refused: wait for the next one.
            print(f"tongke agent: lesson {lesson.room}: {exc}", file=sys.stderr, flush=True)

    follower = FeedFollower(
        timetable, run_lesson, lead_s=args.lead_time, poll_s=args.feed_poll, clock=clock
    )

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"Tongke agent following {args.feed} (cache {cache})", flush=True)
        await follower.run(stop)
        return 0

    return asyncio.run(main())


def run_agent(args: argparse.Namespace) -> int:
    if args.feed and (args.token or args.token_file):
        print("tongke agent: give --feed or a token, not both", file=sys.stderr)
        return 2
    if args.feed:
        # No token yet: each lesson of the feed brings its own.
        args.token = "feed"
    try:
        config = agent_config(args)
    except ConfigError as exc:
        print(f"tongke agent: {exc}", file=sys.stderr)
        return 2
    if args.feed:
        if args.ice_address:
            use_host_addresses(args.ice_address)
        config.token = ""
        return run_feed(args, config)
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
    p.add_argument(
        "--feed",
        help="follow this classroom's JSON timetable feed (URL with its feed token) instead "
        "of one lesson's token: join each lesson at its start, leave at its end",
    )
    p.add_argument(
        "--feed-cache", type=Path, help="where the feed is cached (default: beside recordings)"
    )
    p.add_argument(
        "--lead-time", type=float, default=120.0, help="join this many seconds early (120)"
    )
    p.add_argument(
        "--feed-poll", type=float, default=300.0, help="seconds between feed fetches (300)"
    )
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
