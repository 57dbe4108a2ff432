"""Cascade benchmark: one lesson fanned out on its origin, then through an edge node.

    python bench/cluster.py --subscribers 50 --seconds 20 [--json]

Two `tongke serve` nodes, each in its own network namespace (tests/node_netns.py:
veths, their own addresses, a server-to-server line). The publisher sends bench/fanout's
pre-encoded 720p H.264 + Opus to the origin. First N subscribers receive it from the
origin itself (the local fan-out); then N subscribers receive it from the edge, which
gets one copy over the relay link. CPU per forwarded packet is bench/fanout.py's
measure (server CPU time / packets forwarded to subscribers), taken on the node doing
the fan-out; both nodes are pinned to CPU 0, this load generator to CPU 1.

    edge_overhead_ratio   edge us/packet / origin us/packet (target <= 1.10)
    relay_latency_p50_ms  one-way delay of the relay link, origin's send to the edge's
                          receive (the clocks agree: one host) (target <= 2 ms)
    loss                  what the edge's subscribers did not receive
    failover_s            from bench/failover.py when it exists (the cluster work)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fanout import Counter, counting_hooks, measure, proc_cpu_s, proc_rss_mb
from bench.media import PacketLoopTrack, encoded_h264, encoded_opus
from classroom_agent.client import LessonClient, Publication
from tests.lesson_server import ServerProcess
from tests.node_netns import NodePair, netns_available
from tongke.ice import use_host_addresses

Log = Any
ROOT = Path(__file__).resolve().parent.parent


async def fan_out(
    server: ServerProcess, pid: int, room: str, subscribers: int, seconds: float, log: Log
) -> tuple[dict[str, Any], list[LessonClient]]:
    """N counting subscribers on `server`; its CPU per forwarded packet over `seconds`."""
    clients: list[LessonClient] = []
    counters: list[Counter] = []
    for i in range(subscribers):
        counter = Counter()
        c = LessonClient(
            server.url,
            room,
            server.token(room, f"p-{i}", "observer"),
            events=counting_hooks(counter),
        )
        await c.connect()
        clients.append(c)
        counters.append(counter)
        if (i + 1) % 10 == 0:
            log(f"{i + 1}/{subscribers} subscribers joined")
    w = await measure(server, room, pid, counters, subscribers, seconds, log)
    return {
        "packets_forwarded": w.forwarded,
        "pps": round(w.forwarded / w.elapsed, 1),
        "cpu_s": round(w.cpu_s, 3),
        "us_per_packet": w.us_per_packet,
        "loss": w.loss,
        "sfu_latency_p50_ms": w.end["latency_ms"]["p50"],
        "rss_mb": round(proc_rss_mb(pid), 1),
    }, clients


async def close_all(clients: list[LessonClient]) -> None:
    for c in reversed(clients):
        await c.close()


def failover_figure() -> tuple[float | None, str]:
    """bench/failover.py's recovery time, when that benchmark exists on this tree."""
    script = ROOT / "bench" / "failover.py"
    if not script.exists():
        return None, "bench/failover.py is not on this branch (the cluster work adds it)"
    done = subprocess.run(
        [sys.executable, str(script), "--json"], capture_output=True, text=True, cwd=ROOT
    )
    try:
        return float(json.loads(done.stdout.strip().splitlines()[-1])["failover_s"]), str(script)
    except (ValueError, KeyError, IndexError, TypeError):
        return None, f"bench/failover.py gave no failover_s (exit {done.returncode})"


async def run(subscribers: int, seconds: float, quiet: bool, failover: bool) -> dict[str, Any]:
    reason = netns_available()
    if reason:
        raise SystemExit(f"bench/cluster.py needs network namespaces: {reason}")
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    video, audio = encoded_h264(), encoded_opus()
    multi_cpu = (os.cpu_count() or 1) > 1
    pair = NodePair("cs-bench", subnet=172).start()
    clients: list[LessonClient] = []
    try:
        data = Path(tempfile.mkdtemp(prefix="tongke-cluster-"))
        origin = pair.start_server("origin", data / "origin")
        edge = pair.start_server("edge", data / "edge")
        pids = {"origin": origin.proc.pid, "edge": edge.proc.pid}  # exec'd: the servers
        use_host_addresses(list(pair.client_side.values()))

        if multi_cpu:
            # Both nodes on CPU 0, this load generator on CPU 1, in both runs: the kernel
            # delivers a veth packet on the sender's CPU, and a saturated CPU 1 would
            # delay and drop the relay's packets in the kernel, not in Tongke.
            for pid in pids.values():
                os.sched_setaffinity(pid, {0})
            os.sched_setaffinity(0, {1})

        async def publish(room: str) -> LessonClient:
            master = LessonClient(origin.url, room, origin.token(room, "c-master", "master"))
            await master.connect()
            await master.publish(
                [
                    Publication(PacketLoopTrack(video, "video"), "teacher_camera", codec="h264"),
                    Publication(PacketLoopTrack(audio, "audio"), "classroom_mic", codec="opus"),
                ]
            )
            return master

        log("local fan-out on the origin")
        origin.open_room("local")
        clients = [await publish("local")]
        await asyncio.sleep(2)
        local, subs = await fan_out(origin, pids["origin"], "local", subscribers, seconds, log)
        await close_all(subs + clients)
        clients = []

        log("the same fan-out on the edge, through the relay")
        origin.open_room("cascade")
        edge.api("POST", "/api/relay/edges", {"room": "cascade", "origin": pair.line_url("origin")})
        clients = [await publish("cascade")]
        await asyncio.sleep(2)
        origin_cpu0 = proc_cpu_s(pids["origin"])
        cascade, subs = await fan_out(edge, pids["edge"], "cascade", subscribers, seconds, log)
        origin_cpu1 = proc_cpu_s(pids["origin"])
        clients += subs
        link = next(lk for lk in edge.api("GET", "/api/relay")["links"])
        dropped = edge.api("GET", "/api/relay")["dropped"]
        await close_all(clients)
        clients = []
    finally:
        await close_all(clients)
        pair.close()
    failover_s, failover_note = failover_figure() if failover else (None, "not run (--no-failover)")
    ratio = (
        round(cascade["us_per_packet"] / local["us_per_packet"], 3)
        if cascade["us_per_packet"] and local["us_per_packet"]
        else None
    )
    return {
        "subscribers": subscribers,
        "seconds": seconds,
        "edge_overhead_ratio": ratio,
        "relay_latency_p50_ms": link["delay_ms"]["p50"],
        "relay_latency_p99_ms": link["delay_ms"]["p99"],
        "loss": cascade["loss"],
        "failover_s": failover_s,
        "failover_note": failover_note,
        "local": local,
        "edge": cascade,
        "origin_cpu_s_during_edge_run": round(origin_cpu1 - origin_cpu0, 3),
        "relay_datagrams": link["datagrams_in"],
        "relay_dropped": dropped,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--no-failover", action="store_true", help="skip bench/failover.py")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(run(args.subscribers, args.seconds, args.json, not args.no_failover))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>30}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
