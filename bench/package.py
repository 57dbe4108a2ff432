"""Benchmark replay packaging on a synthetic lesson.

    python bench/package.py --minutes 45 [--content easy|hard] [--json]

Builds an M-minute recording, then packages it: per-view HLS, composed program, low
rendition, audio only, sprite, chapters. Times are seconds from the start of packaging
until each part is ready. `--content easy`: teacher camera and one teaching point at
640x360 25 fps, courseware 1280x720 5 fps, flat pictures. `--content hard`: cameras and
courseware at 1280x720 30 fps with sensor-like noise on every picture (1.5 Mbit/s each).
Both: Opus microphone; H.264 as the agent encodes it, a 2-minute clip encoded once and
repeated. The recording is written with the writer waiting for the disk: every packet
generated is in it, and `dropped_packets` (must be 0) says so; the run fails otherwise.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recording.package import build_replay
from recording.synthetic import SyntheticLesson, make_recording


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=45)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--content", choices=("easy", "hard"), default="easy")
    args = parser.parse_args()

    seconds = args.minutes * 60
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tongke-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    hard = args.content == "hard"
    spec = SyntheticLesson(
        seconds=seconds,
        camera_size=(1280, 720) if hard else (640, 360),
        courseware_size=(1280, 720),
        fps=30 if hard else 25,
        courseware_fps=30 if hard else 5,
        slide_every_s=40,
        call_on=(seconds * 0.3, seconds * 0.3 + 60),
        loop_s=min(seconds, 120),
        gop_s=2,
        content=args.content,
        video_kbps=1500 if hard else 600,
    )
    t = time.monotonic()
    recording = make_recording(work / "recordings", spec)
    build_s = time.monotonic() - t
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    manifest = json.loads((recording / "manifest.json").read_text())
    dropped = sum(t.get("dropped") or 0 for t in manifest["tracks"])

    def progress(stage: str, fraction: float) -> None:
        if not args.json:
            print(f"\r{stage:<10} {fraction * 100:5.1f}%", end="", file=sys.stderr, flush=True)

    result = build_replay(recording, work / "replays", progress=progress)
    if not args.json:
        print(file=sys.stderr)
    tm = result.timings
    entry = json.loads((result.directory / "replay.json").read_text())
    low_dir = result.directory / "low"
    low_bytes = sum(p.stat().st_size for p in low_dir.iterdir() if p.suffix in (".m4s", ".mp4"))
    out = {
        "minutes": args.minutes,
        "content": args.content,
        "dropped_packets": dropped,
        "recording_packets": sum(t.get("packets") or 0 for t in manifest["tracks"]),
        "views_ready_s": round(tm["views_ready_s"], 2),
        "program_s": round(tm["program_s"], 2),
        "low_s": round(tm["low_s"], 2),
        "total_s": round(tm["total_s"], 2),
        "realtime_factor": round(tm["total_s"] / seconds, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_synthesis_mb": round(rss_before, 1),
        "synthesis_s": round(build_s, 2),
        "low_kbps": round(low_bytes * 8 / entry["low"]["duration_s"] / 1000, 1),
        "program_kbps": round(entry["program"]["bandwidth"] / 1000, 1),
        "chapters": len(entry["chapters"]),
        "recording_mb": round(
            sum(p.stat().st_size for p in recording.rglob("*") if p.is_file()) / 2**20, 1
        ),
    }
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>24}: {v}")
    if dropped:
        print(f"FAIL: {dropped} packets were dropped writing the recording", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
