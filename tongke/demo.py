"""`tongke demo`: a whole 1+2 lesson on this machine, on embedded defaults.

The server runs in this process; the master classroom and two teaching points run as
real agents in their own processes (synthetic test cards and tones through the same
capture and encode path as cameras), exactly as they would in three schools.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from classroom_agent.cli import agent_argv
from media_server.http import SFU
from media_server.room import LessonInfo
from tongke.config import load_config
from tongke.lessoncode import issue_code, lesson_url
from tongke.server import start_server
from tongke.tokens import Role, issue_token

ROOM = "demo-lesson"
TITLE = "四年级英语 · Grade 4 English (demo)"
MASTER = ("city-school-4a", "城关小学 四(1)班")
POINTS = [("xiaohe-point", "小河教学点"), ("shanxia-point", "山下教学点")]


async def _pump(name: str, stream: asyncio.StreamReader) -> None:
    async for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        if line:
            print(f"  [{name}] {line}", flush=True)


async def run_demo(args: argparse.Namespace) -> int:
    config = load_config(
        args.config,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        ice_addresses=args.ice_address or ["127.0.0.1"],
    )
    server = await start_server(config)
    secret = server.secret
    sfu = server.app[SFU]
    sfu.rooms.open(
        LessonInfo(room=ROOM, title=TITLE, master=MASTER[0], points=[p for p, _ in POINTS])
    )
    print(f"Tongke demo: server on {server.url}, lesson {ROOM!r}", flush=True)

    agents: list[tuple[str, asyncio.subprocess.Process]] = []
    pumps = []
    roster = [(MASTER, Role.MASTER, "master")] + [(p, Role.POINT, "point") for p in POINTS]
    for (classroom, name), role, agent_role in roster:
        token = issue_token(secret, room=ROOM, classroom=classroom, role=role, name=name)
        options = ["--synthetic"]
        if not args.windows:
            options.append("--no-window")
        if agent_role == "master" or args.quiet:
            options.append("--quiet")
        cmd = agent_argv(
            server.url,
            token,
            agent_role,
            classroom=classroom,
            ice_addresses=config.ice_addresses,
            recording_dir=config.data_dir / "agent-recordings",
            options=options,
        )
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert proc.stdout is not None
        agents.append((name, proc))
        pumps.append(asyncio.ensure_future(_pump(name, proc.stdout)))

    # A one-time code: the link opens the lesson once (a reload keeps working).
    viewer = issue_code(
        secret, room=ROOM, classroom="demo-viewer", role=Role.OBSERVER, name="Viewer"
    )
    print("\nOpen the lesson in a browser (the link works once):\n", flush=True)
    print(f"  {lesson_url(server.url, ROOM, viewer)}\n", flush=True)
    print(
        "The teaching points print what they receive every 5 s. Press Ctrl-C to stop.\n", flush=True
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.seconds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.seconds)
        else:
            await stop.wait()
    finally:
        print("Stopping the demo...", flush=True)
        # The teacher ends the lesson: the agents stop and upload their copies, and the
        # server hands its own recording of the lesson to the archiver.
        with contextlib.suppress(Exception):
            await _end_lesson(
                server.url, issue_token(secret, room=ROOM, classroom=MASTER[0], role=Role.MASTER)
            )
        for _, proc in agents:
            if proc.returncode is None:
                proc.terminate()
        for _, proc in agents:
            try:
                # A stopping agent uploads its safety copy first.
                await asyncio.wait_for(proc.wait(), 120)
            except TimeoutError:
                proc.kill()
        await asyncio.gather(*pumps, return_exceptions=True)
        if not args.no_replay:
            watcher = issue_token(
                secret, room=ROOM, classroom="demo-viewer", role=Role.OBSERVER, name="Viewer"
            )
            await _wait_for_replay(config.data_dir, server.url, watcher)
        await server.stop()
    return 0


async def _end_lesson(url: str, token: str) -> None:
    from classroom_agent.client import LessonClient

    console = LessonClient(url, ROOM, token)
    await console.connect()
    try:
        await console.request({"type": "lesson_end"})
    finally:
        await console.close()


async def _wait_for_replay(data_dir: Path, url: str, token: str, limit_s: float = 600) -> None:
    """The archiver packages the lesson once every classroom's copy is in: wait for it."""
    from recording.lesson import LessonRecord

    record = LessonRecord(data_dir / "recordings", ROOM)
    print("Packaging the lesson's replay...", flush=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        data = record.load() if record.exists() else {}
        if data.get("state") == "packaged" and data.get("packaged_parts") == len(data["parts"]):
            print(f"\nThe replay is in the catalog:\n\n  {url}/replays#token={token}\n", flush=True)
            return
        await asyncio.sleep(1)
    print("The replay is not ready yet; it appears in the catalog when it is.", flush=True)


def demo(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(args))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run a demo lesson: server, master classroom, two teaching points"
    )
    p.add_argument("--config", type=Path)
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None, help="default 8080")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--ice-address", action="append", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--windows", action="store_true", help="open the agents' local windows")
    p.add_argument("--quiet", action="store_true", help="do not print the points' quality lines")
    p.add_argument(
        "--seconds", type=float, default=0, help="stop after this long (default: Ctrl-C)"
    )
    p.add_argument(
        "--no-replay", action="store_true", help="stop without waiting for the lesson's replay"
    )
    p.set_defaults(func=demo)
