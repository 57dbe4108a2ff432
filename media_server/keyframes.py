"""When a keyframe request may go on towards a publisher. Pure: the caller passes the clock.

Every keyframe is a burst that every receiver of the layer pays for (a 720p keyframe is
~60-100 kB: 250-400 ms of a 2 Mbit/s line), so requests are gated twice:

- per layer (UpTrack): a subscriber that must start on this layer (a join, a layer
  switch) is asked for promptly, at most every `urgent_s`; a repair (PLI/FIR, a loss
  the cache cannot repair) at most every `interval_s` after the last request *or the
  last keyframe that arrived*, since a keyframe that left recently may still be on its
  way to whoever asked;
- per subscriber (DownTrack): its repairs are spaced by an interval that doubles each
  time it asks again soon after its last request was served (a link that keeps losing
  keyframes must not make the publisher send one per second to everyone), and falls
  back after a calm period.

A request that must wait is deferred, never dropped; a deferred request that a keyframe
overtook (one arrived after it was asked) is satisfied and not sent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KeyframeGate:
    interval_s: float  # between repair requests
    urgent_s: float = 0.0  # between requests of a subscriber that must start on a keyframe
    backoff_max_s: float = 0.0  # > interval_s: repeated repairs double the interval up to it
    calm_s: float = 10.0  # no request for this long: the interval is back to `interval_s`
    last_sent: float = float("-inf")
    current_s: float = 0.0  # the interval in force (0: `interval_s`)

    @property
    def spacing_s(self) -> float:
        return self.current_s or self.interval_s

    def wait(self, now: float, last_keyframe_at: float, *, urgent: bool = False) -> float:
        """Seconds until a request asked now may be sent (0: now)."""
        if urgent:
            return max(0.0, self.last_sent + self.urgent_s - now)
        since = max(self.last_sent, last_keyframe_at)
        return max(0.0, since + self.spacing_s - now)

    def sent(self, now: float) -> None:
        """A request went on at `now`; a repair soon after the last one backs off."""
        gap = now - self.last_sent
        if self.backoff_max_s > self.interval_s:
            if gap > self.calm_s:
                self.current_s = self.interval_s
            elif gap < 2 * self.spacing_s:
                self.current_s = min(self.spacing_s * 2, self.backoff_max_s)
        self.last_sent = now


def overtaken(asked_at: float, last_keyframe_at: float) -> bool:
    """A keyframe arrived after the request was asked: it answers the request."""
    return last_keyframe_at >= asked_at
