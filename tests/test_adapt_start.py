"""Where a publisher's video starts before the SFU's first publish_feedback."""

from __future__ import annotations

import pytest

from classroom_agent.adapt import start_kbps


@pytest.mark.parametrize(
    ("configured", "role", "start"),
    [
        (500, "point", 100),  # a point's camera: its floor (a fifth)
        (100, "point", 30),  # never under MIN_KBPS
        (20, "point", 20),  # nor over what is configured
        (1200, "master", 1200),  # a master's line is sized for it
    ],
)
def test_a_point_starts_its_video_at_the_floor(configured: int, role: str, start: int) -> None:
    assert start_kbps(configured, role) == start
