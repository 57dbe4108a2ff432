"""Benchmark the archiver end to end: a live lesson, the server killed mid-lesson.

    python bench/archive.py [--seconds 120] [--outage 5] [--json]

A real server process and two real agents in their own processes (the master classroom
with its synthetic cameras, courseware and microphone; one teaching point with camera
and microphone) run a lesson. Halfway through, the server is killed (SIGKILL) and
restarted `--outage` seconds later on the same port and data directory. At the end the
agents are stopped (they close and upload their safety copies) and the benchmark waits
for the archiver to put the lesson in the catalog, with no manual step.

What it prints (JSON with --json):
  max_gap_s            longest hole in any agent-published track of the joined
                       recording the replay was built from (target <= 0.5)
  av_offset_ms         largest difference, per classroom, between where its camera and
                       its microphone end on the lesson clock: audio that lost time
                       across the outage without a gap in its timestamps would end early
                       (target <= 40)
  catalog_after_end_s  from the lesson's end to its replay, with every classroom's copy
                       and the server's recording, in the catalog (target <= 60 for 10
                       minutes)
  replays              replays in the catalog for the lesson (must be 1)
  server_parts         server recordings joined into the lesson (one per classroom and
                       server run: 4 with the restart)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

import av

from classroom_agent.cli import agent_argv
from classroom_agent.client import LessonClient
from recording.catalog import Catalog
from recording.lesson import MERGED_DIR, LessonRecord
from recording.manifest import load_manifest
from tests.lesson_server import start_server_process

ROOM = "bench-archive"
MASTER = "bench-master"
POINT = "bench-point"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        s = c.streams[0]
        first = None
        out = []
        for p in c.demux(s):
            if p.pts is None:
                continue
            first = p.dts if first is None else first
            out.append(float((p.pts - first) * s.time_base))
    return sorted(out)


async def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tongke-bench-archive-"))
    data = work / "server"
    data.mkdir()
    port = _free_port()
    server = start_server_process(data, port=port)
    server.api(
        "POST",
        "/api/rooms",
        {"room": ROOM, "title": "基准课 Benchmark lesson", "master": MASTER, "points": [POINT]},
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    agents = []
    for classroom, role, name in ((MASTER, "master", "城关小学"), (POINT, "point", "小河教学点")):
        token = server.token(ROOM, classroom, role, name=name)
        argv = agent_argv(
            server.url,
            token,
            role,
            classroom=classroom,
            ice_addresses=["127.0.0.1"],
            recording_dir=work / f"agent-{classroom}",
        )
        agents.append(
            await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
        )
    try:
        await asyncio.sleep(args.seconds / 2)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        killed_at = time.monotonic()
        await asyncio.sleep(args.outage)
        server = await asyncio.to_thread(start_server_process, data, port=port)
        outage_s = time.monotonic() - killed_at
        await asyncio.sleep(args.seconds / 2)
        # The teacher ends the lesson: the agents upload, the server hands its copy over.
        console = LessonClient(server.url, ROOM, server.token(ROOM, MASTER, "master"))
        await console.connect()
        try:
            await console.request({"type": "lesson_end"})
        finally:
            await console.close()
        ended = time.monotonic()
        for proc in agents:
            await asyncio.wait_for(proc.wait(), 300)
        record = LessonRecord(data / "recordings", ROOM)
        catalog_s = None
        while time.monotonic() - ended < args.limit:
            lesson = record.load() if record.exists() else {}
            parts = lesson.get("parts", [])
            uploads = [p for p in parts if p.get("origin", "agent") == "agent"]
            if (
                lesson.get("state") == "packaged"
                and lesson.get("packaged_parts") == len(parts)
                and len(uploads) == 2
                and len(parts) > 2
            ):
                catalog_s = time.monotonic() - ended
                break
            await asyncio.sleep(0.5)
    finally:
        for proc in agents:
            if proc.returncode is None:
                proc.kill()
        server.stop()

    merged = record.directory / MERGED_DIR
    manifest = load_manifest(merged)
    gaps: dict[str, float] = {}
    ends: dict[str, dict[str, float]] = {}
    for track in manifest.tracks:
        times = _times(merged / track.file)
        gaps[track.id] = max((b - a for a, b in itertools.pairwise(times)), default=0)
        classroom = POINT if track.source.startswith((f"point:{POINT}", f"{POINT}:")) else MASTER
        end = (track.offset_s or 0.0) + times[-1] - times[0]
        kind = "video" if track.kind == "video" else "audio"
        # The classroom's main camera and microphone.
        ends.setdefault(classroom, {}).setdefault(kind, end)
    av_offset = max(
        abs(e["video"] - e["audio"]) for e in ends.values() if "video" in e and "audio" in e
    )
    replays = [e for e in Catalog(data / "replays").entries() if e["lesson"] == ROOM]
    return {
        "seconds": args.seconds,
        "outage_s": round(outage_s, 2),
        "max_gap_s": round(max(gaps.values()), 3),
        "max_gap_track": max(gaps, key=lambda k: gaps[k]),
        "av_offset_ms": round(av_offset * 1000, 1),
        "catalog_after_end_s": round(catalog_s, 1) if catalog_s is not None else None,
        "replays": len(replays),
        "server_parts": len([p for p in record.load()["parts"] if p.get("origin") == "server"]),
        "tracks": len(manifest.tracks),
        "workdir": str(work),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="lesson length")
    parser.add_argument("--outage", type=float, default=5, help="seconds the server is down")
    parser.add_argument("--limit", type=float, default=900, help="give up waiting after this")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        for k, v in out.items():
            print(f"{k:>20}: {v}")
    ok = out["replays"] == 1 and out["catalog_after_end_s"] is not None
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
