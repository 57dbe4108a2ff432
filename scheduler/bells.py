"""Bell schedules and clock alignment.

Schools ring different bells, so a remote lesson is aligned by clock time, not by period
number: a point class can take a master lesson when the lesson sits inside one of the
point's own bell periods, reaching at most a tolerance (default 5 minutes) into the
breaks around it, and overlaps none of the class's busy periods. With soft bells a lesson
may instead straddle a break anywhere inside one of the point's school-day blocks (a
morning or an afternoon run of periods, widened by EDGE_SLACK_MIN at both ends), at a
cost in the objective.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ForeignKey, Integer
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.db import Base

# Students are at school a few minutes before the first bell and after the last.
EDGE_SLACK_MIN = 5
# A gap longer than this between periods (lunch) splits the day into two blocks.
BLOCK_GAP_MIN = 30


class BellPeriod(Base):
    __tablename__ = "sch_bell"
    school_id: Mapped[str] = mapped_column(ForeignKey("sch_school.id"), primary_key=True)
    period: Mapped[int] = mapped_column(Integer, primary_key=True)
    start_min: Mapped[int] = mapped_column(Integer)
    end_min: Mapped[int] = mapped_column(Integer)


@dataclass(frozen=True)
class Period:
    number: int
    start: int  # minutes after midnight
    end: int


def parse_clock(text: str) -> int:
    """'08:05' -> 485 minutes after midnight."""
    hours, _, minutes = text.strip().partition(":")
    if not minutes or not hours.isdigit() or not minutes.isdigit():
        raise ValueError(f"not a clock time HH:MM: {text!r}")
    h, m = int(hours), int(minutes)
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(f"not a clock time HH:MM: {text!r}")
    return h * 60 + m


def clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def day_blocks(periods: Sequence[Period]) -> list[tuple[int, int]]:
    """The school day as (start, end) blocks of consecutive periods, widened by the slack."""
    blocks: list[tuple[int, int]] = []
    for p in sorted(periods, key=lambda p: p.start):
        if blocks and p.start - blocks[-1][1] <= BLOCK_GAP_MIN:
            blocks[-1] = (blocks[-1][0], max(blocks[-1][1], p.end))
        else:
            blocks.append((p.start, p.end))
    return [(s - EDGE_SLACK_MIN, e + EDGE_SLACK_MIN) for s, e in blocks]


def overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def fits(
    start: int, end: int, blocks: Iterable[tuple[int, int]], busy: Iterable[tuple[int, int]]
) -> bool:
    """Whether a lesson at [start, end) fits a class whose day and busy times are given."""
    if not any(bs <= start and end <= be for bs, be in blocks):
        return False
    return not any(overlaps(start, end, s, e) for s, e in busy)


def bell_spill(start: int, end: int, periods: Iterable[Period]) -> int | None:
    """Fewest minutes the lesson [start, end) reaches into breaks, over the periods it
    overlaps (None if it overlaps none): the point's periods are what its pupils follow."""
    best: int | None = None
    for p in periods:
        if not overlaps(start, end, p.start, p.end):
            continue
        spill = max(0, p.start - start) + max(0, end - p.end)
        best = spill if best is None else min(best, spill)
    return best


def fits_bells(start: int, end: int, periods: Iterable[Period], tolerance_min: int) -> bool:
    """Whether the lesson sits inside one of the periods, reaching at most `tolerance_min`
    minutes into the breaks around it."""
    spill = bell_spill(start, end, periods)
    return spill is not None and spill <= tolerance_min
