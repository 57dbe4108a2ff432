"""`tongke replay ...`: package, upload, enqueue, work, list the catalog, apply retention."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from recording.errors import RecordingError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    replay = sub.add_parser("replay", help="lesson recordings and replays")
    rs = replay.add_subparsers(dest="replay_command", metavar="ACTION", required=True)

    p = rs.add_parser("package", help="build the replay of a recording directory")
    p.add_argument("dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("data/replays"), help="replays root")
    p.add_argument("--layout", choices=("pip", "side"), default="pip")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.set_defaults(func=_package)

    p = rs.add_parser("upload", help="upload (or resume uploading) a recording")
    p.add_argument("dir", type=Path)
    p.add_argument("--server", required=True, help="e.g. http://10.0.0.5:8080")
    p.add_argument("--token", required=True, help="room token, role agent or recorder")
    p.set_defaults(func=_upload)

    p = rs.add_parser("enqueue", help="queue a packaging job")
    p.add_argument("dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("data/replays"))
    p.add_argument("--redis", required=True, help="redis://host:6379/0")
    p.set_defaults(func=_enqueue)

    p = rs.add_parser(
        "worker", help="run packaging jobs (Redis consumer group, or the server's SQLite queue)"
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--redis", help="redis://host:6379/0")
    where.add_argument("--sqlite", type=Path, help="the server's data/replay-jobs.sqlite3")
    p.add_argument(
        "--claim-idle",
        type=float,
        default=60.0,
        help="seconds before a silent worker's job is taken over",
    )
    p.set_defaults(func=_worker)

    p = rs.add_parser("catalog", help="list replays")
    p.add_argument("--out", type=Path, default=Path("data/replays"))
    for key in ("school", "subject", "grade", "teacher", "date", "q"):
        p.add_argument(f"--{key}", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_catalog)

    p = rs.add_parser("retention", help="delete oldest uploaded recordings beyond a budget")
    p.add_argument("root", type=Path)
    p.add_argument("--budget-gb", type=float, required=True)
    p.set_defaults(func=_retention)


class _Bars:
    """One tqdm bar per packaging stage."""

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, fraction: float) -> None:
        if stage == "done":
            self.close()
            return
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(
                total=100,
                desc=f"{stage:<10}",
                unit="%",
                bar_format="{desc} {bar} {n:.0f}% {elapsed}",
            )
        bar.update(max(0.0, fraction * 100 - bar.n))

    def close(self) -> None:
        for bar in self.bars.values():
            bar.update(100 - bar.n)
            bar.close()
        self.bars.clear()


def _package(args: argparse.Namespace) -> int:
    from recording.package import build_replay
    from recording.program import ProgramSettings

    bars = _Bars()
    try:
        result = build_replay(
            args.dir,
            args.out,
            settings=ProgramSettings(layout=args.layout),
            progress=bars,
            force=args.force,
        )
    except RecordingError as exc:
        bars.close()
        print(f"tongke: cannot package {args.dir}: {exc.message}", file=sys.stderr)
        return 2
    print("up to date:" if result.reused else "replay:", result.directory)
    for key, value in result.timings.items():
        print(f"  {key}: {value:.1f}")
    return 0


def _upload(args: argparse.Namespace) -> int:
    from recording.upload import UploadError, upload_recording_sync

    bar = tqdm(unit="B", unit_scale=True, desc="upload")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        state = upload_recording_sync(args.dir, args.server, args.token, progress=progress)
    except UploadError as exc:
        bar.close()
        print(f"tongke: upload of {args.dir} failed ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    bar.close()
    print(f"uploaded as {state['recording']}; packaging job {state.get('job')}")
    return 0


def _enqueue(args: argparse.Namespace) -> int:
    from recording.jobs import RedisJobQueue

    async def run() -> str:
        q = RedisJobQueue(args.redis)
        try:
            return await q.submit(args.dir.resolve(), args.out.resolve())
        finally:
            await q.close()

    print(asyncio.run(run()))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from recording.jobs import JobQueue, RedisJobQueue, SqliteJobQueue

    async def run() -> None:
        q: JobQueue
        if args.redis:
            q = RedisJobQueue(args.redis, claim_idle_s=args.claim_idle)
            print(f"worker {q.consumer} waiting for jobs on {q.stream}", file=sys.stderr)
        else:
            q = SqliteJobQueue(args.sqlite, claim_idle_s=args.claim_idle)
            print(f"worker {q.worker} waiting for jobs in {args.sqlite}", file=sys.stderr)
        try:
            await q.run_worker()
        finally:
            await q.close()

    asyncio.run(run())
    return 0


def _catalog(args: argparse.Namespace) -> int:
    from recording.catalog import Catalog, matches

    filters = {k: getattr(args, k) for k in ("school", "subject", "grade", "teacher", "date", "q")}
    found: list[dict[str, Any]] = [e for e in Catalog(args.out).entries() if matches(e, filters)]
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=1))
        return 0
    for e in found:
        minutes = e.get("duration_s", 0) / 60
        print(
            f"{e['date']}  {e['lesson']:<28} {e['school']:<12} {e['subject']:<10} "
            f"grade {e['grade']:<4} {e['teacher']}  {minutes:.0f} min  "
            f"{len(e.get('chapters', []))} chapters"
        )
    print(f"{len(found)} replay(s)")
    return 0


def _retention(args: argparse.Namespace) -> int:
    from recording.writer import enforce_retention

    deleted = enforce_retention(args.root, int(args.budget_gb * 1024**3))
    for d in deleted:
        print("deleted", d)
    print(f"{len(deleted)} uploaded recording(s) deleted")
    return 0
