"""How long a source waits before it may rise again after its rises did not hold. No I/O.

Near a line's rate the estimate saws up and down by a tenth: probes read the line a
little over its rate, and a cut follows the rise they allow. The layer that fits only
at the peaks came and went every 10-20 s: the board's 180p at 1 Mbit/s showed for 1-3 s
three or four times a minute (bench/rural.py 1mbit-5pct-300ms, point agent), each time
for the cost of a keyframe. The subscriber's own hold after a drop (4-16 s, see
media_server/bandwidth.py) stops every source from rising for a while; this holds only
the source whose rise failed, twice as long each time it fails again, up to a minute, so
the rest of the lesson still rises when the line allows. A probe or retest that shows
the line grew lifts every hold.
"""

from __future__ import annotations

HOLD_S = 4.0
MAX_HOLD_S = 64.0


class SourceHolds:
    def __init__(self) -> None:
        self._rose: dict[str, float] = {}  # key -> when its layer last rose
        self._holds: dict[str, tuple[float, float]] = {}  # key -> (hold, since)

    def rose(self, key: str, now: float) -> None:
        self._rose[key] = now

    def lowered(self, key: str, now: float) -> None:
        """The allocation took `key` down a layer or paused it at `now`."""
        rose = self._rose.pop(key, None)
        hold_s = self._holds.get(key, (HOLD_S, 0.0))[0]
        if rose is not None and now - rose < 2 * hold_s:
            hold_s = min(2 * hold_s, MAX_HOLD_S)  # its rise did not hold: wait longer
        else:
            hold_s = HOLD_S
        self._holds[key] = (hold_s, now)

    def held(self, now: float) -> frozenset[str]:
        """The sources that may not rise at `now`."""
        return frozenset(k for k, (hold_s, since) in self._holds.items() if now - since < hold_s)

    def hold_s(self, key: str) -> float:
        return self._holds.get(key, (HOLD_S, 0.0))[0]

    def lift(self) -> None:
        """The line proved it carries more: every source may rise at once."""
        self._holds.clear()
