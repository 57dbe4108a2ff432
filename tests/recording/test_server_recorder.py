"""The server records every lesson itself: a replay with no manual step, even when a
classroom's agent dies and never uploads, or its uplink is cut for a while."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import av
import pytest

from classroom_agent.cli import agent_argv
from classroom_agent.client import LessonClient
from media_server.recorder import SERVER_DIR
from recording.catalog import Catalog
from recording.lesson import MERGED_DIR, LessonRecord
from recording.manifest import load_manifest
from tests.impair import Conditions, LinkSpec, NetnsLink, netns_available
from tests.lesson_server import ROOT, ServerProcess, start_server_process, stop_process
from tests.media import wait_for

MASTER, POINT = "rec-master", "rec-point"


def agent_toml(path: Path, role: str, camera: str, mic: str, recordings: Path) -> Path:
    """A small classroom (320x180 at 15 fps and a microphone) so the test stays light."""
    path.write_text(
        f"""
[agent]
role = "{role}"
synthetic = true

[recording]
dir = "{recordings}"

[[source]]
name = "{camera}"
codec = "h264"
width = 320
height = 180
fps = 15
bitrate_kbps = 250

[[source]]
name = "{mic}"
kind = "audio"
codec = "opus"
bitrate_kbps = 32
"""
    )
    return path


def start_agent(
    server: ServerProcess,
    tmp: Path,
    room: str,
    classroom: str,
    role: str,
    name: str,
    *,
    url: str | None = None,
    prefix: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    camera, mic = (
        ("teacher_camera", "classroom_mic") if role == "master" else ("point_camera", "point_mic")
    )
    config = agent_toml(tmp / f"{classroom}.toml", role, camera, mic, tmp / f"agent-{classroom}")
    argv = agent_argv(
        url or server.url,
        server.token(room, classroom, role, name=name),
        role,
        classroom=classroom,
        options=["--no-window", "--quiet", "--config", str(config)],
    )
    return subprocess.Popen(
        [*(prefix or []), *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def packet_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        s = c.streams[0]
        return sorted(float(p.pts * s.time_base) for p in c.demux(s) if p.pts is not None)


def tracks_published(server: ServerProcess, room: str, classroom: str) -> int:
    rooms = server.stats()["rooms"]
    tracks = rooms.get(room, {}).get("tracks", [])
    return sum(1 for t in tracks if t["packets"] > 0 and classroom in t["track"])


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> ServerProcess:
    # A killed agent never uploads: the archiver gives up waiting for it after 8 s.
    monkeypatch.setenv("TONGKE_REPLAY_UPLOAD_WAIT_S", "8")
    # With media workers (the default on a multi-core server) the worker hosting the
    # lesson records it; uploads and packaging stay with the front.
    proc = start_server_process(tmp_path / "server", extra=["--workers", str(request.param)])
    yield proc
    proc.stop()


async def test_a_lesson_whose_master_agent_dies_still_becomes_one_whole_replay(
    server: ServerProcess, tmp_path: Path
) -> None:
    room = "server-recorded"
    server.api(
        "POST",
        "/api/rooms",
        {"room": room, "title": "分数的加减", "master": MASTER, "points": [POINT]},
    )
    master = start_agent(server, tmp_path, room, MASTER, "master", "城关小学")
    point = start_agent(server, tmp_path, room, POINT, "point", "小河教学点")
    console = LessonClient(server.url, room, server.token(room, MASTER, "master", name="王老师"))
    try:
        await console.connect()
        await console.request({"type": "lesson_start"})
        await wait_for(
            lambda: tracks_published(server, room, "p") >= 4, 60, "both classrooms publishing"
        )
        await asyncio.sleep(4)  # lesson time with both classrooms
        master.send_signal(signal.SIGKILL)  # its safety copy never reaches the server
        master.wait()
        await asyncio.sleep(3)  # the point goes on alone
        await console.request({"type": "lesson_end"})
        # The point's agent uploads when the lesson ends; the master's never does.
        await asyncio.to_thread(point.wait, 60)
    finally:
        await console.close()
        for proc in (master, point):
            stop_process(proc)

    record = LessonRecord(server.data_dir / "recordings", room)

    def packaged() -> bool:
        data = record.load() if record.exists() else {}
        return data.get("state") == "packaged" and data.get("packaged_parts") == len(
            data.get("parts", [])
        )

    await wait_for(packaged, 120, "the lesson packaged with no manual step")
    lesson = record.load()
    origins = sorted((p["classroom"], p.get("origin", "agent")) for p in lesson["parts"])
    # The server's own recording of both classrooms, and the point's upload.
    assert origins == [(MASTER, "server"), (POINT, "agent"), (POINT, "server")]
    replays = [e for e in Catalog(server.data_dir / "replays").entries() if e["lesson"] == room]
    assert len(replays) == 1
    assert replays[0]["title"] == "分数的加减"

    merged = record.directory / MERGED_DIR
    manifest = load_manifest(merged)
    sources = {t.source for t in manifest.tracks}
    assert {"teacher_camera", "classroom_mic", f"point:{POINT}"} <= sources
    for track in manifest.tracks:
        times = packet_times(merged / track.file)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # The master's camera and microphone exist only in the server's copy: whole,
        # at least the 4 s before its agent died, without holes.
        assert times[-1] - times[0] > 3.5, (track.id, times[-1] - times[0])
        assert max(gaps) < 0.5, (track.id, max(gaps))
    entry = json.loads((server.data_dir / "replays" / room / "replay.json").read_text())
    # The lesson's facts come from the server (the room), not from any uploader.
    assert entry["title"] == "分数的加减"
    assert entry["master"] == MASTER
    assert entry["points"] == {POINT: "小河教学点"}
    assert entry["schools"] == [MASTER, POINT]


async def test_a_lesson_nobody_ends_is_handed_over_when_its_publishers_are_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TONGKE_SERVER_RECORDING_IDLE_S", "3")
    server = start_server_process(tmp_path / "server")
    room = "never-ended"
    try:
        server.api("POST", "/api/rooms", {"room": room, "master": MASTER})
        master = start_agent(server, tmp_path, room, MASTER, "master", "城关小学")
        try:
            await wait_for(lambda: tracks_published(server, room, "p") >= 2, 60, "publishing")
            await asyncio.sleep(3)
        finally:
            # The teacher closes the agent (it uploads its copy); nobody ends the lesson.
            master.send_signal(signal.SIGTERM)
            await asyncio.to_thread(master.wait, 60)
        record = LessonRecord(server.data_dir / "recordings", room)

        def packaged() -> bool:
            data = record.load() if record.exists() else {}
            return data.get("state") == "packaged" and data.get("packaged_parts") == 2

        await wait_for(packaged, 90, "the recording handed over and packaged")
        origins = sorted(p.get("origin", "agent") for p in record.load()["parts"])
        assert origins == ["agent", "server"]
        assert [e["lesson"] for e in Catalog(server.data_dir / "replays").entries()] == [room]
    finally:
        server.stop()


async def test_a_server_killed_mid_lesson_keeps_what_it_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TONGKE_REPLAY_UPLOAD_WAIT_S", "10")
    data = tmp_path / "server"
    server = start_server_process(data)
    port = int(server.url.rsplit(":", 1)[1])
    room = "server-killed"
    server.api("POST", "/api/rooms", {"room": room, "master": MASTER})
    # An agent that does not upload: the replay can only come from the server's copies.
    config = agent_toml(tmp_path / "m.toml", "master", "teacher_camera", "classroom_mic", tmp_path)
    argv = agent_argv(
        server.url,
        server.token(room, MASTER, "master"),
        "master",
        classroom=MASTER,
        options=["--no-window", "--quiet", "--no-recording", "--config", str(config)],
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    master = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        # Each run of the server records 3 s of the camera (read from its files as they
        # are written: under load the first keyframe of a run can come late).
        await wait_for(
            lambda: recorded_seconds(data, room, MASTER, "teacher_camera", 0) >= 3.0,
            60,
            "3 s of the camera recorded",
        )
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        server = await asyncio.to_thread(start_server_process, data, port=port)
        await wait_for(
            lambda: recorded_seconds(data, room, MASTER, "teacher_camera", 1) >= 3.0,
            60,
            "3 s of the camera recorded again after the restart",
        )
        console = LessonClient(server.url, room, server.token(room, MASTER, "master"))
        await console.connect()
        await console.request({"type": "lesson_end"})
        await console.close()
        record = LessonRecord(data / "recordings", room)

        def packaged() -> bool:
            d = record.load() if record.exists() else {}
            return d.get("state") == "packaged" and d.get("packaged_parts") == len(d["parts"])

        await wait_for(packaged, 90, "the lesson packaged")
    finally:
        stop_process(master)
        server.stop()
    # Both runs of the server are in the replay: the one killed mid-lesson left files
    # that are playable up to where it died.
    assert [p["origin"] for p in record.load()["parts"]] == ["server", "server"]
    merged = record.directory / MERGED_DIR
    holes_by_source: dict[str, list[tuple[float, float]]] = {}
    for track in load_manifest(merged).tracks:
        times = packet_times(merged / track.file)
        holes = holes_by_source[track.source] = gaps_over(times, 1.0)
        # At most the server's outage, nothing else. The agent's audio may have none: its
        # capture keeps the samples it could not send and sends them when the server is
        # back, and they are placed where they were taken (the publisher's clock).
        assert len(holes) <= 1, (track.id, holes)
        covered = times[-1] - times[0] - sum(length for _, length in holes)
        assert covered > 4.5, (track.id, covered)
    # The camera's encoder drops what it cannot send: the outage is a hole in the picture.
    assert len(holes_by_source["teacher_camera"]) == 1, holes_by_source


async def test_a_browser_publishers_vp8_and_h264_are_recorded_when_the_room_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publisher without an agent (aiortc encodes and packs like a browser: VP8, H.264
    with FU-A fragments for its 640x360 keyframes, Opus) has no safety copy: the
    server's recording is all there is."""
    from classroom_agent.client import Publication
    from tests.media import PatternTrack, ToneTrack

    monkeypatch.setenv("TONGKE_REPLAY_UPLOAD_WAIT_S", "3")
    server = start_server_process(tmp_path / "server")
    room = "browser-only"
    server.api("POST", "/api/rooms", {"room": room, "master": "c-browser"})
    console = LessonClient(server.url, room, server.token(room, "c-browser", "master"))
    try:
        await console.connect()
        await console.publish(
            [
                Publication(PatternTrack(640, 360), "teacher_camera", codec="vp8"),
                Publication(PatternTrack(640, 360), "board_camera", codec="h264"),
                Publication(ToneTrack(), "classroom_mic"),
            ]
        )
        await wait_for(lambda: tracks_published(server, room, "p") >= 3, 30, "publishing")
        await asyncio.sleep(4)
        # The room is closed by hand (no lesson end): that finishes its recording too.
        server.api("DELETE", f"/api/rooms/{room}")
        record = LessonRecord(server.data_dir / "recordings", room)

        def packaged() -> bool:
            d = record.load() if record.exists() else {}
            return d.get("state") == "packaged" and d.get("packaged_parts") == 1

        await wait_for(packaged, 60, "the room's recording packaged")
    finally:
        await console.close()
        server.stop()
    part = record.directory / "parts" / record.load()["parts"][0]["name"]
    tracks = {t.source: t for t in load_manifest(part).tracks}
    assert set(tracks) == {"teacher_camera", "board_camera", "classroom_mic"}
    assert tracks["teacher_camera"].file.endswith(".webm")
    for source in ("teacher_camera", "board_camera"):
        track = tracks[source]
        assert (track.codec, track.width, track.height) == (
            "vp8" if source == "teacher_camera" else "h264",
            640,
            360,
        )
        # Every frame written decodes: nothing half-assembled reached the file.
        with av.open(str(part / track.file)) as c:
            decoded = sum(1 for _ in c.decode(video=0))
        assert decoded == track.packets and decoded > 3 * 25, (source, decoded, track.packets)
    entry = json.loads((server.data_dir / "replays" / room / "replay.json").read_text())
    assert entry["duration_s"] > 3.5


def gaps_over(times: list[float], limit: float) -> list[tuple[float, float]]:
    return [(round(a, 2), round(b - a, 2)) for a, b in itertools.pairwise(times) if b - a > limit]


def recorded_seconds(data: Path, room: str, classroom: str, source: str, part: int) -> float:
    """How long the server's copy of `source` in its `part`-th recording (one per run of
    the server: `<lesson>`, `<lesson>~2`) spans, as written so far (flushed per packet)."""
    root = data / "recordings" / room / SERVER_DIR / classroom
    runs = sorted(d for d in root.glob("*") if d.is_dir())
    if len(runs) <= part:
        return 0.0
    try:
        times = [
            t for f in sorted(runs[part].glob(f"tracks/{source}*.ts")) for t in packet_times(f)
        ]
    except av.FFmpegError:
        return 0.0  # a file just created, its header not written yet
    return max(times) - min(times) if times else 0.0


def server_copy_resumed(server: ServerProcess, room: str) -> bool:
    """The server's copy of the point camera, as written so far (flushed per packet),
    has pictures more than 1 s after the cut began: a hole and something past it."""
    root = server.data_dir / "recordings" / room / SERVER_DIR / POINT
    files = sorted(root.glob("*/tracks/point_camera*.ts"))
    if not files:
        return False
    try:
        first = packet_times(files[0])
        later = [packet_times(f) for f in files[1:]]
    except av.FFmpegError:
        return False  # a file just created, its header not written yet
    return any(later) or bool(gaps_over(first, 1.0))


async def test_a_points_cut_uplink_leaves_a_hole_in_the_server_copy_its_own_copy_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("TONGKE_REPLAY_UPLOAD_WAIT_S", "30")
    link = await NetnsLink("recorder-uplink", LinkSpec(), subnet=161).start()
    server = start_server_process(
        tmp_path / "server", extra=["--host", "0.0.0.0", "--ice-address", link.host_address]
    )
    port = server.url.rsplit(":", 1)[1]
    room = "uplink-cut"
    server.api("POST", "/api/rooms", {"room": room, "master": MASTER, "points": [POINT]})
    master = start_agent(server, tmp_path, room, MASTER, "master", "城关小学")
    point = start_agent(
        server,
        tmp_path,
        room,
        POINT,
        "point",
        "小河教学点",
        url=f"http://{link.host_address}:{port}",
        prefix=link.exec_prefix,
    )
    console = LessonClient(server.url, room, server.token(room, MASTER, "master"))
    try:
        await console.connect()
        await wait_for(
            lambda: tracks_published(server, room, "p") >= 4, 60, "both classrooms publishing"
        )
        await asyncio.sleep(3)
        # The point's uplink dies for 12 s (its downlink still works), then comes back.
        link.set_link(LinkSpec(up=Conditions(loss=1.0)))
        await asyncio.sleep(12)
        link.set_link(LinkSpec())
        # The server's copy resumes only at the camera's next keyframe after the cut
        # (on the same session, or a new one if the point rejoined). A fixed 4 s wait
        # here ended the lesson before that in about one run in three (with or without
        # the point's frame buffer): nothing after the cut, so no hole to see.
        await wait_for(
            lambda: server_copy_resumed(server, room),
            60,
            "the server's copy of the point camera going on after the cut",
        )
        await console.request({"type": "lesson_end"})
        await asyncio.to_thread(point.wait, 60)
        await asyncio.to_thread(master.wait, 60)
    finally:
        await console.close()
        for proc in (master, point):
            stop_process(proc)
        link.close()

    record = LessonRecord(server.data_dir / "recordings", room)

    def packaged() -> bool:
        data = record.load() if record.exists() else {}
        return data.get("state") == "packaged" and data.get("packaged_parts") == 4

    try:
        await wait_for(packaged, 120, "the lesson packaged with every copy")
    finally:
        server.stop()
    parts = {(p["classroom"], p.get("origin", "agent")): p["name"] for p in record.load()["parts"]}
    server_copy = record.directory / "parts" / parts[(POINT, "server")]
    camera: list[float] = []
    for track in load_manifest(server_copy).tracks:
        if track.source == "point_camera":
            times = packet_times(server_copy / track.file)
            camera += [(track.offset_s or 0) + t - times[0] for t in times]
    # What the server never received (aiortc resends only its last 128 packets) is a
    # hole in its copy...
    assert gaps_over(sorted(camera), 1.0), "the cut should leave a hole in the server's copy"
    merged = record.directory / MERGED_DIR
    for track in load_manifest(merged).tracks:
        times = packet_times(merged / track.file)
        # Every agent-published track is whole after the merge: the point's own copy
        # filled the server copy's hole.
        assert not gaps_over(times, 0.5), (track.id, gaps_over(times, 0.5))
        assert times[-1] - times[0] > 16, (track.id, times[-1] - times[0])


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("Linux only")
