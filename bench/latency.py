"""Glass-to-glass latency: agent capture to a browser's rendered frame, through the SFU.

    python bench/latency.py [--seconds 20] [--joins 5] [--json]

A master classroom agent (synthetic sources, the real capture/encode/publish path)
stamps the capture time into every frame; headless Chromium watches the lesson link and,
for every frame it presents (requestVideoFrameCallback), reads that clock back from the
pixels. Everything runs on this machine, so both ends share one clock. The benchmark
also times how long a teaching point that joins mid-lesson waits for its first picture.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classroom_agent.cli import agent_argv
from classroom_agent.client import LessonClient
from tests.browser import chromium
from tests.lesson_server import ROOT, start_server_process
from tongke.ice import use_host_addresses

MEASURE_JS = """
async (seconds) => {
  const { readPixelClock } = await import('/static/pixelclock.js');
  const samples = {};
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const end = performance.now() + seconds * 1000;
  const videos = [...document.querySelectorAll('video')];
  await Promise.all(videos.map((video, index) => new Promise((resolve) => {
    const key = video.closest('[data-source]')?.dataset.source || `video-${index}`;
    samples[key] = [];
    const onFrame = () => {
      const now = Date.now();
      if (video.videoWidth) {
        canvas.width = Math.min(640, video.videoWidth);
        canvas.height = Math.round(canvas.width * video.videoHeight / video.videoWidth);
        ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
        // The clock's geometry follows the whole picture's size: read the whole canvas.
        const clock = readPixelClock(ctx.getImageData(0, 0, canvas.width, canvas.height));
        if (clock !== null) {
          samples[key].push(((now % 2 ** 32) - clock + 2 ** 32) % 2 ** 32);
        }
      }
      if (performance.now() < end) video.requestVideoFrameCallback(onFrame); else resolve();
    };
    video.requestVideoFrameCallback(onFrame);
  })));
  return samples;
}
"""


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def first_picture_ms(url: str, room: str, token: str) -> float:
    started = time.monotonic()
    client = LessonClient(url, room, token)
    try:
        await client.connect()
        while True:
            remote = next(
                (r for r in client.active_tracks() if r.source == "teacher_camera" and r.track),
                None,
            )
            if remote is not None:
                await asyncio.wait_for(remote.track.recv(), 10)  # type: ignore[union-attr]
                return (time.monotonic() - started) * 1000
            await asyncio.sleep(0.01)
    finally:
        await client.close()


async def run(seconds: float, joins: int, quiet: bool) -> dict:
    use_host_addresses(["127.0.0.1"])
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    server = start_server_process(Path(tempfile.mkdtemp(prefix="tongke-latency-")))
    room = "latency"
    server.open_room(room)
    agent = subprocess.Popen(
        agent_argv(
            server.url,
            server.token(room, "city-school", "master", name="Master"),
            "master",
            ice_addresses=["127.0.0.1"],
            options=["--synthetic", "--no-window", "--quiet", "--no-recording"],
        ),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        log("waiting for the master agent to publish")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tracks = server.api("GET", f"/api/rooms/{room}")["tracks"]
            if len(tracks) >= 4:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        link = f"{server.url}/lesson/{room}?token={server.token(room, 'bench', 'observer')}"
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(link)
            await page.wait_for_function(
                "[...document.querySelectorAll('video')].filter(v => v.videoWidth > 0).length >= 3",
                timeout=30000,
            )
            log(f"measuring in the browser for {seconds:.0f} s")
            samples: dict[str, list[float]] = await page.evaluate(MEASURE_JS, seconds)
        log(f"timing {joins} mid-lesson joins")
        firsts = [
            await first_picture_ms(server.url, room, server.token(room, f"late-{i}", "point"))
            for i in range(joins)
        ]
        everything = [v for values in samples.values() for v in values]
        camera = next((v for k, v in samples.items() if "teacher" in k), everything)
        return {
            "seconds": seconds,
            "frames_measured": len(everything),
            "latency_p50_ms": percentile(camera, 0.5),
            "latency_p95_ms": percentile(camera, 0.95),
            "per_source_p50_ms": {k: percentile(v, 0.5) for k, v in samples.items()},
            "first_picture_ms_p50": round(statistics.median(firsts), 1) if firsts else None,
            "first_picture_ms_max": round(max(firsts), 1) if firsts else None,
        }
    finally:
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--joins", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.seconds, args.joins, quiet=args.json))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
