"""Probing: finding a subscriber's headroom instead of waiting for it. No I/O.

After a drop, an estimate that only grows a few percent per report takes half a minute
to climb from 1 back to 5 Mbit/s, and meanwhile pictures stay paused. So, where the
subscriber has transport-wide feedback, a quiet link (no queue for `QUIET_S`) and sources
that want more than the estimate, the subscriber's control loop sends a probe: for
`PROBE_S` it fills the link up to twice the estimate (at most what the sources want)
with duplicates of the last packet of forwarded videos and padding on paused ones, and
watches the feedback. If what arrives reaches most of that target without a queue
building, the link carries it: the estimate takes it at once, and the next probe may
double again. A failed probe waits `RETRY_S` before the next.
"""

from __future__ import annotations

from dataclasses import dataclass

PROBE_S = 0.5
INTERVAL_S = 1.5
RETRY_S = 4.0
QUIET_S = 2.0
GROWTH = 2.0
WORTH_PROBING = 1.15  # the sources want at least this much more than the estimate
SUCCESS = 0.8  # share of the target that must arrive


@dataclass(frozen=True)
class Probe:
    target_bps: float
    started: float
    ends: float


class ProbeController:
    def __init__(self) -> None:
        self.active: Probe | None = None
        self._next_at = 0.0
        self.succeeded = 0
        self.failed = 0

    def start(
        self, now: float, estimate_bps: float, demand_bps: float, last_overuse_at: float
    ) -> Probe | None:
        """A probe to run now, or None."""
        if self.active is not None or now < self._next_at or now - last_overuse_at < QUIET_S:
            return None
        if demand_bps < estimate_bps * WORTH_PROBING:
            return None
        target = min(demand_bps, estimate_bps * GROWTH)
        self.active = Probe(target_bps=target, started=now, ends=now + PROBE_S)
        return self.active

    def finish(self, now: float, peak_acked_bps: float, overused: bool) -> float | None:
        """Once the probe's feedback is in: the rate the link proved it carries, or None."""
        probe, self.active = self.active, None
        if probe is None:
            return None
        if not overused and peak_acked_bps >= SUCCESS * probe.target_bps:
            self.succeeded += 1
            self._next_at = now + INTERVAL_S
            return peak_acked_bps
        self.failed += 1
        self._next_at = now + RETRY_S
        return None
