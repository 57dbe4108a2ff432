"""Probing: finding a subscriber's headroom instead of waiting for it. No I/O.

After a drop, an estimate that only grows a few percent per report takes half a minute
to climb from 1 back to 5 Mbit/s, and meanwhile pictures stay paused. So, where the
subscriber has transport-wide feedback, no queue was detected for `QUIET_S` and the
sources want more than the estimate, the subscriber's control loop sends a probe
cluster: for `CLUSTER_S` it tops what it sends up to `GROWTH` times the estimate (at most
what the sources want) with duplicates of the last packet of forwarded videos and
padding on paused ones.

The cluster is judged by rates, as GCC's ProbeBitrateEstimator does, not by delay: from
the transport-cc feedback for the packets sent inside it, how fast they left (our clock)
and how fast they arrived (the receiver's). A link that carries the cluster delivers it
about as fast as it was sent: the estimate may take that rate at once, and the next
probe follows soon. A link that cannot spreads the cluster out to its own rate: the
arrival rate is then a direct reading of the link's capacity. A delay reading cannot
tell a queue from a busy machine's stalls; a rate reading over a whole cluster can.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter

from media_server.twcc import PacketResult

CLUSTER_S = 0.06
INTERVAL_S = 1.0  # after a cluster the link carried: it may carry more
RETRY_S = 3.0  # after a cluster that filled the link, or one with too little feedback
QUIET_S = 2.0
GROWTH = 3.0
# After a cluster the link spread out, the next asks only this much above the capacity
# it showed: enough to see the link grow, without a second full queue every few seconds.
GROWTH_SATURATED = 1.3
# The sources want more than the estimate gives them (a layer that does not fit).
WORTH_PROBING = 1.02
# Arrival slower than this share of the send rate: the link, not we, set the pace.
UNSATURATED = 0.9
MIN_PACKETS = 5
MIN_RECEIVED = 0.8  # share of the cluster's packets that must be reported received
MIN_SPAN_S = 0.005  # a cluster sent or received in less is not a rate reading
FOUND = 1.05  # a reading this far above the estimate found headroom


@dataclass(frozen=True)
class Probe:
    target_bps: float
    started: float
    ends: float
    from_bps: float = 0.0  # the estimate when it started


@dataclass(frozen=True)
class ProbeResult:
    send_bps: float
    receive_bps: float

    @property
    def saturated(self) -> bool:
        """The link could not carry the cluster at the rate it was sent."""
        return self.receive_bps < UNSATURATED * self.send_bps

    @property
    def bps(self) -> float:
        """What the link proved it carries."""
        return self.receive_bps if self.saturated else min(self.send_bps, self.receive_bps)


def judge(packets: Iterable[PacketResult]) -> ProbeResult | None:
    """Send and receive rate of one cluster's packets; None when they say too little."""
    reported = list(packets)
    # (sent, size, arrival) of each packet that arrived
    arrived = [(sent, size, arrival) for _, sent, size, arrival in reported if arrival is not None]
    if len(arrived) < MIN_PACKETS or len(arrived) < MIN_RECEIVED * len(reported):
        return None
    total = sum(size for _, size, _ in arrived)
    by_sent = sorted(arrived, key=_first)
    send_s = by_sent[-1][0] - by_sent[0][0]
    by_arrival = sorted(arrived, key=_last)
    receive_s = (by_arrival[-1][2] - by_arrival[0][2]) / 1e6
    if receive_s < MIN_SPAN_S:
        return None
    # The last packet sent took no send time, the first received no receive time.
    send_bps = (total - by_sent[-1][1]) * 8 / max(send_s, MIN_SPAN_S)
    receive_bps = (total - by_arrival[0][1]) * 8 / receive_s
    return ProbeResult(send_bps=send_bps, receive_bps=receive_bps)


_first = itemgetter(0)
_last = itemgetter(2)


class ProbeController:
    def __init__(self) -> None:
        self.active: Probe | None = None
        self._next_at = 0.0
        self._cluster: dict[int, PacketResult] = {}  # unwrapped transport seq -> result
        self.sent_until = 0.0  # when the active cluster's last probe packet left
        self.succeeded = 0
        self.failed = 0
        self.last: ProbeResult | None = None

    def start(
        self, now: float, estimate_bps: float, demand_bps: float, last_overuse_at: float
    ) -> Probe | None:
        """A probe to run now, or None."""
        if self.active is not None or now < self._next_at or now - last_overuse_at < QUIET_S:
            return None
        if demand_bps < estimate_bps * WORTH_PROBING:
            return None
        last = self.last
        if last is not None and last.saturated:
            target = min(demand_bps, GROWTH_SATURATED * max(estimate_bps, last.bps))
        else:
            target = min(demand_bps, estimate_bps * GROWTH)
        self.active = Probe(
            target_bps=target, started=now, ends=now + CLUSTER_S, from_bps=estimate_bps
        )
        self._cluster = {}
        self.sent_until = now + CLUSTER_S
        return self.active

    def collect(self, results: Iterable[PacketResult]) -> None:
        """Keep the feedback for packets sent inside the active cluster."""
        probe = self.active
        if probe is None:
            return
        start, end = probe.started, self.sent_until
        for r in results:
            if start <= r[1] <= end:
                self._cluster[r[0]] = r

    def finish(self, now: float) -> ProbeResult | None:
        """Once the cluster's feedback is in: its reading, or None if it gave none."""
        probe, self.active = self.active, None
        if probe is None:
            return None
        result = judge(self._cluster.values())
        self._cluster = {}
        self.last = result
        # Succeeded: it found headroom (a link that carried it, or spread it out at a
        # rate above the estimate). Only a carried one is followed soon by the next.
        if result is not None and result.bps > FOUND * probe.from_bps:
            self.succeeded += 1
        else:
            self.failed += 1
        # A cluster the link carried is followed soon by the next, higher one, also
        # when it fell short of its target (a few videos' padding could not fill it)
        # but still found headroom.
        carried = result is not None and not result.saturated
        if (
            carried
            and result is not None
            and (result.bps >= 0.8 * probe.target_bps or result.bps > FOUND * probe.from_bps)
        ):
            self._next_at = now + INTERVAL_S
        else:
            self._next_at = now + RETRY_S
        return result
