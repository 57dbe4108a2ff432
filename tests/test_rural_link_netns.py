"""A teaching point behind a real (user-space impaired) link: long RTT, then a thin line.

The point agent runs in its own network namespace whose only way to the server is the
impaired link of tests/impair.py; ICE, DTLS/SRTP and the signalling socket all cross it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from classroom_agent.agent import ClassroomAgent
from classroom_agent.cli import agent_argv
from classroom_agent.config import SourceConfig
from tests.impair import LinkSpec, NetnsLink, netns_available
from tests.lesson_server import ROOT, start_server_process, stop_process
from tests.media import wait_for
from tests.test_agent import running, small_master


def noise(name: str, kbps: int, seed: int) -> SourceConfig:
    return SourceConfig(
        name=name,
        type="noise",
        codec="h264",
        width=320,
        height=180,
        bitrate_kbps=kbps,
        fps=15,
        seed=seed,
    )


def reports(path: Path) -> list[dict[str, Any]]:
    """The point agent's quality reports so far (its last line may be half written)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def track(report: dict[str, Any], source: str) -> dict[str, Any] | None:
    return next((t for t in report["tracks"] if t.get("source") == source), None)


async def test_a_satellite_point_stays_connected_a_thin_line_pauses_video_and_a_cut_heals(
    tmp_path: Path,
) -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    # Satellite: 700 ms RTT. aioice's own consent check gives up after ~30 s at this RTT.
    link = await NetnsLink(
        "tk-rural-test", LinkSpec.symmetric(rtt_ms=700, rate_bps=5_000_000), subnet=94
    ).start()
    server = start_server_process(
        tmp_path / "data", extra=["--host", "0.0.0.0", "--ice-address", link.host_address]
    )
    port = server.url.rsplit(":", 1)[1]
    room = "satellite"
    server.open_room(room)
    report = tmp_path / "point.jsonl"
    point = None
    master_cfg = small_master(server, room)
    master_cfg.sources = [
        noise("teacher_camera", 180, 1),
        noise("board_camera", 450, 2),
        *[s for s in master_cfg.sources if s.kind == "audio"],
    ]
    try:
        master = ClassroomAgent(master_cfg, record=False)
        async with running(master):
            argv = agent_argv(
                f"http://{link.host_address}:{port}",
                server.token(room, "xiaohe", "point", name="小河教学点"),
                "point",
                options=["--synthetic", "--no-window", "--quiet", "--no-recording"],
            )
            point = subprocess.Popen(
                [*link.exec_prefix, *argv, "--report", str(report), "--report-interval", "1"],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

            def playing(source: str) -> bool:
                lines = reports(report)
                t = track(lines[-1], source) if lines else None
                return bool(t and t.get("fps", 0) > 0 and not t.get("paused"))

            await wait_for(lambda: playing("board_camera"), 90, "the board camera at the point")

            def point_ids() -> set[str]:
                rooms = server.stats()["rooms"][room]["receiving"]
                return {p["participant"] for p in rooms if p["classroom"] == "xiaohe"}

            first = point_ids()
            connected_at = len(reports(report))
            # 45 s on the satellite link: past aioice's own consent give-up point.
            await wait_for(lambda: len(reports(report)) >= connected_at + 45, 90, "45 s")
            assert point_ids() == first, "the point reconnected on the satellite link"
            assert all(r["connected"] for r in reports(report)[connected_at:])

            # The line shrinks to 350 kbit/s: the board pauses (said so), audio goes on.
            link.set_link(LinkSpec.symmetric(rtt_ms=100, rate_bps=350_000))

            def thin() -> bool:
                lines = reports(report)
                if len(lines) < 3:
                    return False
                board = track(lines[-1], "board_camera")
                mic = [track(r, "classroom_mic") for r in lines[-3:]]
                frames = [m["frames"] for m in mic if m]
                return bool(
                    board
                    and board.get("paused")
                    and board.get("pause_reason") == "bandwidth"
                    and len(frames) == 3
                    and frames[0] < frames[1] < frames[2]
                )

            await wait_for(thin, 60, "the board paused for bandwidth while audio flows")
            # The line recovers: the board comes back by itself.
            link.set_link(LinkSpec.symmetric(rtt_ms=100, rate_bps=5_000_000))
            await wait_for(lambda: playing("board_camera"), 90, "the board camera back")

            # The line dies for 15 s (nothing passes), then returns: the point notices the
            # dead media path, rejoins by itself, and has pictures again within 10 s.
            link.set_link(LinkSpec.symmetric(loss=1.0))
            cut = len(reports(report))
            await wait_for(lambda: len(reports(report)) >= cut + 15, 60, "15 s of outage")
            link.set_link(LinkSpec.symmetric(rtt_ms=100, rate_bps=5_000_000))
            back = len(reports(report))
            await wait_for(lambda: playing("teacher_camera"), 30, "pictures after the outage")
            assert len(reports(report)) - back <= 10, "not back within 10 s of the line"
            assert point_ids() != first  # it rejoined (a new session), by itself
    finally:
        if point is not None:
            stop_process(point)
        server.stop()
        link.close()


if sys.platform != "linux":  # pragma: no cover - namespaces are a Linux thing
    pytestmark = pytest.mark.skip("Linux only")
