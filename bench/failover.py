"""Failover: a media node killed mid-lesson -> media flowing again at the subscriber.

    python bench/failover.py [--trials 3] [--json]

Two measurements, each with a master classroom agent publishing (320x180 H.264, 15 fps,
Opus) and a teaching-point agent receiving; the clock runs from SIGKILL of the process
hosting the lesson to the first report (every 0.1 s) in which the point, reconnected,
has new camera frames:

- `failover_s`: two hosts (network namespaces `cl-b-n1`/`cl-b-n2`, own addresses, a
  redis-server of the bench's own), `tongke serve --redis-url`, each agent given both
  servers' URLs; the node hosting the lesson is killed. Needs root for namespaces
  (without them only the worker figure is measured and `failover_s` is null).
- `worker_failover_s`: one host, `tongke serve --workers 2`; the worker hosting the
  lesson is killed and the front re-places the room on the other worker.

Per node (`--workers 1` vs `--workers 2`, one host): time until listening, 30 sequential
observer joins (p50, through the front for workers), idle RSS of the front and workers.

Prints the figures (median and every trial) and, with --json, one JSON object.
Target (issue 12): failover_s <= 5. bench/cluster.py runs `node_trials` too, so that the
cascade benchmark reports all of issue 12's cluster figures in one object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classroom_agent.agent import ClassroomAgent
from classroom_agent.client import LessonClient
from tests.cluster_hosts import Hosts, kill
from tests.impair import netns_available
from tests.lesson_server import ServerProcess, start_server_process
from tests.media import wait_for
from tests.test_agent import running, small_master
from tests.test_workers import camera_frames, point_agent
from tongke.ice import use_host_addresses


async def one_failover(
    servers: list[ServerProcess], urls: list[str], kill_owner: Callable[[str], None]
) -> float:
    entry = servers[0]
    room = f"failover-{int(time.time() * 1000)}"
    entry.open_room(room)
    master_cfg = small_master(entry, room)
    master_cfg.server_url = ",".join(urls)
    reports: list[dict[str, Any]] = []
    point = point_agent(entry, room, reports)
    point.report_interval_s = 0.1
    point.config.server_url = ",".join(reversed(urls))
    point._servers = point.config.server_urls
    async with running(ClassroomAgent(master_cfg, record=False)), running(point):
        await wait_for(lambda: camera_frames(reports) > 30, 60, "the lesson to flow")
        before = camera_frames(reports)
        kill_owner(room)
        killed = time.monotonic()
        await wait_for(
            lambda: point.status.connects >= 2 and camera_frames(reports) > before + 2,
            60,
            "media again after the kill",
        )
        return time.monotonic() - killed


async def worker_trials(trials: int, tmp: Path) -> list[float]:
    out = []
    for i in range(trials):
        server = start_server_process(tmp / f"w{i}", extra=["--workers", "2"])
        try:

            def kill_worker(room: str, server: ServerProcess = server) -> None:
                cluster = server.api("GET", "/api/cluster")
                owner = cluster["rooms"][room]
                pid = next(n["pid"] for n in cluster["nodes"] if n["id"] == owner)
                os.kill(pid, signal.SIGKILL)

            out.append(await one_failover([server], [server.url], kill_worker))
        finally:
            server.stop()
    return out


async def node_trials(trials: int, tmp: Path) -> list[float]:
    out = []
    for i in range(trials):
        hosts = Hosts("b", 2, subnet=232).start()
        use_host_addresses(["127.0.0.1", hosts.gateway])
        nodes: list[ServerProcess] = []
        try:
            nodes = [hosts.serve(n, tmp / f"n{i}-{n}") for n in (1, 2)]

            def kill_node(room: str, nodes: list[ServerProcess] = nodes) -> None:
                owner = nodes[0].api("GET", "/api/cluster")["rooms"][room]
                kill(nodes[0] if owner == "host1" else nodes[1])

            out.append(await one_failover(nodes, [n.url for n in nodes], kill_node))
        finally:
            use_host_addresses(["127.0.0.1"])
            for n in nodes:
                n.stop()
            hosts.close()
    return out


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return 0


async def per_node(tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for workers in (1, 2):
        started = time.monotonic()
        server = start_server_process(tmp / f"p{workers}", extra=["--workers", str(workers)])
        out[f"start_s_workers{workers}"] = round(time.monotonic() - started, 2)
        try:
            server.open_room("per-node")
            joins = []
            for i in range(30):
                client = LessonClient(
                    server.url, "per-node", server.token("per-node", f"v{i}", "observer")
                )
                t = time.perf_counter()
                await client.connect()
                joins.append((time.perf_counter() - t) * 1000)
                await client.close()
            out[f"join_ms_p50_workers{workers}"] = round(statistics.median(joins), 1)
            children = [
                int(p)
                for p in Path(f"/proc/{server.proc.pid}/task").glob("*/children")
                for p in p.read_text().split()
            ]
            out[f"rss_mb_workers{workers}"] = {
                "front": rss_mb(server.proc.pid),
                "workers": [rss_mb(c) for c in children],
            }
        finally:
            server.stop()
    return out


def node_failover_unavailable() -> str | None:
    """Why `node_trials` cannot run here (None: it can): namespaces and a redis-server."""
    reason = netns_available()
    if reason is None and shutil.which("redis-server") is None:
        reason = "redis-server is not installed"
    return reason


async def run(trials: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tongke-failover-") as tmp:
        use_host_addresses(["127.0.0.1"])
        node = await per_node(Path(tmp))
        workers = await worker_trials(trials, Path(tmp))
        reason = node_failover_unavailable()
        nodes = await node_trials(trials, Path(tmp)) if reason is None else []
    return {
        "failover_s": round(statistics.median(nodes), 2) if nodes else None,
        "failover_trials_s": [round(x, 2) for x in nodes],
        "worker_failover_s": round(statistics.median(workers), 2),
        "worker_failover_trials_s": [round(x, 2) for x in workers],
        "netns": reason or "yes",
        "target_s": 5.0,
        **node,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(run(args.trials))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
