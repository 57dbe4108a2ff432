"""The SFU's per-packet path in one process: what adaptation costs, without the network.

    python bench/hotpath.py --subscribers 150 --seconds 5 [--rounds 3] [--json]

One UpTrack per kind (H.264 720p at ~1.5 Mbit/s with a keyframe every 2 s, Opus at
50 packets/s) fans out to N DownTracks, each subscriber's sink protecting with a real
SRTP session and dropping the datagram (no socket). Packets arrive in real time, so
the pacer's clock and the control ticks (once a second per subscriber, staggered) run
as they do in the server. Adaptive (estimate, allocation, pacer, repair budget) and
plain (DownTrack straight into the wire) alternate within one run; CPU is the process's
own time over each window. bench/fanout.py measures the whole server; this isolates
the part issue 8 added, which fanout's run-to-run noise on a shared machine hides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pylibsrtp import Policy, Session

from bench.master_stream import frame_payloads, master_tracks, rtp
from media_server.bandwidth import SubscriberBandwidth
from media_server.downtrack import DownTrack

FPS = 30
AUDIO = bytes(100)


class SrtpSink:
    """The Wire's work without the socket: protect, then drop."""

    def __init__(self, index: int) -> None:
        key = bytes((index + i) & 0xFF for i in range(30))
        self._protect = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)).protect
        self.sent = 0

    def send_rtp(self, packet: bytes) -> None:
        self._protect(packet)
        self.sent += 1

    def send_rtcp(self, packet: bytes) -> None:
        pass


async def window(subscribers: int, seconds: float, adaptive: bool) -> dict[str, float]:
    ups, sources = master_tracks()
    subs = []
    for i in range(subscribers):
        sink = SrtpSink(i)
        bw = SubscriberBandwidth(sink, adaptive=adaptive)
        downs = []
        for kind, source in sources.items():
            down = DownTrack(
                sink=bw.sink_for(kind),
                ssrc=10_000 + 2 * i + (kind == "audio"),
                payload_type=ups[kind].payload_type,
                mid="0",
                mid_ext_id=1,
                ast_ext_id=2 if kind == "video" else None,
                estimator=bw.estimator,
                repair=bw.repair if adaptive else None,
            )
            down.bind(source)
            downs.append(down)
        subs.append((sink, bw, downs))
    loop = asyncio.get_running_loop()
    start = loop.time()
    next_tick = [start + i / subscribers for i in range(subscribers)]
    seq = {"video": 0, "audio": 0}
    frame = 0
    cpu0 = time.process_time()
    arrival = time.perf_counter_ns
    while (now := loop.time()) < start + seconds:
        key = frame % (2 * FPS) == 0
        for payload in frame_payloads(key):
            seq["video"] += 1
            ups["video"].on_rtp(rtp(102, seq["video"], frame * 3000, 1000, payload), arrival())
        while seq["audio"] < (frame + 1) * 50 // FPS:  # Opus: 50 packets a second
            seq["audio"] += 1
            ups["audio"].on_rtp(rtp(111, seq["audio"], seq["audio"] * 960, 2000, AUDIO), arrival())
        for i, (_sink, bw, downs) in enumerate(subs):
            if now >= next_tick[i]:
                next_tick[i] += 1.0
                bw.tick(downs, now)
        frame += 1
        await asyncio.sleep(max(0.0, start + frame / FPS - loop.time()))
    cpu = time.process_time() - cpu0
    sent = sum(s.sent for s, _, _ in subs)
    for _, bw, downs in subs:
        for d in downs:
            d.close()
        bw.close()
    return {"cpu_s": cpu, "sent": sent, "us_per_packet": cpu * 1e6 / max(1, sent)}


async def run(subscribers: int, seconds: float, rounds: int) -> dict:
    results: dict[str, list[float]] = {"plain": [], "adaptive": []}
    sent: dict[str, int] = {"plain": 0, "adaptive": 0}
    for _ in range(rounds):
        for name in ("plain", "adaptive"):
            w = await window(subscribers, seconds, adaptive=name == "adaptive")
            results[name].append(w["us_per_packet"])
            sent[name] += int(w["sent"])
    plain = statistics.median(results["plain"])
    adaptive = statistics.median(results["adaptive"])
    return {
        "subscribers": subscribers,
        "seconds": seconds,
        "rounds": rounds,
        "plain_us_per_packet": round(plain, 2),
        "adaptive_us_per_packet": round(adaptive, 2),
        "ratio": round(adaptive / plain, 3),
        "plain_runs": [round(x, 2) for x in results["plain"]],
        "adaptive_runs": [round(x, 2) for x in results["adaptive"]],
        "packets_sent": sent,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=150)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    result = asyncio.run(run(args.subscribers, args.seconds, args.rounds))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
