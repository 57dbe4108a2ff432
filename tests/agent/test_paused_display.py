"""A teaching point's agent shows a picture the SFU paused as paused, never as live."""

from __future__ import annotations

from classroom_agent.agent import (
    PAUSED_BANDWIDTH,
    RESUMING,
    ClassroomAgent,
    pause_text,
    summary_line,
)


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


def test_a_resumed_picture_says_so_until_its_first_new_frame() -> None:
    """256kbit-10pct: a picture the SFU resumed waited 1-2 s for its keyframe, and the
    last frame from before the pause stood there under no notice, as if live."""
    agent = ClassroomAgent.__new__(ClassroomAgent)
    agent.allocation, agent.resuming, agent.window = {}, set(), None
    teacher = {"track": "t1", "layer": "l", "paused": False}
    agent.apply_allocation({"tracks": [teacher]})
    assert agent.resuming == set()  # a first allocation resumes nothing
    agent.apply_allocation({"tracks": [teacher | {"paused": True, "reason": "bandwidth"}]})
    agent.apply_allocation({"tracks": [teacher]})
    assert agent.resuming == {"t1"}
    assert pause_text(teacher, resuming=True) == RESUMING
    assert pause_text({"paused": False, "resuming": True}) == RESUMING
    # Paused again before a frame came: paused it is.
    agent.apply_allocation({"tracks": [teacher | {"paused": True, "reason": "bandwidth"}]})
    assert agent.resuming == set()
