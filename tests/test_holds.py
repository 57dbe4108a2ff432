"""A source whose rises do not hold waits longer before the next (media_server/holds.py)."""

from __future__ import annotations

import pytest

from media_server.allocator import allocate
from media_server.holds import HOLD_S, MAX_HOLD_S, SourceHolds
from tests.test_allocator import layers, lesson, shown

BOARD = "p1/board_camera"


@pytest.mark.parametrize(
    ("shown_for_s", "holds"),
    [
        # 1 Mbit/s: the board's 180p fits only at the estimate's peaks and falls a second
        # later, again and again: each wait twice the last, up to a minute.
        (1.0, [8.0, 16.0, 32.0, 64.0, 64.0]),
        # Shown longer than twice its hold each time: a drop, not a rise that failed.
        (20.0, [HOLD_S, HOLD_S, HOLD_S]),
    ],
)
def test_a_rise_that_does_not_hold_waits_twice_as_long_next_time(
    shown_for_s: float, holds: list[float]
) -> None:
    sources = SourceHolds()
    now = 0.0
    got = []
    for _ in holds:
        sources.rose(BOARD, now)
        now += shown_for_s
        sources.lowered(BOARD, now)
        got.append(sources.hold_s(BOARD))
        assert BOARD in sources.held(now + got[-1] - 0.1)
        assert BOARD not in sources.held(now + got[-1])
        now += got[-1]
    assert got == holds
    assert max(got) <= MAX_HOLD_S


def test_a_held_source_stays_down_while_the_rest_of_the_lesson_rises() -> None:
    """Only the source whose rise failed waits; a probe that shows the line grew lifts
    every hold at once."""
    sources = SourceHolds()
    sources.rose(BOARD, 10.0)
    sources.lowered(BOARD, 11.0)
    held = sources.held(12.0)
    assert held == {BOARD}
    # Everything paused before (a thin spell), now 930 kbit/s to share: the teacher and
    # the slides come back, the board does not.
    cands = lesson(
        teacher_camera={"started": True},
        courseware={"started": True},
        board_camera={"started": True},
    )
    got = layers(allocate(930_000, cands, hold=False, held=held))
    assert got == shown(teacher_camera="m", courseware="h")
    sources.lift()
    got = layers(allocate(930_000, cands, hold=False, held=sources.held(12.0)))
    assert got == shown(teacher_camera="m", courseware="h", board_camera="l")
