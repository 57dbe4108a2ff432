"""Soak: one publishing master and N subscribers for M minutes; nothing may creep.

    python -m bench.soak --minutes 30 --subscribers 100 [--json]

The master publishes the pre-encoded 720p H.264 stream and Opus of bench/fanout.py;
subscribers count packets without decoding. The server's RSS is sampled every 10 s;
growth is measured from the end of the warm-up (the first fifth of the run, at least one
minute when the run is long enough) to the end. Targets (issue 7): RSS growth < 5 %,
0 loss, 0 server errors (`internal` signalling errors: each is a logged traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fanout import Counter, join_counted, proc_rss_mb, publish_recorded, wait_for_subscribers
from classroom_agent.client import LessonClient
from tests.lesson_server import start_server_process
from tongke.ice import use_host_addresses

SAMPLE_S = 10.0


def udp_counters() -> dict[str, int]:
    """The kernel's UDP counters (whole machine): a receive buffer that overflowed means
    a receiver did not read in time, which is the load generator's loss, not the SFU's."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = [ln for ln in lines if ln[0] == "Udp:"][:2]
    return {n: int(v) for n, v in zip(names[1:], values[1:], strict=True)}


def tracebacks(log: Path) -> int:
    """Tracebacks the server logged (any: signalling, media callbacks, tasks)."""
    if not log.exists():
        return 0
    return log.read_text(errors="replace").count("Traceback (most recent call last)")


def server_sent(stats: dict, room: str) -> tuple[int, int]:
    """Packets the server sent to the subscribers so far, and what its pacers dropped."""
    sent = dropped = 0
    for p in stats["rooms"][room]["receiving"]:
        if p["classroom"].startswith("s-"):
            sent += sum(t["packets"] or 0 for t in p["tracks"])
            dropped += (p["downlink"] or {}).get("paced_dropped", 0)
    return sent, dropped


@dataclass
class StreamCounter(Counter):
    """Counts packets and the sequence span per SSRC in constant memory."""

    count: dict[int, int] = field(default_factory=dict)
    first: dict[int, int] = field(default_factory=dict)
    top: dict[int, int] = field(default_factory=dict)

    def on_datagram(self, data: bytes) -> None:
        if not self.counting or not 127 < data[0] < 192 or 192 <= data[1] <= 208:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        seq = int.from_bytes(data[2:4], "big")
        top = self.top.get(ssrc)
        if top is None:
            ext = seq
            self.first[ssrc] = ext
        else:
            # Unwrapped against the highest number seen, by the signed 16-bit distance:
            # a late packet (a repaired loss) from before a wrap is an old number, not a
            # new wrap (counting it as one made 65,536 packets "lost" at once).
            ext = top + ((seq - top + 0x8000) & 0xFFFF) - 0x8000
            self.first[ssrc] = min(self.first[ssrc], ext)
        self.count[ssrc] = self.count.get(ssrc, 0) + 1
        self.top[ssrc] = ext if top is None else max(top, ext)

    def received_expected(self) -> tuple[int, int]:
        received = sum(self.count.values())
        expected = sum(self.top[s] - self.first[s] + 1 for s in self.count)
        return received, expected


async def run(minutes: float, subscribers: int, quiet: bool) -> dict[str, object]:
    use_host_addresses(["127.0.0.1"])
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    multi_cpu = (os.cpu_count() or 1) > 1
    if multi_cpu:
        os.sched_setaffinity(0, {1})
    data_dir = Path(tempfile.mkdtemp(prefix="tongke-soak-"))
    server_log = data_dir / "server.log"
    server = start_server_process(data_dir, cpu=0 if multi_cpu else None, stderr=server_log)
    pid = server.proc.pid
    room = "soak"
    server.open_room(room)
    clients: list[LessonClient] = []
    try:
        await publish_recorded(server, room, clients)
        counters = [StreamCounter() for _ in range(subscribers)]
        await join_counted(server, room, counters, "observer", clients, log)
        await wait_for_subscribers(server, room, subscribers)
        for c in counters:
            c.counting = True
        udp_before = udp_counters()
        sent_before, paced_before = server_sent(server.stats(), room)
        total_s = minutes * 60
        warmup_s = min(max(total_s / 5, min(60.0, total_s / 2)), total_s / 2)
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        log(f"soaking {subscribers} subscribers for {minutes} min (warm-up {warmup_s:.0f} s)")
        while (elapsed := time.monotonic() - t0) < total_s:
            samples.append((round(elapsed, 1), round(proc_rss_mb(pid), 2)))
            await asyncio.sleep(min(SAMPLE_S, total_s - elapsed))
        for c in counters:
            c.counting = False
        sent_after, paced_after = server_sent(server.stats(), room)
        udp_after = udp_counters()
        samples.append((round(time.monotonic() - t0, 1), round(proc_rss_mb(pid), 2)))
        after_warmup = next(rss for at, rss in samples if at >= warmup_s)
        final = samples[-1][1]
        received = expected = 0
        for c in counters:
            r, e = c.received_expected()
            received, expected = received + r, expected + e
        stats = server.stats()
        internal = stats.get("signalling_errors", {}).get("internal", 0)
        growth = (final - after_warmup) / after_warmup
        loss = 1 - received / expected if expected else None
        return {
            "minutes": minutes,
            "subscribers": subscribers,
            "warmup_s": round(warmup_s),
            "rss_after_warmup_mb": after_warmup,
            "rss_final_mb": final,
            "rss_growth": round(growth, 4),
            "packets_received": received,
            "packets_expected": expected,
            "loss": round(loss, 6) if loss is not None else None,
            # Where lost packets went: the server's pacers (deliberate, on its side), or
            # the kernel's receive buffers (receivers that could not keep up).
            "server_sent": sent_after - sent_before,
            "server_paced_dropped": paced_after - paced_before,
            "udp_rcvbuf_errors_machine": udp_after["RcvbufErrors"] - udp_before["RcvbufErrors"],
            "udp_sndbuf_errors_machine": udp_after["SndbufErrors"] - udp_before["SndbufErrors"],
            "internal_errors": internal,
            "server_tracebacks": tracebacks(server_log),
            "server_log": str(server_log),
            "server_alive": server.proc.poll() is None,
            "rss_samples_mb": [rss for _, rss in samples],
            "ok": growth < 0.05
            and loss == 0
            and internal == 0
            and tracebacks(server_log) == 0
            and server.proc.poll() is None,
        }
    finally:
        for client in reversed(clients):
            await client.close()
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(run(args.minutes, args.subscribers, quiet=args.json))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
