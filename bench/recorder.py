"""Benchmark the server recorder: what it costs the forwarding path, and whether it keeps up.

    python bench/recorder.py [--lessons 10] [--seconds 30] [--json]

`--lessons` lesson rooms are recorded at once by one `ServerRecorder`, each with the
tracks of a master classroom and a teaching point: teacher camera, board camera and
courseware (H.264 1280x720 30 fps, about 1.5 Mbit/s each, real libx264 output packetized
as RFC 6184 FU-A/STAP-A), point camera (640x360) and two Opus microphones (50 packets/s).
Packets are handed to the recorder's sinks at their real rate, as the DownTracks would
hand them; the recorder thread depacketizes and writes real files.

What it prints (JSON with --json):
  packets              packets handed to the sinks
  pps                  packets per second, all lessons together
  sink_us_per_packet   time the forwarding path spends in `send_rtp` (target: small
                       against bench/fanout.py's us_per_packet at N=50; the issue allows
                       recording at most 10% more)
  dropped              packets the recorder could not take (must be 0)
  max_queue            the most packets waiting for the recorder thread at once
  written_frames       frames in the files, and `expected_frames` for comparison
  cpu_s                process CPU time during the run (the recorder thread, its writer
                       threads and the feeding loop)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np

from media_server.recorder import RoomRecording, ServerRecorder, TrackSink
from media_server.room import LessonInfo, Room
from media_server.source import MediaSource
from recording.manifest import load_manifest
from tongke.tokens import Role

MTU = 1200


def encode(width: int, height: int, fps: int, kbps: int, frames: int) -> list[bytes]:
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = Fraction(1, fps)
    codec.bit_rate = kbps * 1000
    codec.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(2 * fps)}
    rng = np.random.default_rng(width)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = []
    for i in range(frames):
        img = np.roll(base, i * 8, axis=1) ^ rng.integers(0, 24, (height, width, 3), np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [bytes(p) for p in codec.encode(frame)]
    return out + [bytes(p) for p in codec.encode(None)]


def packetize(frame: bytes) -> list[bytes]:
    nals = [n.rstrip(b"\x00") for n in frame.split(b"\x00\x00\x01") if n.rstrip(b"\x00")]
    small = [n for n in nals if n[0] & 0x1F in (7, 8)]
    out = []
    if small:
        out.append(b"\x18" + b"".join(len(n).to_bytes(2, "big") + n for n in small))
    for n in nals:
        if n[0] & 0x1F in (7, 8):
            continue
        if len(n) <= MTU:
            out.append(n)
            continue
        body = n[1:]
        pieces = [body[i : i + MTU] for i in range(0, len(body), MTU)]
        for i, piece in enumerate(pieces):
            fu = (n[0] & 0x1F) | (0x80 if i == 0 else 0) | (0x40 if i == len(pieces) - 1 else 0)
            out.append(bytes([(n[0] & 0xE0) | 28, fu]) + piece)
    return out


class Stream:
    """One track's packets, paced at its frame rate (a 2 s clip looped)."""

    def __init__(self, sink: TrackSink, payloads: list[list[bytes]], rate: int, fps: int) -> None:
        self.sink, self.payloads, self.step, self.fps = sink, payloads, rate // fps, fps
        self.seq = self.ts = self.index = 0

    def frame(self) -> int:
        parts = self.payloads[self.index % len(self.payloads)]
        for j, p in enumerate(parts):
            marker = 0x80 if j == len(parts) - 1 else 0
            header = bytes([0x80, marker | 102]) + (self.seq & 0xFFFF).to_bytes(2, "big")
            self.sink.send_rtp(header + (self.ts & 0xFFFFFFFF).to_bytes(4, "big") + b"\0\0\0\1" + p)
            self.seq += 1
        self.ts += self.step
        self.index += 1
        return len(parts)


async def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tongke-bench-recorder-"))
    camera = [packetize(f) for f in encode(1280, 720, 30, 1500, 60)]
    point = [packetize(f) for f in encode(640, 360, 30, 800, 60)]
    opus = [[bytes([0xFC]) + bytes(80)]]
    recorder = ServerRecorder(work)
    recorder.start(None)
    streams: list[Stream] = []
    rooms = []
    for n in range(args.lessons):
        room = Room(LessonInfo(room=f"bench-{n}"))
        rec = RoomRecording(recorder, room)
        rooms.append(rec)
        for classroom, source, kind, codec, payloads, fps in (
            ("master", "teacher_camera", "video", "h264", camera, 30),
            ("master", "board_camera", "video", "h264", camera, 30),
            ("master", "courseware", "video", "h264", camera, 30),
            ("master", "classroom_mic", "audio", "opus", opus, 50),
            ("point", "point_camera", "video", "h264", point, 30),
            ("point", "point_mic", "audio", "opus", opus, 50),
        ):
            ms = MediaSource(
                f"p-{classroom}",
                classroom,
                classroom,
                source,
                kind,
                codec,
                source,
                role=Role.MASTER,
            )
            sink = TrackSink(rec, ms)
            rec.sinks[ms] = sink
            streams.append(Stream(sink, payloads, 90000 if kind == "video" else 48000, fps))
    packets = 0
    in_sink = 0.0
    max_queue = 0
    cpu0 = time.process_time()
    start = time.monotonic()
    due = {id(s): start for s in streams}
    while time.monotonic() - start < args.seconds:
        now = time.monotonic()
        for s in streams:
            while due[id(s)] <= now:
                t = time.perf_counter()
                packets += s.frame()
                in_sink += time.perf_counter() - t
                due[id(s)] += 1 / s.fps
        max_queue = max(max_queue, recorder.queued())
        await asyncio.sleep(0.005)
    expected = sum(s.index for s in streams)
    for rec in rooms:
        await rec.stop()
    cpu = time.process_time() - cpu0
    await recorder.close()
    written = 0
    for manifest in work.glob("*/server/*/*/manifest.json"):
        written += sum(t.packets or 0 for t in load_manifest(manifest.parent).tracks)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "lessons": args.lessons,
        "seconds": args.seconds,
        "packets": packets,
        "pps": round(packets / args.seconds),
        "sink_us_per_packet": round(in_sink / packets * 1e6, 2),
        "dropped": recorder.dropped,
        "max_queue": max_queue,
        "expected_frames": expected,
        "written_frames": written,
        "cpu_s": round(cpu, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lessons", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>20}: {v}")
    return 0 if out["dropped"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
