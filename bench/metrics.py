"""What watching costs: /metrics and the ops API scraped during a lesson, the SFU on one CPU.

    python bench/metrics.py --points 20 --seconds 15 [--rate 4] [--json]

One master publishes the pre-encoded 720p H.264 stream plus Opus (bench/media.py) to N
teaching points that count packets without decoding (bench/fanout.py's hooks). The same
lesson is measured twice for the same time: without scrapes, then with `--rate` scrapes
of /metrics a second, far more often than Prometheus does (every 15 s), so the cost shows above the
noise. Reports the scrape latency, the server CPU one scrape costs, and the forwarding
cost per packet in both windows.
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
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fanout import Counter, join_counted, proc_cpu_s, publish_recorded, wait_for_subscribers
from classroom_agent.client import LessonClient
from tests.lesson_server import start_server_process
from tongke.ice import use_host_addresses

TOKEN = "bench-metrics-token"


def scrape(url: str) -> tuple[float, int]:
    req = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return (time.perf_counter() - start) * 1000, len(body)


async def window(
    server_url: str, pid: int, stats: Callable[[], dict], seconds: float, rate: float
) -> dict:
    forwarded0 = stats()["packets_forwarded"]
    cpu0, t0 = proc_cpu_s(pid), time.monotonic()
    latencies: list[float] = []
    size = 0
    while time.monotonic() - t0 < seconds:
        if rate > 0:
            ms, size = await asyncio.to_thread(scrape, server_url)
            latencies.append(ms)
            await asyncio.sleep(max(0.0, 1 / rate - ms / 1000))
        else:
            await asyncio.sleep(0.2)
    cpu1, elapsed = proc_cpu_s(pid), time.monotonic() - t0
    forwarded = stats()["packets_forwarded"] - forwarded0
    return {
        "cpu_s": cpu1 - cpu0,
        "seconds": elapsed,
        "forwarded": forwarded,
        "scrapes": len(latencies),
        "latencies": latencies,
        "bytes": size,
    }


async def run(points: int, seconds: float, rate: float, quiet: bool) -> dict:
    use_host_addresses(["127.0.0.1"])
    multi_cpu = (os.cpu_count() or 1) > 1
    if multi_cpu:
        os.sched_setaffinity(0, {1})
    os.environ["TONGKE_METRICS_TOKEN"] = TOKEN
    server = start_server_process(
        Path(tempfile.mkdtemp(prefix="tongke-bench-")), cpu=0 if multi_cpu else None
    )
    pid = server.proc.pid
    room = "bench-metrics"
    server.open_room(room)
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    clients: list[LessonClient] = []
    try:
        await publish_recorded(server, room, clients)
        counters = [Counter() for _ in range(points)]
        await join_counted(server, room, counters, "point", clients, log)
        await wait_for_subscribers(server, room, points)
        log(f"{points} points receiving; measuring {seconds:.0f} s without, then with scrapes")
        quiet_w = await window(server.url, pid, server.stats, seconds, 0)
        busy_w = await window(server.url, pid, server.stats, seconds, rate)
        lat = sorted(busy_w["latencies"])
        extra_cpu = busy_w["cpu_s"] / busy_w["seconds"] - quiet_w["cpu_s"] / quiet_w["seconds"]
        return {
            "points": points,
            "seconds": seconds,
            "scrapes": busy_w["scrapes"],
            "scrape_ms_p50": round(statistics.median(lat), 2) if lat else None,
            "scrape_ms_p99": round(lat[int(0.99 * (len(lat) - 1))], 2) if lat else None,
            "metrics_bytes": busy_w["bytes"],
            "cpu_ms_per_scrape": round(extra_cpu * busy_w["seconds"] * 1000 / len(lat), 2)
            if lat
            else None,
            "us_per_packet_without_scrapes": round(
                quiet_w["cpu_s"] * 1e6 / max(1, quiet_w["forwarded"]), 2
            ),
            "us_per_packet_with_scrapes": round(
                busy_w["cpu_s"] * 1e6 / max(1, busy_w["forwarded"]), 2
            ),
        }
    finally:
        for client in reversed(clients):
            await client.close()
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rate", type=float, default=4, help="scrapes per second")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(run(args.points, args.seconds, args.rate, quiet=args.json))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>32}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
