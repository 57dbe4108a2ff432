"""Call-on time: the master's call-on to another point's first decoded frame and audio.

    python bench/classroom.py [--callons 20] [--link clean|impaired] [--json]

A real server; the master and the called-on point A are aiortc clients in this process
(the master publishes a 320x240 VP8 teacher camera, A a 640x360 VP8 camera and an Opus
microphone); point B is an aiortc client in its own process, decoding everything it
receives and printing when the first video frame and the first audio frame of A arrive
after each call-on. With `--link impaired`, B runs in a network namespace behind a
user-space link of 1 Mbit/s each way and 300 ms RTT (tests/impair.py; root needed).
All on one machine: one wall clock.

Then the live director: B switches to receiving the program alone (what a point on a
thin link gets), and each call-on is timed from the master's request to B's first
decoded program frame of A's size (the cut happens at A's keyframe, which the director
asks for at once): `director_switch_p50_ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classroom_agent.client import ClientEvents, LessonClient, Publication, RemoteTrack
from tests.lesson_server import ROOT, start_server_process
from tests.media import PatternTrack, ToneTrack
from tongke.ice import use_host_addresses

NETNS = "classroom-bench"
TEACHER_SIZE = (320, 240)
POINT_SIZE = (640, 360)
SUBNET = 79
ROUND_TIMEOUT_S = 20.0


# -- point B, in its own process -------------------------------------------------------


async def child(server: str, room: str, token: str, watched: str) -> None:
    """Decode every received track; print the first frame of `watched` after each gap."""
    seen: dict[str, bool] = {}
    consumers: dict[str, asyncio.Task[None]] = {}
    program_width = [0]

    def emit(event: dict[str, Any]) -> None:
        print(json.dumps(event), flush=True)

    async def consume(remote: RemoteTrack) -> None:
        assert remote.track is not None
        while True:
            try:
                frame = await remote.track.recv()
            except Exception:
                return
            info = remote.info
            if info.get("source") == "program":
                width = getattr(frame, "width", 0)
                if width != program_width[0]:
                    program_width[0] = width
                    on_a = width == POINT_SIZE[0]
                    emit({"event": "program_a" if on_a else "program_other", "t": time.time()})
                continue
            if info.get("active") and info.get("classroom") == watched and not seen.get(remote.mid):
                seen[remote.mid] = True
                emit({"event": info.get("kind"), "t": time.time()})

    def changed(tracks: dict[str, RemoteTrack]) -> None:
        active = sorted(str(r.info.get("track")) for r in tracks.values() if r.active)
        emit({"event": "tracks", "active": active, "t": time.time()})
        for mid, remote in tracks.items():
            if not (remote.active and remote.info.get("classroom") == watched):
                seen[mid] = False
            if remote.track is not None and mid not in consumers:
                consumers[mid] = asyncio.ensure_future(consume(remote))
        if not any(r.active and r.info.get("classroom") == watched for r in tracks.values()):
            emit({"event": "gone", "t": time.time()})

    client = LessonClient(server, room, token, events=ClientEvents(on_tracks_changed=changed))
    await client.connect()
    emit({"event": "joined", "t": time.time()})
    await asyncio.Event().wait()


# -- the benchmark ---------------------------------------------------------------------


class ChildReader:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.seen: list[dict[str, Any]] = []  # every event, for a timeout's message
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                event = json.loads(line)
                self.seen.append(event)
                await self.events.put(event)
            except ValueError:
                continue

    async def until(self, kinds: set[str], after: float) -> dict[str, float]:
        got: dict[str, float] = {}
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        while not kinds <= set(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"point B never reported {kinds - set(got)}: {self.seen[-6:]}")
            try:
                event = await asyncio.wait_for(self.events.get(), left)
            except TimeoutError:
                continue
            if event["event"] in kinds and event["t"] >= after:
                got.setdefault(event["event"], event["t"])
        return got


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def run(callons: int, link: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tongke-classroom-"))
    # Made here: with a configured secret, nothing else creates the data directory before
    # the audit log's SQLite file is opened in it.
    (workdir / "server").mkdir()
    netlink = None
    if link == "impaired":
        from tests.impair import LinkSpec, NetnsLink, netns_available

        why = netns_available()
        if why is not None:
            raise SystemExit(f"--link impaired needs network namespaces: {why}")
        spec = LinkSpec.symmetric(rate_bps=1_000_000, rtt_ms=300)
        netlink = await NetnsLink(NETNS, spec, subnet=SUBNET, seed=3).start()
        server = start_server_process(
            workdir / "server", extra=["--host", "0.0.0.0", "--ice-address", netlink.host_address]
        )
        port = server.url.rsplit(":", 1)[1]
        local_url = f"http://127.0.0.1:{port}"
        b_url = f"http://{netlink.host_address}:{port}"
    else:
        server = start_server_process(workdir / "server")
        local_url = b_url = server.url
    use_host_addresses(["127.0.0.1"])
    room = "callon"
    server.open_room(room)
    master = LessonClient(local_url, room, server.token(room, "c-master", "master"))
    point_a = LessonClient(local_url, room, server.token(room, "p-a", "point", name="A"))
    proc = None
    video_ms: list[float] = []
    audio_ms: list[float] = []
    switch_ms: list[float] = []
    try:
        await master.connect()
        await master.publish(
            [Publication(PatternTrack(*TEACHER_SIZE), "teacher_camera", codec="vp8")]
        )
        await master.request({"type": "lesson_start"})
        await point_a.connect()
        await point_a.publish(
            [
                Publication(PatternTrack(*POINT_SIZE), "point_camera", codec="vp8"),
                Publication(ToneTrack(), "point_mic"),
            ]
        )
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            b_url,
            room,
            server.token(room, "p-b", "point", name="B"),
            "p-a",
            "" if netlink is not None else "127.0.0.1",
        ]
        if netlink is not None:
            argv = [*netlink.exec_prefix, *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
            # Kept with the run's files: why point B saw nothing, when it did not.
            stderr=(workdir / "point-b.log").open("wb"),
        )
        reader = ChildReader(proc)
        await reader.until({"joined"}, 0)
        # First every camera (the allocator fits them to B's link), then the program.
        await master.request({"type": "receive_mode", "mode": "all", "classroom": "p-b"})
        await asyncio.sleep(2.0)  # A's encoder and B's subscription settle
        for _ in range(callons):
            t0 = time.time()
            await master.request({"type": "call_on", "classroom": "p-a"})
            got = await reader.until({"video", "audio"}, t0)
            video_ms.append((got["video"] - t0) * 1000)
            audio_ms.append((got["audio"] - t0) * 1000)
            t1 = time.time()
            await master.request({"type": "call_off"})
            await reader.until({"gone"}, t1)
            await asyncio.sleep(0.5)
        # The director: B takes the program alone; each call-on is a cut to A.
        await master.request({"type": "receive_mode", "mode": "program", "classroom": "p-b"})
        await reader.until({"program_other"}, 0)
        for _ in range(callons):
            t0 = time.time()
            await master.request({"type": "call_on", "classroom": "p-a"})
            got = await reader.until({"program_a"}, t0)
            switch_ms.append((got["program_a"] - t0) * 1000)
            t1 = time.time()
            await master.request({"type": "call_off"})
            await reader.until({"program_other"}, t1)
            await asyncio.sleep(0.5)
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await point_a.close()
        await master.close()
        server.stop()
        if netlink is not None:
            netlink.close()
    return {
        "link": link,
        "callons": len(video_ms),
        "callon_video_p50_ms": percentile(video_ms, 0.5),
        "callon_video_p95_ms": percentile(video_ms, 0.95),
        "callon_audio_p50_ms": percentile(audio_ms, 0.5),
        "callon_audio_p95_ms": percentile(audio_ms, 0.95),
        "callon_video_mean_ms": round(statistics.mean(video_ms), 1) if video_ms else None,
        "director_switch_p50_ms": percentile(switch_ms, 0.5),
        "director_switch_p95_ms": percentile(switch_ms, 0.95),
        "director_switches": len(switch_ms),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, server, room, token, watched, address = sys.argv
        # On loopback aioice needs telling to offer 127.0.0.1; in the namespace it must not.
        use_host_addresses([address] if address else [])
        asyncio.run(child(server, room, token, watched))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--callons", type=int, default=20)
    parser.add_argument("--link", choices=["clean", "impaired"], default="clean")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(run(args.callons, args.link))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
