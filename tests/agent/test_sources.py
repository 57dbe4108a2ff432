"""Capture sources, passthrough files and the no-signal fallback."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np
import pytest

from classroom_agent import pixelclock
from classroom_agent.capture import (
    AlsaMicrophone,
    FileSource,
    PulseMicrophone,
    V4L2Camera,
    X11Screen,
)
from classroom_agent.sources import SourceError
from classroom_agent.testcard import SyntheticAudio, SyntheticVideo
from classroom_agent.tracks import EncodedAudioTrack, EncodedVideoTrack

from .conftest import wait_for, within, write_h264_file


class UnpluggableCamera(SyntheticVideo):
    """Stands in for a camera that can be unplugged and plugged back (no device exists here)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.unplugged = threading.Event()

    def open(self) -> None:
        if self.unplugged.is_set():
            raise SourceError("camera /dev/video0 does not exist (unplugged?)")
        super().open()

    def read(self) -> av.VideoFrame:
        if self.unplugged.is_set():
            raise SourceError("camera /dev/video0 stopped delivering")
        return super().read()


def mean_luma(frame: av.VideoFrame) -> float:
    # The middle of the picture: the test card's bars are bright, the no-signal card dark.
    y = frame.to_ndarray(format="gray")
    h, w = y.shape
    return float(y[h // 4 : h // 2, : w // 2].mean())


async def test_unplugged_camera_shows_no_signal_then_recovers() -> None:
    states: list[tuple[str, str, str]] = []
    camera = UnpluggableCamera(
        320,
        180,
        30,
        "Teacher camera",
        seed=1,
        name="teacher_camera",
        on_state=lambda *s: states.append(s),
        retry_initial_s=0.2,
        no_signal_fps=5,
    )
    board = SyntheticVideo(320, 180, 30, "Board camera", seed=2, name="board_camera")
    track = EncodedVideoTrack(camera, "h264", 300)
    other = EncodedVideoTrack(board, "h264", 300)
    decoder = av.CodecContext.create("h264", "r")
    other_decoder = av.CodecContext.create("h264", "r")

    async def next_frame() -> av.VideoFrame:
        while True:
            frames = decoder.decode(await within(track.recv()))
            if frames:
                return frames[-1]

    try:
        live = [await next_frame() for _ in range(5)]
        assert all(mean_luma(f) > 80 for f in live)
        assert states == [("teacher_camera", "ok", "")]

        camera.unplugged.set()
        await wait_for(lambda: len(states) >= 2, what="no_signal state")
        assert states[1][:2] == ("teacher_camera", "no_signal")
        assert "stopped delivering" in states[1][2]
        # The track keeps publishing: a dark no-signal card that still carries the clock.
        frame = await next_frame()
        for _ in range(3):  # live frames captured before the failure may still be queued
            if mean_luma(frame) < 60:
                break
            frame = await next_frame()
        cards = [frame] + [await next_frame() for _ in range(2)]
        assert all(mean_luma(f) < 60 for f in cards)
        assert all(pixelclock.read_frame(f) is not None for f in cards)
        # The board camera's track is not affected.
        board_frames = [
            f for _ in range(10) for f in other_decoder.decode(await within(other.recv()))
        ]
        assert all(mean_luma(f) > 80 for f in board_frames)

        camera.unplugged.clear()
        await wait_for(lambda: states[-1][1] == "ok", what="recovery")
        recovered = await next_frame()
        while mean_luma(recovered) < 60:  # cards already queued before the switch
            recovered = await next_frame()
        assert pixelclock.read_frame(recovered) is not None
        assert track.stats()["source_state"] == "ok"
    finally:
        track.stop()
        other.stop()


async def test_missing_devices_fail_clearly_and_fall_back() -> None:
    states: dict[str, tuple[str, str]] = {}

    def on_state(name: str, state: str, reason: str) -> None:
        states[name] = (state, reason)

    camera = V4L2Camera(
        "teacher_camera",
        "/dev/video-missing",
        width=320,
        height=180,
        on_state=on_state,
        retry_initial_s=5,
    )
    screen = X11Screen(
        "courseware", ":97", width=320, height=180, on_state=on_state, retry_initial_s=5
    )
    mic = AlsaMicrophone("classroom_mic", "hw:97", on_state=on_state, retry_initial_s=5)
    pulse = PulseMicrophone("point_mic", "no-such-source", on_state=on_state, retry_initial_s=5)
    tracks = [
        EncodedVideoTrack(camera, "h264", 300),
        EncodedVideoTrack(screen, "h264", 300),
        EncodedAudioTrack(mic),
        EncodedAudioTrack(pulse),
    ]
    try:
        packets = [await within(t.recv()) for t in tracks]
    finally:
        for t in tracks:
            t.stop()
    assert all(p.size > 0 for p in packets)
    assert states["teacher_camera"] == (
        "no_signal",
        "V4L2 camera /dev/video-missing does not exist (unplugged?)",
    )
    assert states["courseware"][0] == "no_signal"
    assert "X11 screen ':97+0,0'" in states["courseware"][1]
    assert states["classroom_mic"][0] == "no_signal"
    assert "ALSA microphone 'hw:97'" in states["classroom_mic"][1]
    assert states["point_mic"][0] == "no_signal"
    # The no-signal card is encoded at the configured size and decodes.
    frames = av.CodecContext.create("h264", "r").decode(packets[0])
    assert (frames[0].width, frames[0].height) == (320, 180)


def test_x11_without_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(SourceError, match="DISPLAY is not set"):
        X11Screen("courseware").open()


def annexb_payloads(data: bytes) -> list[bytes]:
    parts, pos = [], data.find(b"\x00\x00\x01")
    while pos != -1:
        nxt = data.find(b"\x00\x00\x01", pos + 3)
        end = len(data) if nxt == -1 else nxt - (1 if data[nxt - 1] == 0 else 0)
        parts.append(data[pos + 3 : end])
        pos = nxt
    return parts


def avcc_payloads(data: bytes) -> list[bytes]:
    parts, pos = [], 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        parts.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return parts


async def test_h264_file_is_passed_through_and_loops(tmp_path: Path) -> None:
    path = tmp_path / "lesson.mp4"
    clocks = write_h264_file(path, frames=20)
    with av.open(str(path)) as container:
        original = [bytes(p) for p in container.demux(video=0) if p.size]
    track = EncodedVideoTrack(
        FileSource("teacher_camera", str(path), width=320, height=180), "h264", 300
    )
    try:
        packets = [await within(track.recv()) for _ in range(30)]
    finally:
        track.stop()
    assert packets[0].is_keyframe
    assert 7 in [n[0] & 0x1F for n in annexb_payloads(bytes(packets[0]))]
    # Not re-encoded: every slice is byte for byte the one in the file.
    for sent, stored in zip(packets[1:20], original[1:20], strict=True):
        assert [n for n in annexb_payloads(bytes(sent)) if n[0] & 0x1F in (1, 5)] == [
            n for n in avcc_payloads(stored) if n[0] & 0x1F in (1, 5)
        ]
    decoder = av.CodecContext.create("h264", "r")
    read = [pixelclock.read_frame(f) for p in packets for f in decoder.decode(p)]
    # 20 frames, then the file again from the top.
    assert read[:30] == clocks + clocks[:10]
    assert [p.pts for p in packets] == sorted({p.pts for p in packets})


async def test_missing_file_then_vp8_mismatch(tmp_path: Path) -> None:
    states: list[tuple[str, str, str]] = []
    source = FileSource(
        "clip",
        str(tmp_path / "absent.mp4"),
        width=320,
        height=180,
        on_state=lambda *s: states.append(s),
        retry_initial_s=5,
    )
    track = EncodedVideoTrack(source, "h264", 300)
    try:
        packet = await within(track.recv())
    finally:
        track.stop()
    assert packet.is_keyframe  # the no-signal card, encoded
    assert states[0][1] == "no_signal" and "does not exist" in states[0][2]
    with pytest.raises(ValueError, match="must be 'h264'"):
        EncodedVideoTrack(FileSource("clip", str(tmp_path / "a.mp4")), "vp8", 300)


async def test_microphone_failure_keeps_audio_cadence() -> None:
    class FlakyMic(SyntheticAudio):
        def read(self) -> av.AudioFrame:
            if self.frames >= 10:
                raise SourceError("microphone unplugged")
            return super().read()

    states: list[str] = []
    track = EncodedAudioTrack(
        FlakyMic(on_state=lambda n, s, r: states.append(s), retry_initial_s=30)
    )
    try:
        packets = [await within(track.recv()) for _ in range(30)]
    finally:
        track.stop()
    assert states == ["ok", "no_signal"]
    assert [p.pts for p in packets] == [i * 960 for i in range(30)]
    decoder = av.CodecContext.create("opus", "r")
    tail = np.concatenate(
        [f.to_ndarray().reshape(-1) for p in packets[-5:] for f in decoder.decode(p)]
    )
    assert np.abs(tail).max() < 0.01 * (32768 if tail.dtype.kind == "i" else 1)
