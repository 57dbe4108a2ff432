"""The local window opens under a display, paints tiles, and can be closed independently."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from classroom_agent.testcard import SyntheticVideo
from classroom_agent.window import open_window, to_ppm

from .conftest import wait_for


def test_no_display_means_no_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    assert open_window() is None


def test_unreachable_display_means_no_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", ":96")
    assert open_window() is None


def test_ppm_keeps_aspect_ratio() -> None:
    frame = SyntheticVideo(1280, 720, 30, "Teacher camera").render(0, 0)
    data = to_ppm(frame, (480, 360))
    assert data.startswith(b"P6 480 270 255\n")
    assert len(data) == len(b"P6 480 270 255\n") + 480 * 270 * 3


@pytest.fixture
def xvfb(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install -y xvfb)")
    number = next(
        n
        for n in range(90 + os.getpid() % 50, 400)
        if not os.path.exists(f"/tmp/.X{n}-lock") and not os.path.exists(f"/tmp/.X11-unix/X{n}")
    )
    display = f":{number}"
    proc = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", "1280x720x24", "-nolisten", "tcp", "-noreset"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Tk gives up at once when the server is not ready yet: wait until the
    # server answers (-noreset: the probe disconnecting must not make it reset).
    path = f"/tmp/.X11-unix/X{number}"
    deadline = time.monotonic() + 30
    while True:
        with socket.socket(socket.AF_UNIX) as probe:
            if probe.connect_ex(path) == 0:
                break
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"Xvfb on {display} does not accept connections")
        select.select([], [], [], 0.05)
    monkeypatch.setenv("DISPLAY", display)
    yield display
    proc.terminate()
    proc.wait(timeout=10)


async def test_window_paints_tiles_and_closes_alone(xvfb: str) -> None:
    win = open_window("Tongke test", tile_size=(320, 180))
    assert win is not None, f"no window on {xvfb}"
    teacher = SyntheticVideo(640, 360, 30, "Teacher camera", seed=1)
    board = SyntheticVideo(640, 360, 30, "Board camera", seed=2)
    for i in range(3):
        win.show("teacher_camera", "Teacher camera", teacher.render(i, 0))
        win.show("board_camera", "Board camera", board.render(i, 0))
        painted = win.painted
        await wait_for(lambda p=painted: win.painted >= p + 2, what="tiles painted")
    assert not win.closed
    win.close()
    assert win.closed
    # Offering frames after closing is harmless: the agent does not notice.
    win.show("teacher_camera", "Teacher camera", teacher.render(3, 0))
