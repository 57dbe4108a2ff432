"""The pixel clock must survive real compression at the bitrates the agent publishes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from classroom_agent import pixelclock
from classroom_agent.encoding import VideoEncoder
from classroom_agent.testcard import SyntheticVideo

ROOT = Path(__file__).resolve().parents[2]


def test_rgb_round_trip_and_check_byte() -> None:
    img = np.zeros((720, 1280, 3), np.uint8)
    for ms in (0, 1, 1_700_000_123_456 % 2**32, 2**32 - 1):
        pixelclock.stamp(img, ms)
        assert pixelclock.read(img) == ms
    # One flipped block must be detected, not read as another time.
    b = int(pixelclock.block_size(1280, 720))
    img[:b, 5 * b : 6 * b] = 255 - img[:b, 5 * b : 6 * b]
    assert pixelclock.read(img) is None


def test_stamp_a_frame_plane() -> None:
    frame = av.VideoFrame.from_ndarray(np.full((360, 640, 3), 90, np.uint8), format="rgb24")
    frame = frame.reformat(format="yuv420p")
    pixelclock.stamp(frame.planes[0], 4_000_000_000)
    assert pixelclock.read_frame(frame) == 4_000_000_000


def test_picture_without_clock_reads_none() -> None:
    rng = np.random.default_rng(7)
    misreads = [pixelclock.read(rng.integers(0, 256, (180, 320, 3), np.uint8)) for _ in range(50)]
    assert misreads.count(None) >= 49
    assert pixelclock.read(np.zeros((720, 1280, 3), np.uint8)) is None


def test_stamp_survives_proportional_scaling() -> None:
    frame = SyntheticVideo(1280, 720, 30, "Teacher camera", seed=1).render(0, 123_456_789)
    for width, height in ((640, 360), (320, 180), (960, 540)):
        assert pixelclock.read_frame(frame.reformat(width, height)) == 123_456_789
    assert pixelclock.read(frame.to_ndarray(format="rgb24")) == 123_456_789


@pytest.mark.parametrize("codec", ["h264", "vp8"])
@pytest.mark.parametrize(
    ("size", "kbps"),
    [((1280, 720), 300), ((1280, 720), 1500), ((320, 180), 150), ((320, 180), 300)],
)
def test_clock_survives_encoding(codec: str, size: tuple[int, int], kbps: int) -> None:
    src = SyntheticVideo(size[0], size[1], 30, "Teacher camera", seed=2)
    encoder = VideoEncoder(codec, size[0], size[1], 30, kbps)
    decoder = av.CodecContext.create(codec, "r")
    sent, read = [], []
    for i in range(45):
        clock = 1_000_000 + i * 33
        sent.append(clock)
        for packet in encoder.encode(src.render(i, clock), pts=i * 3000):
            read.extend(pixelclock.read_frame(f) for f in decoder.decode(packet))
    assert len(read) == len(sent)
    # Every frame is read, and never as a wrong time.
    assert read == sent


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_browser_reader_agrees(tmp_path: Path) -> None:
    src = SyntheticVideo(640, 360, 30, "Board camera", seed=4)
    encoder = VideoEncoder("h264", 640, 360, 30, 300)
    decoder = av.CodecContext.create("h264", "r")
    frames = []
    for i in range(5):
        for packet in encoder.encode(src.render(i, 77_000 + i), pts=i):
            frames.extend(decoder.decode(packet))
    dumps = []
    for frame in frames:
        rgba = frame.to_ndarray(format="rgba")
        path = tmp_path / f"{len(dumps)}.rgba"
        path.write_bytes(rgba.tobytes())
        dumps.append({"path": str(path), "width": frame.width, "height": frame.height})
    script = tmp_path / "read.mjs"
    module = (ROOT / "web_client" / "pixelclock.js").as_uri()
    script.write_text(
        f"import {{ readPixelClock }} from {json.dumps(module)};\n"
        "import { readFileSync } from 'node:fs';\n"
        f"const dumps = {json.dumps(dumps)};\n"
        "console.log(JSON.stringify(dumps.map(d => readPixelClock({width: d.width, "
        "height: d.height, data: new Uint8ClampedArray(readFileSync(d.path))}))));\n"
    )
    out = subprocess.run(
        ["node", str(script)], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == [77_000 + i for i in range(5)]
    assert [pixelclock.read_frame(f) for f in frames] == [77_000 + i for i in range(5)]
