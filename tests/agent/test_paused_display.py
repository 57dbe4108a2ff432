"""A teaching point's agent shows a picture the SFU paused as paused, never as live."""

from __future__ import annotations

from classroom_agent.agent import PAUSED_BANDWIDTH, pause_text, summary_line


def test_the_summary_says_which_picture_is_paused_for_bandwidth() -> None:
    snapshot = {
        "connected": True,
        "tracks": [
            {"name": "主讲 · Teacher camera", "kind": "video", "fps": 25.0, "frames": 100},
            {
                "name": "主讲 · Board camera",
                "kind": "video",
                "fps": 0.0,
                "frames": 40,
                "paused": True,
                "pause_reason": "bandwidth",
            },
            {"name": "主讲 · Classroom microphone", "kind": "audio", "frames": 500},
        ],
    }
    line = summary_line(snapshot)
    assert "Teacher camera: 25 fps" in line
    assert f"Board camera: {PAUSED_BANDWIDTH}" in line
    assert "Board camera: 0 fps" not in line


def test_pause_text_tells_bandwidth_from_the_viewers_own_choice() -> None:
    assert pause_text({"paused": False, "reason": None}) is None
    assert pause_text({"paused": True, "reason": "bandwidth"}) == PAUSED_BANDWIDTH
    assert pause_text({"paused": True, "reason": "subscriber"}) == "画面已暂停 / Paused"
