"""Fan-out benchmark: one publisher, N subscribers, the SFU pinned to one CPU.

    python bench/fanout.py --subscribers 50 --seconds 30 [--json]
    python bench/fanout.py --subscribers 50 --seconds 20 --compare adaptive|recording --rounds 2 --json
    python bench/fanout.py --subscribers 150 --seconds 10 --baseline REV --rounds 6 --json
    python bench/fanout.py --subscribers 150 --seconds 10 --compare adaptive --feedback --json

The publisher sends a pre-encoded 1280x720 30 fps H.264 stream (~1.5 Mbit/s) plus Opus;
nothing is encoded at run time. Subscribers count packets (no decoding) and send no RTCP
(with `--feedback`, transport-cc reports of when each packet arrived, as the classroom
agent and browsers send, which the server's delay-based estimate reads). The server
runs in its own process on CPU 0 (taskset), this load generator on CPU 1.

`--compare adaptive` alternates servers with adaptive media off and on
(TONGKE_ADAPTIVE_MEDIA; `--compare-adaptive` says the same), `--compare recording` with
the server recorder off and on (TONGKE_SERVER_RECORDING), `--rounds` times each, and
reports the median of each and their ratio: on a shared machine one run of each is not a
comparison. Without `--compare` the server records (its default).

`--baseline REV` alternates a server run from git commit REV (extracted to a temporary
tree) with one run from this tree, the same load generator driving both: how much a change
costs per packet, measured within one run on one machine. Both servers run without the
server recorder (an older baseline has none, and it is not forwarding), each with its
other defaults; each run's loss is reported so that a cheaper server is not one that
dropped packets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiortc import RTCPeerConnection

from bench.media import PacketLoopTrack, encoded_h264, encoded_opus
from classroom_agent.client import ClientEvents, LessonClient, Publication
from tests.lesson_server import ServerProcess, start_server_process
from tongke.ice import use_host_addresses

JOIN_BATCH = 10


@dataclass
class Counter:
    """Counts RTP packets per SSRC from the plaintext header; never decrypts or decodes."""

    seqs: dict[int, set[int]] = field(default_factory=dict)
    last: dict[int, int] = field(default_factory=dict)
    wraps: dict[int, int] = field(default_factory=dict)
    counting: bool = False

    def on_datagram(self, data: bytes) -> None:
        if not self.counting or not 127 < data[0] < 192 or 192 <= data[1] <= 208:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        seq = int.from_bytes(data[2:4], "big")
        last = self.last.get(ssrc)
        wraps = self.wraps.get(ssrc, 0)
        if last is not None and seq < 0x1000 and last > 0xF000:
            wraps += 1
            self.wraps[ssrc] = wraps
        self.last[ssrc] = seq
        self.seqs.setdefault(ssrc, set()).add(seq + (wraps << 16))

    def received_expected(self) -> tuple[int, int]:
        received = expected = 0
        for seqs in self.seqs.values():
            received += len(seqs)
            expected += max(seqs) - min(seqs) + 1
        return received, expected


def counting_hooks(counter: Counter) -> ClientEvents:
    def replace_receivers(pc: RTCPeerConnection) -> None:
        async def no_receive(parameters: object) -> None:
            return None

        for transceiver in pc.getTransceivers():
            transceiver.receiver.receive = no_receive  # type: ignore[method-assign]
            connection = transceiver.receiver.transport.transport._connection
            if getattr(connection, "_bench_hooked", False):
                continue
            original = connection.data_received

            def data_received(data: bytes, component: int, original=original) -> None:
                counter.on_datagram(data)
                if not 127 < data[0] < 192:
                    original(data, component)  # ICE/DTLS still need aiortc

            connection.data_received = data_received
            connection._bench_hooked = True

    return ClientEvents(on_subscribe_transceivers=replace_receivers)


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Window:
    """One measured stretch of a fan-out: the server's CPU and what arrived."""

    t0: float
    t1: float
    cpu0: float
    cpu1: float
    forwarded: int
    received: int
    expected: int
    end: dict

    @property
    def elapsed(self) -> float:
        return self.t1 - self.t0

    @property
    def cpu_s(self) -> float:
        return self.cpu1 - self.cpu0

    @property
    def us_per_packet(self) -> float | None:
        return round(self.cpu_s * 1e6 / self.forwarded, 2) if self.forwarded else None

    @property
    def loss(self) -> float | None:
        return round(1 - self.received / self.expected, 5) if self.expected else None


async def publish_recorded(
    server: ServerProcess, room: str, clients: list[LessonClient]
) -> LessonClient:
    """The master classroom, publishing a recorded teacher camera (H.264) and microphone
    (Opus) in a loop: real content at a real rate with no encoder in the measurement."""
    master = LessonClient(server.url, room, server.token(room, "c-master", "master"))
    await master.connect()
    clients.append(master)
    await master.publish(
        [
            Publication(PacketLoopTrack(encoded_h264(), "video"), "teacher_camera", codec="h264"),
            Publication(PacketLoopTrack(encoded_opus(), "audio"), "classroom_mic", codec="opus"),
        ]
    )
    return master


async def join_counted(
    server: ServerProcess,
    room: str,
    counters: list[Counter],
    role: str,
    clients: list[LessonClient],
    log: Callable[..., None],
) -> None:
    """One subscriber per counter, classrooms s-0, s-1, ..., each counting what it receives."""
    # Ten join at a time: one after another, 150 joins took minutes on a busy machine.
    for first in range(0, len(counters), JOIN_BATCH):
        batch = [
            LessonClient(
                server.url,
                room,
                server.token(room, f"s-{i}", role),
                events=counting_hooks(counters[i]),
                transport_feedback=FEEDBACK,
            )
            for i in range(first, min(first + JOIN_BATCH, len(counters)))
        ]
        clients.extend(batch)
        await asyncio.gather(*(c.connect() for c in batch))
        log(f"{first + len(batch)}/{len(counters)} subscribers joined")


async def wait_for_subscribers(server: ServerProcess, room: str, subscribers: int) -> None:
    """Until every track has `subscribers` DownTracks past their first keyframe."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        subs = [t["subscribers"] for t in server.stats()["rooms"][room]["tracks"]]
        if subs and min(subs) >= subscribers:
            break
        await asyncio.sleep(0.5)
    # Every DownTrack past its first keyframe, and past its subscriber's unheard start:
    # ours never send RTCP, and get the whole lesson 5 s after joining
    # (media_server/bandwidth.py, UNHEARD_MAX_S).
    await asyncio.sleep(6)


async def measure(
    server: ServerProcess,
    room: str,
    pid: int,
    counters: list[Counter],
    subscribers: int,
    seconds: float,
    log: Callable[..., None],
) -> Window:
    """Wait until every track has `subscribers` DownTracks past their first keyframe,
    then measure `seconds` of forwarding: server CPU, packets forwarded and received."""
    await wait_for_subscribers(server, room, subscribers)
    server.api("POST", "/api/stats/reset-latency")
    for c in counters:
        c.counting = True
    start = server.stats()
    cpu0, t0 = proc_cpu_s(pid), time.monotonic()
    log(f"measuring for {seconds:.0f} s")
    await asyncio.sleep(seconds)
    cpu1, t1 = proc_cpu_s(pid), time.monotonic()
    for c in counters:
        c.counting = False
    end = server.stats()
    received = expected = 0
    for c in counters:
        r, e = c.received_expected()
        received, expected = received + r, expected + e
    forwarded = end["packets_forwarded"] - start["packets_forwarded"]
    return Window(t0, t1, cpu0, cpu1, forwarded, received, expected, end)


async def run(subscribers: int, seconds: float, quiet: bool, root: Path | None = None) -> dict:
    """`root`: the source tree the server runs from (default: this one)."""
    use_host_addresses(["127.0.0.1"])
    multi_cpu = (os.cpu_count() or 1) > 1
    if multi_cpu:
        os.sched_setaffinity(0, {1})
    data_dir = Path(tempfile.mkdtemp(prefix="tongke-bench-"))
    server = start_server_process(
        data_dir, cpu=0 if multi_cpu else None, **({"root": root} if root else {})
    )
    pid = server.proc.pid  # taskset execs the server, so this is the server itself
    room = "bench"
    server.open_room(room)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    clients: list[LessonClient] = []
    try:
        await publish_recorded(server, room, clients)
        await asyncio.sleep(2)
        rss_before = proc_rss_mb(pid)
        counters = [Counter() for _ in range(subscribers)]
        await join_counted(server, room, counters, "observer", clients, log)
        window = await measure(server, room, pid, counters, subscribers, seconds, log)
        end_stats = window.end
        rss_after = proc_rss_mb(pid)
        return {
            "subscribers": subscribers,
            "seconds": round(window.elapsed, 2),
            "packets_forwarded": window.forwarded,
            "pps": round(window.forwarded / window.elapsed, 1),
            "server_cpu_s": round(window.cpu_s, 3),
            "us_per_packet": window.us_per_packet,
            "loss": window.loss,
            "latency_p50_ms": end_stats["latency_ms"]["p50"],
            "latency_p99_ms": end_stats["latency_ms"]["p99"],
            "server_rss_mb": round(rss_after, 1),
            "rss_growth_per_subscriber_mb": round(
                (rss_after - rss_before) / max(1, subscribers), 3
            ),
            "server_decoders": end_stats["decoders"],
            "server_encoders": end_stats["encoders"],
        }
    finally:
        for client in reversed(clients):
            await client.close()
        server.stop()


# Whether the subscribers report transport-cc (`--feedback`), as the classroom agent and
# browsers do. Off by default, as in every figure before it existed: a subscriber here
# counts packets and sends no RTCP, so the cost measured is forwarding's.
FEEDBACK = False

# What `--compare` can switch off and on (the server reads them from its environment).
SETTINGS = {"adaptive": "TONGKE_ADAPTIVE_MEDIA", "recording": "TONGKE_SERVER_RECORDING"}


def compare(setting: str, subscribers: int, seconds: float, rounds: int, quiet: bool) -> dict:
    variable = SETTINGS[setting]
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(rounds):
        for mode in ("off", "on"):
            os.environ[variable] = "1" if mode == "on" else "0"
            runs[mode].append(asyncio.run(run(subscribers, seconds, quiet)))
    os.environ.pop(variable, None)
    return {
        "compared": setting,
        "subscribers": subscribers,
        "seconds": seconds,
        "rounds": rounds,
        **alternated(runs, "off", "on"),
    }


def alternated(runs: dict[str, list[dict]], first: str, second: str) -> dict:
    """Two servers' alternating runs: each one's median cost per packet, the second's
    ratio to the first, every run, each one's worst loss (a cheaper server must not be
    one that dropped packets) and its median packets forwarded a second (a server that
    paused a subscriber's video forwards less, and its cost per packet reads higher)."""
    median = {
        k: statistics.median(r["us_per_packet"] or 0.0 for r in runs[k]) for k in (first, second)
    }
    return {
        f"pps_{first}": statistics.median(r["pps"] for r in runs[first]),
        f"pps_{second}": statistics.median(r["pps"] for r in runs[second]),
        f"us_per_packet_{first}": round(median[first], 2),
        f"us_per_packet_{second}": round(median[second], 2),
        f"ratio_{second}_{first}": (
            round(median[second] / median[first], 3) if median[first] else None
        ),
        f"{first}_runs": [r["us_per_packet"] for r in runs[first]],
        f"{second}_runs": [r["us_per_packet"] for r in runs[second]],
        f"loss_{first}": max(r["loss"] or 0.0 for r in runs[first]),
        f"loss_{second}": max(r["loss"] or 0.0 for r in runs[second]),
    }


def extract(rev: str) -> Path:
    """Commit `rev` of this repository as a plain tree in a temporary directory."""
    repo = Path(__file__).resolve().parent.parent
    tree = Path(tempfile.mkdtemp(prefix="tongke-baseline-"))
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def against_baseline(rev: str, subscribers: int, seconds: float, rounds: int, quiet: bool) -> dict:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    tree = extract(rev)
    runs: dict[str, list[dict]] = {"baseline": [], "this": []}
    os.environ[SETTINGS["recording"]] = "0"
    try:
        for _ in range(rounds):
            runs["baseline"].append(asyncio.run(run(subscribers, seconds, quiet, root=tree)))
            runs["this"].append(asyncio.run(run(subscribers, seconds, quiet)))
    finally:
        os.environ.pop(SETTINGS["recording"], None)
        shutil.rmtree(tree, ignore_errors=True)
    return {
        "baseline": commit,
        "subscribers": subscribers,
        "seconds": seconds,
        "rounds": rounds,
        **alternated(runs, "baseline", "this"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--compare",
        choices=sorted(SETTINGS),
        help="alternate servers with this setting off and on (medians and their ratio)",
    )
    parser.add_argument(
        "--compare-adaptive", action="store_true", help="the same as --compare adaptive"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="alternate a server run from this git commit with this tree's (medians, ratio)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--feedback",
        action="store_true",
        help="subscribers report when each packet arrived (transport-cc), as points do",
    )
    args = parser.parse_args()
    global FEEDBACK
    FEEDBACK = args.feedback
    setting = "adaptive" if args.compare_adaptive else args.compare
    if setting and args.baseline:
        parser.error("--baseline and --compare each alternate two servers: choose one")
    if args.baseline:
        result = against_baseline(
            args.baseline, args.subscribers, args.seconds, args.rounds, quiet=args.json
        )
    elif setting:
        result = compare(setting, args.subscribers, args.seconds, args.rounds, quiet=args.json)
    else:
        result = asyncio.run(run(args.subscribers, args.seconds, quiet=args.json))
    result["feedback"] = args.feedback
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>30}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
