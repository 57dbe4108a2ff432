"""Prometheus `/metrics`: what the server already counts, read when Prometheus asks.

Nothing here runs per packet. A custom collector walks the rooms at scrape time and
reads the counters the media path keeps anyway (DownTrack/UpTrack stats, the
subscriber's `SubscriberBandwidth.describe()`, the datagram guard, the codec guard);
what is slow to find out (the replay queue, the recordings' disk use) is refreshed by a
background task and served from its cache; the event-loop lag is a small probe that
sleeps and measures how late it wakes up.

Who may scrape: a bearer `metrics_token`, a global admin token, or an address inside
`metrics_allow` (docs/security.md, docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from media_server import guard
from media_server.ops import classroom_quality, classrooms_of
from media_server.signalling import ERRORS_SENT
from tongke import rtc_internals
from tongke.ratelimit import RATE_LIMITS
from tongke.tokens import Role, TokenError, issue_token, verify_token

if TYPE_CHECKING:
    from media_server.downtrack import DownTrack
    from media_server.room import Room
    from media_server.sfu import Sfu
    from tongke.app import AppContext

log = logging.getLogger(__name__)

PROBE_S = 0.5  # how often the loop-lag probe wakes up
LAG_WINDOW_S = 60.0  # the "max" lag gauge covers this long
REFRESH_S = 10.0  # replay queue depth
DISK_REFRESH_S = 60.0  # recordings' disk use: a directory walk, so not often
RECORDING_AREAS = ("recordings", "uploads", "replays")
PEER_TIMEOUT_S = 3.0

# The other processes serving this host's lessons: a front's media workers
# (tongke/cluster), which listen on ports Prometheus and the ops page cannot know. The
# front sets a function returning (name, base URL) pairs; its /metrics and /api/ops read
# theirs with a short-lived global admin token. With peers every metric sample carries a
# `process` label ("front" for the front's own).
Peers = Callable[[], list[tuple[str, str]]]
PEERS: web.AppKey[Peers] = web.AppKey("tongke_peers")
_DOWN_FIELDS = (
    "packets",
    "octets",
    "retransmitted",
    "nacks",
    "keyframe_requests",
    "keyframes_asked",
)


class LoopLag:
    """How late the event loop runs a timer: what every signalling message also waits."""

    def __init__(self) -> None:
        self.last_s = 0.0
        self._recent: list[tuple[float, float]] = []

    @property
    def max_s(self) -> float:
        return max((lag for _, lag in self._recent), default=0.0)

    async def run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(PROBE_S)
            now = time.monotonic()
            self.last_s = max(0.0, now - start - PROBE_S)
            self._recent = [(t, lag) for t, lag in self._recent if now - t < LAG_WINDOW_S]
            self._recent.append((now, self.last_s))


class Totals:
    """Counters summed over DownTracks that come and go, kept monotonic.

    A participant's DownTracks vanish with it; summing the live ones would make the
    "total" fall. Each observation adds what each DownTrack counted since it was last
    seen; a DownTrack that leaves between two observations (scrapes and the background
    refresh, at most REFRESH_S apart) takes at most that interval's counts with it.
    """

    def __init__(self) -> None:
        self.total = dict.fromkeys(_DOWN_FIELDS, 0)
        self._seen: weakref.WeakKeyDictionary[DownTrack, tuple[int, ...]] = (
            weakref.WeakKeyDictionary()
        )

    def observe(self, downtracks: Iterable[DownTrack]) -> None:
        for down in downtracks:
            now = tuple(getattr(down.stats, f) for f in _DOWN_FIELDS)
            before = self._seen.get(down, (0,) * len(_DOWN_FIELDS))
            for name, new, old in zip(_DOWN_FIELDS, now, before, strict=True):
                if new > old:
                    self.total[name] += new - old
            self._seen[down] = now


def dir_bytes(root: Path) -> int:
    """Bytes of the files under `root` (a walk: only from the background refresh)."""
    total = 0
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue  # a file removed while we walk
        except OSError:
            continue
    return total


class Background:
    """What is too slow for a scrape, refreshed on its own schedule."""

    def __init__(self, sfu: Sfu, data_dir: Path, queue: Any) -> None:
        self.sfu = sfu
        self.data_dir = data_dir
        self.queue = queue
        self.jobs: dict[str, int] = {}
        self.disk: dict[str, int] = {}
        self.disk_at = 0.0

    def downtracks(self) -> Iterator[DownTrack]:
        for room in self.sfu.rooms.rooms.values():
            for p in room.participants.values():
                for slot in p.subscriber.slots:
                    if slot.downtrack is not None:
                        yield slot.downtrack

    async def refresh(self, totals: Totals) -> None:
        totals.observe(self.downtracks())
        depth = getattr(self.queue, "depth", None)
        if depth is not None:
            try:
                self.jobs = await depth()
            except Exception as exc:  # Redis away: keep the last figures, say so once
                log.warning("replay queue depth unavailable: %s", exc)
        if time.monotonic() - self.disk_at >= DISK_REFRESH_S or not self.disk:
            self.disk = await asyncio.to_thread(self._disk)
            self.disk_at = time.monotonic()

    def _disk(self) -> dict[str, int]:
        return {area: dir_bytes(self.data_dir / area) for area in RECORDING_AREAS}


class TongkeCollector(Collector):
    def __init__(
        self,
        sfu: Sfu,
        background: Background,
        lag: LoopLag,
        totals: Totals,
        app: web.Application,
    ) -> None:
        self.sfu = sfu
        self.background = background
        self.lag = lag
        self.totals = totals
        self.app = app

    def collect(self) -> Iterator[Metric]:
        rooms = list(self.sfu.rooms.rooms.values())
        phases: dict[str, int] = {}
        roles: dict[str, int] = {r.value: 0 for r in Role}
        for room in rooms:
            phase = room.classroom.phase.value
            phases[phase] = phases.get(phase, 0) + 1
            for p in room.participants.values():
                roles[p.claims.role.value] += 1
        g = GaugeMetricFamily("tongke_rooms", "Open lessons by phase", labels=["phase"])
        for phase in ("waiting", "live", "ended"):
            g.add_metric([phase], phases.get(phase, 0))
        yield g
        g = GaugeMetricFamily(
            "tongke_participants", "Connected participants by role", labels=["role"]
        )
        for role, n in sorted(roles.items()):
            g.add_metric([role], n)
        yield g
        yield GaugeMetricFamily(
            "tongke_sessions", "Signalling sessions", value=len(self.sfu.sessions)
        )
        yield GaugeMetricFamily(
            "tongke_peer_connections",
            "WebRTC PeerConnections",
            value=len(self.sfu.peer_connections),
        )

        self.totals.observe(self.background.downtracks())
        t = self.totals.total
        for name, field, text in (
            ("tongke_forwarded_packets", "packets", "RTP packets forwarded to subscribers"),
            ("tongke_forwarded_bytes", "octets", "RTP payload bytes forwarded to subscribers"),
            ("tongke_retransmitted_packets", "retransmitted", "Packets resent on a NACK"),
            ("tongke_nacks_received", "nacks", "NACKs received from subscribers"),
            ("tongke_keyframe_requests_received", "keyframe_requests", "PLI/FIR from subscribers"),
            (
                "tongke_keyframes_asked",
                "keyframes_asked",
                "Keyframe requests passed upstream for subscribers: joins, switches, repairs",
            ),
        ):
            yield CounterMetricFamily(name, text, value=t[field])

        paused = GaugeMetricFamily(
            "tongke_paused_sources", "Video subscriptions not forwarded now", labels=["by"]
        )
        by_allocator = by_user = 0
        for down in self.background.downtracks():
            by_allocator += down.forwarder.paused_by_allocator
            by_user += down.forwarder.paused_by_user
        paused.add_metric(["bandwidth"], by_allocator)
        paused.add_metric(["user"], by_user)
        yield paused

        yield from self._classrooms(rooms)

        codecs = guard.snapshot()
        yield GaugeMetricFamily(
            "tongke_server_decoders",
            "Decoders created in the server (must be 0)",
            value=codecs["decoders"],
        )
        yield GaugeMetricFamily(
            "tongke_server_encoders",
            "Encoders created in the server (must be 0)",
            value=codecs["encoders"],
        )
        yield GaugeMetricFamily(
            "tongke_event_loop_lag_seconds", "How late the last timer ran", value=self.lag.last_s
        )
        yield GaugeMetricFamily(
            "tongke_event_loop_lag_max_seconds",
            f"Worst timer lateness over the last {int(LAG_WINDOW_S)} s",
            value=self.lag.max_s,
        )
        jobs = GaugeMetricFamily("tongke_replay_jobs", "Replay packaging jobs", labels=["state"])
        for state, n in sorted(self.background.jobs.items()):
            jobs.add_metric([state], n)
        yield jobs
        disk = GaugeMetricFamily(
            "tongke_recording_disk_bytes",
            f"Bytes under data_dir by area (refreshed every {int(DISK_REFRESH_S)} s)",
            labels=["area"],
        )
        for area, n in sorted(self.background.disk.items()):
            disk.add_metric([area], n)
        yield disk
        with contextlib.suppress(OSError):
            st = os.statvfs(self.background.data_dir)
            yield GaugeMetricFamily(
                "tongke_data_dir_free_bytes",
                "Free space where data_dir lives",
                value=st.f_bavail * st.f_frsize,
            )
        yield _labelled_counter(
            "tongke_datagrams_dropped",
            "UDP datagrams the guard dropped before aiortc saw them",
            "reason",
            rtc_internals.DATAGRAM_DROPS,
        )
        yield _labelled_counter(
            "tongke_rtp_handler_errors",
            "RTP/RTCP packets whose handler raised (the packet was dropped)",
            "where",
            rtc_internals.HANDLER_ERRORS,
        )
        yield _labelled_counter(
            "tongke_signalling_errors",
            "Error replies sent on the signalling socket",
            "code",
            ERRORS_SENT,
        )
        yield _labelled_counter(
            "tongke_rate_limited",
            "Requests refused by a rate limit",
            "limit",
            self.app[RATE_LIMITS].refused,
        )

    def _classrooms(self, rooms: list[Room]) -> Iterator[Metric]:
        labels = ["room", "classroom", "role"]
        est = GaugeMetricFamily(
            "tongke_classroom_downlink_estimate_bps",
            "The server's estimate of a classroom's downlink",
            labels=labels,
        )
        down_loss = GaugeMetricFamily(
            "tongke_classroom_downlink_loss_ratio",
            "Loss the classroom reports of what it receives",
            labels=labels,
        )
        rtt = GaugeMetricFamily(
            "tongke_classroom_rtt_seconds", "Round-trip time to the classroom", labels=labels
        )
        fps = GaugeMetricFamily(
            "tongke_classroom_received_fps",
            "Frame rate of the video the classroom receives",
            labels=labels,
        )
        paused = GaugeMetricFamily(
            "tongke_classroom_paused_sources",
            "Video sources paused for the classroom",
            labels=labels,
        )
        received = CounterMetricFamily(
            "tongke_classroom_forwarded_packets",
            "Packets sent to the classroom (resets on reconnect)",
            labels=labels,
        )
        up_packets = CounterMetricFamily(
            "tongke_classroom_uplink_packets",
            "Packets received from the classroom (resets on reconnect)",
            labels=labels,
        )
        up_lost = CounterMetricFamily(
            "tongke_classroom_uplink_lost",
            "Packets of the classroom lost on the way to us (before repair)",
            labels=labels,
        )
        now = time.time()
        frame_rates: dict[int, float] = {}
        for room in rooms:
            for classroom, (role, members) in classrooms_of(room).items():
                q = classroom_quality(members, now, frame_rates)
                key = [room.id, classroom, role]
                if q.estimate_bps is not None:
                    est.add_metric(key, q.estimate_bps)
                if q.down_loss is not None:
                    down_loss.add_metric(key, q.down_loss)
                if q.rtt_ms is not None:
                    rtt.add_metric(key, q.rtt_ms / 1000)
                if q.fps is not None:
                    fps.add_metric(key, q.fps)
                paused.add_metric(key, q.paused)
                received.add_metric(key, q.forwarded_packets)
                up_packets.add_metric(key, q.up_packets)
                up_lost.add_metric(key, q.up_lost)
        yield from (est, down_loss, rtt, fps, paused, received, up_packets, up_lost)


class _Families:
    """Already-collected families, in the shape `generate_latest` reads."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def merge(parts: list[tuple[str, Iterable[Metric]]]) -> list[Metric]:
    """One family per name over several processes' families, samples labelled by process."""
    out: dict[str, Metric] = {}
    for process, families in parts:
        for family in families:
            merged = out.get(family.name)
            if merged is None:
                merged = out[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            elif merged.type != family.type:
                log.warning("%s: %s is a %s elsewhere", process, family.name, merged.type)
                continue
            merged.samples.extend(
                s._replace(labels={**s.labels, "process": process}) for s in family.samples
            )
    return list(out.values())


async def scrape_peers(
    peers: list[tuple[str, str]], token: str
) -> tuple[list[tuple[str, list[Metric]]], dict[str, bool]]:
    """Each peer's families, and which peers answered."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {token}"}

    async def one(session: aiohttp.ClientSession, url: str) -> list[Metric]:
        async with session.get(url.rstrip("/") + "/metrics", headers=headers) as resp:
            resp.raise_for_status()
            text = await resp.text()
        return list(text_string_to_metric_families(text))

    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(
            *(one(session, url) for _, url in peers), return_exceptions=True
        )
    parts: list[tuple[str, list[Metric]]] = []
    up: dict[str, bool] = {}
    for (name, _), result in zip(peers, results, strict=True):
        up[name] = not isinstance(result, BaseException)
        if isinstance(result, BaseException):
            log.warning("metrics of %s unavailable: %s", name, result)
        else:
            parts.append((name, result))
    return parts, up


def _labelled_counter(name: str, text: str, label: str, counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, text, labels=[label])
    for key, n in sorted(counts.items()):
        family.add_metric([str(key)], n)
    return family


def _networks(entries: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip()]
    except ValueError as exc:
        raise ValueError(f"metrics_allow: {exc}") from None


def setup(app: web.Application, ctx: AppContext, sfu: Sfu) -> None:
    from recording.api import QUEUE

    config = ctx.config
    allow = _networks(config.metrics_allow)
    lag = LoopLag()
    totals = Totals()
    background = Background(sfu, Path(config.data_dir), app.get(QUEUE))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TongkeCollector(sfu, background, lag, totals, app))
    ProcessCollector(registry=registry)

    def allowed(request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if (
            token
            and config.metrics_token
            and hmac.compare_digest(token.encode(), config.metrics_token.encode())
        ):
            return True
        if token:
            try:
                verify_token(ctx.secret, token, room="*", roles=frozenset({Role.ADMIN}))
                return True
            except TokenError:
                return False
        try:
            remote = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return False
        return any(remote in net for net in allow)

    async def metrics(request: web.Request) -> web.Response:
        if not allowed(request):
            return web.json_response(
                {"error": {"code": "forbidden", "message": "metrics need the metrics token"}},
                status=401 if "Authorization" not in request.headers else 403,
            )
        peers = request.app[PEERS]() if PEERS in request.app else []
        if not peers:
            body = generate_latest(registry)
        else:
            token = issue_token(
                ctx.secret, room="*", classroom="metrics", role=Role.ADMIN, ttl_s=60
            )
            parts, up = await scrape_peers(peers, token)
            reachable = GaugeMetricFamily(
                "tongke_metrics_peer_up", "1 when a media worker answered", labels=["peer"]
            )
            for name, ok in sorted(up.items()):
                reachable.add_metric([name], int(ok))
            own = [*registry.collect(), reachable]
            body = generate_latest(_Families(merge([("front", own), *parts])))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    tasks: list[asyncio.Task[None]] = []

    async def refresh_forever() -> None:
        while True:
            try:
                await background.refresh(totals)
            except Exception:
                log.exception("metrics refresh failed")
            await asyncio.sleep(REFRESH_S)

    async def start(app: web.Application) -> None:
        tasks.append(asyncio.create_task(lag.run(), name="metrics-loop-lag"))
        tasks.append(asyncio.create_task(refresh_forever(), name="metrics-refresh"))

    async def stop(app: web.Application) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tasks.clear()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/metrics", metrics)
