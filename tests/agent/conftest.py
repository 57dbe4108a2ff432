"""Shared helpers for the agent media tests."""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import av
import pytest

from classroom_agent.testcard import SyntheticVideo

DEADLINE_S = 20.0
T = TypeVar("T")


async def wait_for(
    condition: Callable[[], bool], deadline_s: float = DEADLINE_S, what: str = "condition"
) -> None:
    """Poll ``condition`` on the loop until it holds; fail the test after ``deadline_s``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def within(awaitable: Awaitable[T], deadline_s: float = DEADLINE_S) -> T:
    """``awaitable``'s result; fails the test instead of hanging when it never comes."""
    return await asyncio.wait_for(awaitable, deadline_s)


def write_h264_file(
    path: Path,
    frames: int = 30,
    size: tuple[int, int] = (320, 180),
    keyint: int = 10,
    container: str | None = None,
) -> list[int]:
    """An MP4 (avcC) H.264 file of the test card; returns the clocks stamped per frame."""
    src = SyntheticVideo(size[0], size[1], 30, "File", seed=3)
    out = av.open(str(path), "w", format=container)
    stream = out.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    stream.options = {"preset": "ultrafast", "tune": "zerolatency", "keyint": str(keyint)}
    stream.time_base = fractions.Fraction(1, 30)
    clocks = []
    for i in range(frames):
        clock = 5_000_000 + i * 33
        frame = src.render(i, clock)
        frame.pts = i
        clocks.append(clock)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return clocks


@pytest.fixture
def h264_file(tmp_path: Path) -> tuple[Path, list[int]]:
    path = tmp_path / "lesson.mp4"
    return path, write_h264_file(path)
