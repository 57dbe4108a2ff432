"""One subscriber's downlink estimate, from what the subscriber sends back.

Two signals, as in Google Congestion Control (the estimator Chromium and aiortc run):

- REMB: the receiver's own delay-based estimate (Chromium and aiortc compute it from
  abs-send-time, which every DownTrack stamps). It reacts to a queue building on the
  link before packets are lost.
- Loss from receiver reports: a loss-based estimate that backs off multiplicatively
  when more than 10% is lost, holds between 2% and 10% (random loss on a rural line is
  not congestion) and grows by 8% per report below that.

The estimate is the lower of the two; a REMB older than REMB_STALE_S no longer counts.
No I/O: the subscriber's control loop feeds it and reads `bps`.
"""

from __future__ import annotations

from dataclasses import dataclass

INITIAL_BPS = 2_500_000  # between the rural floors (2 Mbit/s per class, 4 per point)
MIN_BPS = 64_000
MAX_BPS = 20_000_000
REMB_STALE_S = 5.0
LOSS_HIGH = 0.10
LOSS_LOW = 0.02
GROWTH = 1.08


@dataclass
class Estimate:
    bps: int
    remb_bps: int | None
    loss_bps: int
    loss: float
    rtt_ms: float | None


class DownlinkEstimator:
    def __init__(self, *, initial_bps: int = INITIAL_BPS, max_bps: int = MAX_BPS) -> None:
        self.max_bps = max_bps
        self._loss_bps = float(initial_bps)
        self._remb: tuple[int, float] | None = None  # (bps, when)
        self.loss = 0.0
        self.rtt_ms: float | None = None

    def on_remb(self, bps: int, now: float) -> None:
        if bps > 0:
            self._remb = (bps, now)

    def on_loss(self, fraction: float, now: float) -> None:
        """One interval's loss fraction (0..1), over every stream the subscriber receives."""
        self.loss = fraction
        if fraction > LOSS_HIGH:
            self._loss_bps *= 1 - 0.5 * fraction
        elif fraction < LOSS_LOW:
            remb = self._fresh_remb(now)
            ceiling = 1.5 * remb if remb is not None else self.max_bps
            # Never let the loss side run far ahead of what the delay side has seen.
            self._loss_bps = min(self._loss_bps * GROWTH, max(ceiling, self._loss_bps))
        self._loss_bps = min(max(self._loss_bps, MIN_BPS), self.max_bps)

    def on_rtt(self, rtt_ms: float) -> None:
        self.rtt_ms = rtt_ms if self.rtt_ms is None else 0.8 * self.rtt_ms + 0.2 * rtt_ms

    def _fresh_remb(self, now: float) -> int | None:
        if self._remb is None or now - self._remb[1] > REMB_STALE_S:
            return None
        return self._remb[0]

    def estimate(self, now: float) -> Estimate:
        remb = self._fresh_remb(now)
        bps = self._loss_bps if remb is None else min(self._loss_bps, remb)
        bps = min(max(bps, MIN_BPS), self.max_bps)
        return Estimate(
            bps=int(bps),
            remb_bps=remb,
            loss_bps=int(self._loss_bps),
            loss=self.loss,
            rtt_ms=self.rtt_ms,
        )
