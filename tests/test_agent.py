"""The classroom agent against a real server: publish, receive, survive failures."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from classroom_agent.agent import ClassroomAgent
from classroom_agent.client import LessonClient
from classroom_agent.config import AgentConfig, RecordingConfig, SourceConfig, default_sources
from tests.lesson_server import ServerProcess, start_server_process
from tests.media import first_frames, wait_for


def small_master(
    server: ServerProcess, room: str, recordings: Path | None = None, **extra: Any
) -> AgentConfig:
    """A master classroom at modest sizes so the suite stays light on two cores."""
    sources = [
        SourceConfig(
            name="teacher_camera",
            type="synthetic",
            codec="h264",
            width=320,
            height=180,
            bitrate_kbps=300,
            fps=15,
            seed=1,
        ),
        SourceConfig(
            name="classroom_mic", kind="audio", type="synthetic", codec="opus", bitrate_kbps=32
        ),
        *extra.get("sources", []),
    ]
    return AgentConfig(
        server_url=server.url,
        token=server.token(room, "city-4a", "master", name="城关小学"),
        role="master",
        classroom_id="city-4a",
        synthetic=True,
        sources=sources,
        recording=RecordingConfig(dir=recordings or Path("data/agent-recordings")),
    )


def packet_times(path: Path) -> list[float]:
    """Presentation times (seconds) of every packet in a one-stream track file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams[0]
        times = [
            float(p.pts * stream.time_base) for p in container.demux(stream) if p.pts is not None
        ]
    return sorted(times)


@contextlib.asynccontextmanager
async def running(agent: ClassroomAgent) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.ensure_future(agent.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_a_point_agent_reports_fps_and_pixel_clock_latency_of_the_lesson(
    server: ServerProcess, room: str
) -> None:
    master = ClassroomAgent(small_master(server, room), record=False)
    point_cfg = AgentConfig(
        server_url=server.url,
        token=server.token(room, "xiaohe", "point", name="小河教学点"),
        role="point",
        classroom_id="xiaohe",
        synthetic=True,
        sources=[s for s in default_sources("point", synthetic=True) if s.kind == "audio"],
    )
    reports: list[dict] = []
    point = ClassroomAgent(
        point_cfg, on_quality=reports.append, report_interval_s=1.0, record=False
    )
    async with running(master), running(point):

        def camera_measured() -> bool:
            if not reports:
                return False
            tracks = {t["name"]: t for t in reports[-1]["tracks"]}
            cam = tracks.get("城关小学 · Teacher camera")
            return bool(cam and cam["fps"] > 0 and cam["latency_p50_ms"] is not None)

        await wait_for(camera_measured, 30, "the point to measure the teacher camera")
        tracks = {t["name"]: t for t in reports[-1]["tracks"]}
        cam = tracks["城关小学 · Teacher camera"]
        assert (cam["width"], cam["height"]) == (320, 180)
        assert 0 <= cam["latency_p50_ms"] < 5000  # read from the pixels, on one clock
        assert tracks["城关小学 · Classroom mic"]["frames"] > 0
        assert reports[-1]["connected"] is True


async def test_an_unplugged_camera_shows_no_signal_while_the_others_carry_on(
    server: ServerProcess, room: str, tmp_path: Path
) -> None:
    missing = SourceConfig(
        name="board_camera",
        type="file",
        path=str(tmp_path / "unplugged.h264"),
        codec="h264",
        width=320,
        height=180,
        bitrate_kbps=200,
        fps=10,
    )
    states: list[tuple[str, str]] = []
    master = ClassroomAgent(small_master(server, room, sources=[missing]), record=False)
    master._on_source_state = lambda s, st, r: states.append((s, st))  # type: ignore[method-assign]
    viewer = LessonClient(server.url, room, server.token(room, "ops", "observer"))
    async with running(master):
        await viewer.connect()
        try:
            frames = await first_frames(
                viewer, {"teacher_camera", "board_camera", "classroom_mic"}, 30
            )
            # The board camera's tile gets a decodable "no signal" card, not a hole.
            assert frames["board_camera"].width > 0
            assert ("board_camera", "no_signal") in states
            assert frames["teacher_camera"].width == 320
        finally:
            await viewer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_agent_republishes_after_the_server_restarts_and_uploads_its_copy(
    tmp_path: Path,
) -> None:
    port = free_port()
    data = tmp_path / "server"
    server = start_server_process(data, port=port)
    room = "restart-lesson"
    server.open_room(room)
    agent = ClassroomAgent(small_master(server, room, recordings=tmp_path / "agent"))
    try:
        async with running(agent):
            await wait_for(lambda: agent.status.connected, 30, "the first connection")
            # Server start and stop block: off this loop, which the agent shares.
            await asyncio.to_thread(server.stop)
            await wait_for(lambda: not agent.status.connected, 30, "the agent to notice")
            # Three seconds of lesson (15 fps) pass with the server down: the camera keeps
            # being encoded for the safety copy although nobody pulls it.
            camera = next(p.track for p in agent.tracks if p.source == "teacher_camera")
            encoded = camera.stats()["frames"]
            await wait_for(
                lambda: camera.stats()["frames"] >= encoded + 45 and not agent.status.connected,
                30,
                "the camera to be encoded while the server is down",
            )
            # The same data directory: the same rooms.
            server = await asyncio.to_thread(start_server_process, data, port=port)
            await wait_for(lambda: agent.status.connects >= 2, 60, "the agent to reconnect")
            viewer = LessonClient(server.url, room, server.token(room, "ops", "observer"))
            await viewer.connect()
            try:
                await first_frames(viewer, {"teacher_camera", "classroom_mic"}, 30)
            finally:
                await viewer.close()
        # The lesson went on through the outage; the agent's own copy covers it and is
        # on the server once the agent stops.
        assert agent.uploaded is not None
        manifests = list((data / "recordings").glob("*/parts/*/manifest.json"))
        assert len(manifests) == 1
        manifest = json.loads(manifests[0].read_text())
        assert manifest["lesson"] == room
        sources = {t["source"] for t in manifest["tracks"]}
        assert sources == {"teacher_camera", "classroom_mic"}
        ends = {}
        for track in manifest["tracks"]:
            times = packet_times(manifests[0].parent / track["file"])
            gaps = [b - a for a, b in itertools.pairwise(times)]
            # No hole where the server was down, in the video or in the audio.
            big = [(round(times[i], 2), round(g, 2)) for i, g in enumerate(gaps) if g > 0.3]
            assert max(gaps) < 0.5, f"{track['source']}: holes {big} of {times[-1]:.1f} s"
            ends[track["kind"]] = track["offset_s"] + times[-1] - times[0]
        # Audio that stopped while the video went on would end earlier on the lesson clock.
        assert abs(ends["audio"] - ends["video"]) < 0.5, ends
    finally:
        server.stop()
