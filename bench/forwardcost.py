"""Instructions per forwarded packet: a fixed number of packets through the fan-out path.

    valgrind --tool=callgrind --callgrind-out-file=OUT python bench/forwardcost.py --packets 0
    valgrind --tool=callgrind --callgrind-out-file=OUT python bench/forwardcost.py --packets 200

One video and one audio UpTrack (H.264 at 5 packets a frame with a 50-packet keyframe
every 60 frames, Opus at 50 a second, the order they arrive in) fan out to N
subscribers' DownTracks, each into the tree's own Wire: a real SRTP session and a real
asyncio UDP transport whose datagrams an unread local socket drops. The difference of
the two runs' instruction totals divided by packets x subscribers is the cost of one
forwarded packet in user space, whatever the machine's load (the kernel's sendto is not
counted). `--tree DIR` runs another tree's code (e.g. `git archive 2b1f57c | tar -x`);
`--mode base` is for a tree from before issue 8 (DownTrack(wire=...)), `adaptive` puts
the subscriber's pacer and audio lane in front of the wire (its estimate at 100 Mbit/s,
so that the pacer's fast path is what is measured). Without valgrind it prints the CPU
time per forwarded packet of each repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# This tree's bench helpers, before `--tree` puts another tree's media_server first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.master_stream import frame_payloads, master_tracks, rtp


def stream() -> Iterator[tuple[str, bytes]]:
    """(kind, packet) in arrival order, endless: 30 frames and 50 Opus packets a second."""
    vseq = aseq = frame = 0
    while True:
        payloads = frame_payloads(key=frame % 60 == 0)
        for i, payload in enumerate(payloads):
            vseq += 1
            last = i == len(payloads) - 1
            yield "video", rtp(102, vseq, frame * 3000, 1000, payload, marker=last)
        while aseq < (frame + 1) * 50 // 30:
            aseq += 1
            yield "audio", rtp(111, aseq, aseq * 960, 2000, bytes(100))
        frame += 1


async def run(mode: str, subscribers: int, packets: int, repeat: int) -> None:
    from pylibsrtp import Policy, Session

    from media_server.downtrack import DownTrack
    from media_server.wire import Wire

    loop = asyncio.get_running_loop()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    ups, sources = master_tracks()
    keep: list[Any] = []
    for i in range(subscribers):
        key = bytes((i + j) & 0xFF for j in range(30))
        session = Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        pair = types.SimpleNamespace(
            protocol=types.SimpleNamespace(transport=transport), remote_addr=peer.getsockname()
        )
        connection = types.SimpleNamespace(_nominated={1: pair})
        dtls = types.SimpleNamespace(
            state="connected",
            _tx_srtp=session,
            _rx_srtp=None,
            transport=types.SimpleNamespace(_connection=connection),
        )
        wire = Wire(dtls)  # type: ignore[arg-type]
        bandwidth = None
        if mode == "adaptive":
            from media_server.bandwidth import SubscriberBandwidth

            bandwidth = SubscriberBandwidth(wire, adaptive=True, initial_bps=100_000_000)
        for kind, source in sources.items():
            common: dict[str, Any] = {
                "ssrc": 10_000 + 2 * i + (kind == "audio"),
                "payload_type": ups[kind].payload_type,
                "mid": "0" if kind == "video" else "1",
                "mid_ext_id": 1,
                "ast_ext_id": 2 if kind == "video" else None,
            }
            if mode == "base":
                down = DownTrack(wire=wire, **common)  # type: ignore[call-arg]
            elif bandwidth is not None:
                down = DownTrack(
                    sink=bandwidth.sink_for(kind),
                    estimator=bandwidth.estimator,
                    repair=bandwidth.repair,
                    **common,
                )
            else:
                down = DownTrack(sink=wire, **common)
            down.bind(source)
            keep.append(down)
        keep.append(bandwidth)
    packets_in = stream()
    for _ in range(200):  # every DownTrack past the first keyframe
        kind, packet = next(packets_in)
        ups[kind].on_rtp(packet, time.perf_counter_ns())
    for _ in range(repeat):
        batch = [next(packets_in) for _ in range(packets)]
        cpu0 = time.process_time()
        for kind, packet in batch:
            ups[kind].on_rtp(packet, time.perf_counter_ns())
        cpu = time.process_time() - cpu0
        if packets:
            print(f"{mode}: {cpu * 1e6 / (packets * subscribers):.3f} us per forwarded packet")
        await asyncio.sleep(0.05)  # the pacer's bucket refills as time passes
    transport.close()
    peer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--mode", choices=("plain", "adaptive", "base"), default="plain")
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--packets", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    asyncio.run(run(args.mode, args.subscribers, args.packets, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
