"""Classroom devices report themselves: a real agent's report reaches the master and the
supervisor view; a bad report is refused and changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from classroom_agent.agent import ClassroomAgent
from classroom_agent.client import ClientEvents, LessonClient, LessonError
from classroom_agent.config import AgentConfig, RecordingConfig, SourceConfig
from media_server.classroom import supervision
from media_server.participant import Participant
from media_server.publisher import SignallingError
from media_server.room import LessonInfo, Room
from tests.lesson_server import ServerProcess
from tests.media import wait_for
from tests.test_agent import running
from tongke.tokens import Claims, Role


def point_agent(server: ServerProcess, room: str, tmp_path: Path) -> AgentConfig:
    unplugged = SourceConfig(
        name="board_camera",
        type="file",
        path=str(tmp_path / "unplugged.h264"),
        codec="h264",
        width=320,
        height=180,
        bitrate_kbps=200,
        fps=10,
    )
    return AgentConfig(
        server_url=server.url,
        token=server.token(room, "p-xiaohe", "agent", name="小河教学点"),
        role="point",
        classroom_id="p-xiaohe",
        synthetic=True,
        sources=[
            SourceConfig(
                name="point_camera",
                type="synthetic",
                codec="h264",
                width=320,
                height=180,
                bitrate_kbps=250,
                fps=15,
                seed=2,
            ),
            SourceConfig(
                name="point_mic", kind="audio", type="synthetic", codec="opus", bitrate_kbps=32
            ),
            unplugged,
        ],
        recording=RecordingConfig(dir=tmp_path / "copies"),
    )


async def test_an_agents_state_reaches_the_master_console(
    server: ServerProcess, room: str, tmp_path: Path
) -> None:
    reports: list[dict[str, Any]] = []

    def keep(message: dict[str, Any]) -> None:
        if message.get("type") == "agent_state":
            reports.append(message)

    master = LessonClient(
        server.url,
        room,
        server.token(room, "c-master", "master"),
        events=ClientEvents(on_message=keep),
    )
    await master.connect()
    agent = ClassroomAgent(point_agent(server, room, tmp_path), report_interval_s=0.5)
    try:
        async with running(agent):

            def complete() -> bool:
                if not reports:
                    return False
                state = reports[-1]["state"]
                return (
                    state["safety_copy"]["bytes"] > 0
                    and any(e["sent_kbps"] for e in state["encoders"])
                    and state["uplink_estimate_bps"] is not None
                )

            try:
                await wait_for(complete, 30, "a full report from the point's agent")
            except AssertionError:
                raise AssertionError(reports[-1:]) from None
            report = reports[-1]
            assert report["classroom"] == "p-xiaohe"
            state = report["state"]
            devices = {d["source"]: d for d in state["devices"]}
            assert devices["point_camera"]["state"] == "ok"
            assert devices["board_camera"]["state"] == "no_signal"
            assert {"kind": "no_signal", "source": "board_camera"} in state["problems"]
            camera = next(e for e in state["encoders"] if e["source"] == "point_camera")
            assert camera["codec"] == "h264" and camera["width"] == 320
            assert state["cpu"]["process_pct"] is not None and state["cpu"]["cores"] >= 1
            assert state["safety_copy"]["state"] == "recording"
            assert state["safety_copy"]["free_bytes"] > 0
            assert not state["stale"]

            # The master's state (for a console opened later) carries the same report.
            reply = await master.request({"type": "classroom_state"})
            assert reply["state"]["devices"]["p-xiaohe"]["devices"]

            # A point cannot see other classrooms' devices; a bad report is refused.
            other = LessonClient(server.url, room, server.token(room, "p-shanbei", "point"))
            await other.connect()
            try:
                reply = await other.request({"type": "classroom_state"})
                assert "devices" not in reply["state"]
                for bad in (
                    {"devices": "cameras"},
                    {"cpu": {"process_pct": "lots"}},
                    {"devices": [{"source": "x", "kind": "smell"}]},
                    {"safety_copy": {"state": "recording", "bytes": -1}},
                ):
                    with pytest.raises(LessonError) as err:
                        await other.request({"type": "agent_state", **bad})
                    assert err.value.code == "bad_request"
                reply = await master.request({"type": "classroom_state"})
                assert set(reply["state"]["devices"]) == {"p-xiaohe"}
            finally:
                await other.close()
    finally:
        await master.close()


async def test_the_supervisor_view_lists_each_classrooms_device(tmp_path: Path) -> None:
    room = Room(LessonInfo(room="r", master="c-master", points=["p-a"]), timeline_dir=tmp_path)

    async def ignore(message: dict[str, Any]) -> None:
        pass

    def member(classroom: str, role: Role) -> Participant:
        return Participant(
            participant_id=classroom,
            claims=Claims("r", classroom, role, classroom, classroom, 0),
            name=classroom,
            send_json=ignore,
            pc_factory=lambda: None,  # type: ignore[arg-type,return-value]
            on_tracks=room.on_tracks,
        )

    point, observer = member("p-a", Role.POINT), member("ops", Role.OBSERVER)
    report = {
        "devices": [{"source": "point_camera", "kind": "video", "type": "v4l2", "state": "ok"}],
        "encoders": [{"source": "point_camera", "layer": "h", "codec": "h264", "sent_kbps": 800}],
        "uplink_estimate_bps": 1_500_000,
        "cpu": {"process_pct": 40.0, "load1": 0.8, "cores": 2},
        "safety_copy": {"state": "stopped", "reason": "disk budget", "bytes": 10, "free_bytes": 1},
    }
    await room.classroom.report_device(point, report)
    view = supervision(room)
    device = view["points"][0]["device"]
    assert device["uplink_estimate_bps"] == 1_500_000
    assert device["problems"] == [{"kind": "safety_copy_stopped", "reason": "disk budget"}]
    assert view["master_device"] is None
    with pytest.raises(SignallingError):
        await room.classroom.report_device(observer, report)  # an observer has no device
    room.classroom.clock = lambda: 10**10
    assert supervision(room)["points"][0]["device"]["stale"]
    room.classroom.close()
