"""Does the master agent encode in real time? Its own encoders, measured alone.

    python bench/agent.py [--receive all|2mbit|1mbit] [--hogs N] [--seconds 20] [--json]

Builds the master agent's default configuration with the high-entropy synthetic sources
(``--synthetic noise``: teacher camera in three layers, board camera in two, courseware
as screen content, Opus audio), starts every track as the agent does, and reads each one
through a feed whose packets aiortc's packetizer splits into RTP payloads (the sender's
cost, short of SRTP and the socket). ``--receive`` makes the layers a single point of
that link does not receive idle, as the SFU's ``publish_feedback`` would with nobody else
watching and no server recording (which takes every source's top layer): ``2mbit``
keeps the teacher's 720p layer, the courseware, the board's lowest layer and audio;
``1mbit`` the teacher's 360p layer, the courseware and audio. ``--hogs N`` runs N busy
processes beside it (a loaded machine: the SFU, Chromium and the link relay of
bench/rural.py share it).

Per layer over the measured window: frame rate achieved and configured, bitrate sent and
targeted, mean encode time per frame (scaling included), mean wait between capture and
encode, source frames dropped because the encoder had not taken the previous one; for the
process, CPU in percent of one core, and the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiortc.codecs import get_encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from classroom_agent.config import AgentConfig, PublishedTrack, build_tracks, default_sources
from classroom_agent.tracks import TrackFeed

# What the SFU forwards to one point on each link (issue 8's targets); the rest is idle.
RECEIVED: dict[str, set[tuple[str, str]] | None] = {
    "all": None,
    "2mbit": {("teacher_camera", "h"), ("board_camera", "l"), ("courseware", "h")},
    "1mbit": {("teacher_camera", "m"), ("courseware", "h")},
}


def _hog(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


def _codec(published: PublishedTrack) -> RTCRtpCodecParameters:
    if published.codec == "opus":
        return RTCRtpCodecParameters(
            mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
        )
    mime = "video/H264" if published.codec == "h264" else "video/VP8"
    return RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=102)


async def _drain(feed: TrackFeed, published: PublishedTrack, counts: dict[str, int]) -> None:
    packer = get_encoder(_codec(published))
    try:
        while True:
            packet = await feed.recv()
            payloads, _ = packer.pack(packet)
            counts["rtp"] += len(payloads)
    except MediaStreamError:
        pass


def _snapshot(tracks: list[PublishedTrack]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p.source, p.layer): p.track.stats() for p in tracks}


def encode_figures(a: dict[str, Any], b: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """What one layer's encoder did between two readings of its counters `elapsed` apart:
    rate, dropped frames and, for video, frames per second and time per frame."""
    row: dict[str, Any] = {
        "kbps": round((b["bytes"] - a["bytes"]) * 8 / elapsed / 1000, 1),
        "dropped_frames": b["dropped"] - a["dropped"],
    }
    if b["kind"] == "audio":
        # 50 a second in real time: fewer, and the receivers' "missing" audio was never sent.
        row["packets_per_second"] = round((b["frames"] - a["frames"]) / elapsed, 2)
    if b["kind"] == "video":
        frames = b["encoded_frames"] - a["encoded_frames"]
        row.update(
            {
                "size": f"{b['width']}x{b['height']}",
                "fps": round(frames / elapsed, 1),
                "fps_configured": b["fps"],
                "encode_ms": round((b["encode_s"] - a["encode_s"]) / frames * 1000, 2)
                if frames
                else None,
                "queue_ms": round((b["queue_s"] - a["queue_s"]) / frames * 1000, 2)
                if frames
                else None,
            }
        )
    return row


async def measure(receive: str, warmup: float, seconds: float) -> dict[str, Any]:
    config = AgentConfig(role="master", synthetic=True, synthetic_pattern="noise")
    config.sources = default_sources("master", synthetic=True, pattern="noise")
    tracks = build_tracks(config)
    wanted = RECEIVED[receive]
    counts = {"rtp": 0}
    drains = []
    for published in tracks:
        published.track.start()
        drains.append(asyncio.ensure_future(_drain(published.track.feed(), published, counts)))
        if wanted is not None and published.kind == "video":
            published.track.set_idle((published.source, published.layer) not in wanted)
    try:
        await asyncio.sleep(warmup)
        before, cpu0, t0, rtp0 = _snapshot(tracks), time.process_time(), time.monotonic(), 0
        rtp0 = counts["rtp"]
        await asyncio.sleep(seconds)
        after, cpu1, t1 = _snapshot(tracks), time.process_time(), time.monotonic()
    finally:
        for published in tracks:
            published.track.stop()
        for published in tracks:
            await published.track.drained()
        for source in {id(p.media_source): p.media_source for p in tracks}.values():
            await asyncio.to_thread(source.stop)
        for task in drains:
            task.cancel()
    elapsed = t1 - t0
    layers = []
    for published in tracks:
        a, b = (
            before[(published.source, published.layer)],
            after[(published.source, published.layer)],
        )
        row: dict[str, Any] = {
            "source": published.source,
            "layer": published.layer,
            "kind": published.kind,
            "target_kbps": b.get("target_kbps", published.bitrate_kbps),
            **encode_figures(a, b, elapsed),
        }
        if published.kind == "video":
            row["idle"] = b["idle"]
        layers.append(row)
    return {
        "receive": receive,
        "seconds": round(elapsed, 1),
        "cpu_pct_of_one_core": round(100 * (cpu1 - cpu0) / elapsed, 1),
        "rtp_packets_per_s": round((counts["rtp"] - rtp0) / elapsed),
        "layers": layers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receive", default="all", choices=list(RECEIVED))
    parser.add_argument("--hogs", type=int, default=0, help="busy processes beside the agent")
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    stop = multiprocessing.Event()
    hogs = [
        multiprocessing.Process(target=_hog, args=(stop,), daemon=True) for _ in range(args.hogs)
    ]
    for hog in hogs:
        hog.start()
    try:
        result = asyncio.run(measure(args.receive, args.warmup, args.seconds))
    finally:
        stop.set()
        for hog in hogs:
            hog.join(5)
    result.update(
        {"hogs": args.hogs, "load1": round(os.getloadavg()[0], 2), "cores": os.cpu_count()}
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"receive {result['receive']}, {result['hogs']} hogs: agent CPU "
            f"{result['cpu_pct_of_one_core']} % of a core, load {result['load1']}"
        )
        for row in result["layers"]:
            print("  ", json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
