"""The classroom agent: publish a classroom's sources, receive the lesson, stay connected.

One agent runs in each classroom (master or teaching point). Its captures and encoders
run for as long as the agent does; the connection to the server comes and goes: when
the server restarts or the link drops, the agent reconnects with backoff and publishes
the same tracks again, so a lesson survives anything short of the classroom losing power.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from classroom_agent import opus_fec
from classroom_agent.adapt import FeedbackError, Layer, parse_feedback, plan
from classroom_agent.client import ClientEvents, LessonClient, LessonError, Publication, RemoteTrack
from classroom_agent.config import AgentConfig, PublishedTrack, build_tracks
from classroom_agent.framing import FrameBuffer, keyframe_start
from classroom_agent.quality import TrackQuality, receiver_loss
from classroom_agent.state import StateReporter
from recording import LessonMeta, LessonRecorder
from recording.upload import UploadError, upload_recording
from recording.writer import enforce_retention
from tongke import rtc_internals
from tongke.tokens import peek_claims

log = logging.getLogger(__name__)

# A token the server refused will not get better by retrying; anything else might.
FATAL_CODES = frozenset(
    {"token_missing", "token_invalid", "token_expired", "token_wrong_room", "forbidden"}
)
# The first retries are quick (a media node that died is replaced at once, and the
# lesson must go on within 5 s); at most 8 s between attempts: back in the lesson within
# 10 s of the line returning; the jitter spreads a county's agents.
BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 8.0
# Nothing for this long on a track the SFU is sending: the media path is dead, rejoin.
MEDIA_STALL_S = 5.0
# A new connection's path has this long to carry its first datagram. ICE and DTLS on a
# 256 kbit/s line with 10 % loss retransmit their handshakes for several seconds: with
# only MEDIA_STALL_S the agent gave up on each new connection before it was up, and
# rejoined again and again (bench/rural.py, 256kbit-10pct, point agent).
SETUP_STALL_S = 20.0


class AgentStopped(Exception):
    """The agent cannot go on (e.g. its token was refused); the message says why."""


@dataclass
class AgentStatus:
    connected: bool = False
    connects: int = 0
    last_error: str = ""
    #: The SFU's latest receive estimate of our uplink (publish_feedback), if any.
    uplink_estimate_bps: int | None = None
    source_states: dict[str, str] = field(default_factory=dict)


class ClassroomAgent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        window: Any = None,
        report: TextIO | None = None,
        report_interval_s: float = 5.0,
        on_quality: Callable[[dict[str, Any]], None] | None = None,
        record: bool = True,
        upload: bool = True,
    ) -> None:
        self.config = config
        self.token = config.resolved_token()
        if not self.token:
            raise AgentStopped(
                "no token: set `token` or `token_file` in the agent config, or pass --token"
            )
        claims = peek_claims(self.token)
        self.room = str(claims.get("room", ""))
        self.classroom = str(claims.get("classroom", config.classroom_id))
        self.window = window
        self.report = report
        self.report_interval_s = report_interval_s
        self.on_quality = on_quality
        self.status = AgentStatus()
        self.quality: dict[str, TrackQuality] = {}
        self.tracks: list[PublishedTrack] = []
        self._consumers: dict[str, asyncio.Task[None]] = {}
        self._track_sources: dict[str, str] = {}
        # The SFU's latest `allocation`: track id -> {layer, paused, reason}.
        self.allocation: dict[str, dict[str, Any]] = {}
        # Pictures the SFU resumed whose first new frame has not come: until it does, the
        # last frame still shows, and it says so (see RESUMING).
        self.resuming: set[str] = set()
        self._last_media_at = 0.0
        self._client: LessonClient | None = None
        self.record = record
        self.upload = upload
        self.recorder: LessonRecorder | None = None
        self.uploaded: dict[str, Any] | None = None
        self.lesson_ended = False
        self._stop: asyncio.Event | None = None
        # Several servers (one service's nodes): the one we use, the next after a failure.
        self._servers = config.server_urls or [config.server_url]
        self._server = 0
        # Devices, encoders, uplink, CPU, safety copy: told to the server (agent_state).
        self.state_reporter = StateReporter(config)

    @property
    def server_url(self) -> str:
        return self._servers[self._server]

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        # The lesson's end stops the agent like `stop` does: the copy is closed and uploaded.
        self._stop = stop
        self.tracks = build_tracks(self.config, on_state=self._on_source_state)
        if self.record:
            self.recorder = self._start_safety_copy()
        # Encoding runs from now until the agent stops, connected or not: the safety copy
        # must not have a hole where the server was unreachable.
        for published in self.tracks:
            published.track.start()
        reporter = asyncio.ensure_future(self._report_loop(stop))
        backoff = BACKOFF_START_S
        try:
            while not stop.is_set():
                connects = self.status.connects
                try:
                    await self._session(stop)
                    backoff = BACKOFF_START_S
                except LessonError as exc:
                    self.status.last_error = f"{exc.code}: {exc.message}"
                    if exc.code == "lesson_ended":
                        log.info("lesson %s has ended; uploading the safety copy", self.room)
                        self.lesson_ended = True
                        break
                    if exc.code in FATAL_CODES:
                        raise AgentStopped(
                            f"the server refused this agent: {exc.message}"
                        ) from None
                    log.warning(
                        "lesson %s: %s; retrying in %.1f s", self.room, exc.message, backoff
                    )
                except (OSError, ConnectionError, TimeoutError) as exc:
                    self.status.last_error = str(exc) or type(exc).__name__
                    log.warning(
                        "cannot reach %s (%s); retrying in %.1f s",
                        self.server_url,
                        self.status.last_error,
                        backoff,
                    )
                    # Another node of the service may be up while this one is not.
                    self._server = (self._server + 1) % len(self._servers)
                if stop.is_set():
                    break
                if self.status.connects > connects:
                    # We were in the lesson: this is a new outage, start with quick retries.
                    backoff = BACKOFF_START_S
                # Jitter keeps a county's agents from reconnecting in lockstep after a
                # server restart.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            reporter.cancel()
            await self._stop_consumers()
            for published in self.tracks:
                published.track.stop()
            # Let encodes in flight finish before their sources stop under them.
            for published in self.tracks:
                await published.track.drained()
            sources = {id(p.media_source): p.media_source for p in self.tracks}
            for source in sources.values():
                await asyncio.to_thread(source.stop)
            if self.window is not None:
                self.window.close()
            if self.recorder is not None:
                await self._finish_safety_copy(self.recorder)

    async def _session(self, stop: asyncio.Event) -> None:
        client = LessonClient(
            self.server_url,
            self.room,
            self.token,
            events=ClientEvents(
                on_track=self._on_remote_track,
                on_message=self._on_message,
                on_subscribe_transceivers=use_frame_buffers,
            ),
        )
        self._client = client
        feeds: list[MediaStreamTrack] = []
        try:
            await client.connect()
            # A new connection starts from the configuration: this server has not said
            # yet what it receives or who watches.
            self._restore_publishing()
            feeds = [p.track.feed() for p in self.tracks]
            await client.publish(
                [
                    Publication(
                        feed,
                        p.source,
                        layer=p.layer,
                        label=p.label,
                        codec=p.codec,
                        bitrate_kbps=p.bitrate_kbps,
                    )
                    for feed, p in zip(feeds, self.tracks, strict=True)
                ]
            )
            self.status.connected = True
            self.status.connects += 1
            log.info("publishing %d tracks to lesson %s", len(self.tracks), self.room)
            await self.send_state()
            closed = asyncio.ensure_future(client.closed.wait())
            stopping = asyncio.ensure_future(stop.wait())
            stalled = asyncio.ensure_future(self._media_watchdog(client))
            await asyncio.wait({closed, stopping, stalled}, return_when=asyncio.FIRST_COMPLETED)
            for task in (closed, stopping, stalled):
                task.cancel()
            if stalled.done() and not stalled.cancelled() and not stop.is_set():
                raise ConnectionError("no media on a running track; rejoining")
            if not stop.is_set():
                raise ConnectionError(
                    f"the server closed the connection (code {client.close_code})"
                )
        finally:
            self.status.connected = False
            self._client = None
            for feed in feeds:
                feed.stop()
            await self._stop_consumers()
            await client.close()

    # -- safety copy ------------------------------------------------------------------

    def _start_safety_copy(self) -> LessonRecorder:
        """Record every published source from the very packets we send (no second encode).

        The copy survives a network or server failure during the lesson; it is uploaded
        when the lesson ends and kept on disk until the upload has succeeded.
        """
        budget = int(self.config.recording.disk_budget_gb * 1024**3)
        root = self.config.recording.dir / self.classroom
        # Make room by deleting the oldest copies the server already has; a copy that
        # was never uploaded may be a lesson's only copy and is kept.
        for deleted in enforce_retention(root, budget):
            log.info("deleted uploaded safety copy %s (disk budget)", deleted)
        recorder = LessonRecorder(
            root,
            LessonMeta(
                lesson=self.room,
                school=self.classroom,
                subject="",
                grade="",
                teacher="",
                title=self.room,
            ),
            origin="agent",
            max_bytes=budget,
            on_stop=lambda reason: log.error("safety copy stopped: %s", reason),
        )
        for published in self.tracks:
            if published.layer != "h":
                continue  # the top layer carries everything the lower ones do
            writer = recorder.add_track(
                published.source,
                published.kind,
                published.codec,
                width=published.width,
                height=published.height,
                rate=90000 if published.kind == "video" else 48000,
            )
            published.track.add_sink(writer.write)
        recorder.event("agent_started", classroom=self.classroom, role=self.config.role)
        return recorder

    async def _finish_safety_copy(self, recorder: LessonRecorder) -> None:
        recorder.event("agent_stopped", classroom=self.classroom)
        await asyncio.to_thread(recorder.close)
        if not self.upload:
            return
        try:
            self.uploaded = await upload_recording(recorder.directory, self.server_url, self.token)
            log.info("safety copy %s uploaded", recorder.directory)
        except (UploadError, OSError, aiohttp.ClientError) as exc:
            log.warning(
                "safety copy kept at %s (upload failed: %s); `tongke replay upload` retries it",
                recorder.directory,
                exc,
            )

    # -- receiving the lesson ------------------------------------------------------------

    def _on_remote_track(self, remote: RemoteTrack) -> None:
        if remote.track is None:
            return
        name = str(remote.info.get("track", remote.mid))
        old = self._consumers.pop(remote.mid, None)
        if old is not None:
            old.cancel()
        label = f"{remote.info.get('name', '')} · {remote.info.get('label', '')}".strip(" ·")
        quality = self.quality[name] = TrackQuality(kind=remote.track.kind, name=label or name)
        self._track_sources[name] = remote.source
        self._consumers[remote.mid] = asyncio.ensure_future(
            self._consume(remote, name, label, quality)
        )

    async def _media_watchdog(self, client: LessonClient) -> None:
        """Return when nothing arrived for MEDIA_STALL_S on a track the SFU is sending.

        A media path can die without an ICE or DTLS event (a NAT rebinding, a firewall
        dropping its state); rejoining is the way back.
        """
        loop = asyncio.get_running_loop()
        self._last_media_at = loop.time()
        while True:
            await asyncio.sleep(1.0)
            running = [
                r
                for r in client.active_tracks()
                if r.track is not None
                and not self.allocation.get(str(r.info.get("track")), {}).get("paused")
            ]
            # The SFU's sender reports keep arriving while a publisher is merely quiet (a
            # point whose uplink dropped): only a path that carries nothing is dead.
            pc = client.subscribe_pc
            heard = rtc_internals.last_received_at(pc) if pc is not None else None
            if heard is not None:
                heard_at = loop.time() - (time.monotonic() - heard)
                self._last_media_at = max(self._last_media_at, heard_at)
            limit = MEDIA_STALL_S if heard is not None else SETUP_STALL_S
            if not running:
                self._last_media_at = loop.time()
            elif loop.time() - self._last_media_at > limit:
                log.warning("no media for %.0f s on a running track", limit)
                return

    async def _consume(
        self, remote: RemoteTrack, name: str, label: str, quality: TrackQuality
    ) -> None:
        track = remote.track
        assert track is not None
        loop = asyncio.get_running_loop()
        try:
            while remote.active and remote.info.get("track") == name:
                frame = await track.recv()
                self._last_media_at = loop.time()
                quality.add_frame(frame)
                resumed = name in self.resuming
                self.resuming.discard(name)
                if self.window is not None and track.kind == "video" and not self.window.closed:
                    if resumed:
                        self.window.set_notice(name, None)
                    self.window.show(name, label, frame)
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            if self.window is not None:
                self.window.remove(name)

    def _on_message(self, message: dict[str, Any]) -> None:
        """Follow the SFU's publish feedback; note who joined and left in the timeline."""
        kind = message.get("type")
        if kind == "publish_feedback":
            self.apply_publish_feedback(message)
            return
        if kind == "allocation":
            self.apply_allocation(message)
            return
        event = message.get("event")
        if kind == "classroom" and isinstance(event, dict) and event.get("kind") == "lesson_ended":
            log.info("the teacher ended lesson %s; uploading the safety copy", self.room)
            self.lesson_ended = True
            if self._stop is not None:
                self._stop.set()
            return
        if self.recorder is None:
            return
        if kind == "participant_joined":
            who = message["participant"]
            self.recorder.event(
                "join", participant=who["id"], classroom=who["classroom"], name=who["name"]
            )
        elif kind == "participant_left":
            self.recorder.event("leave", participant=message["participant"])

    def apply_allocation(self, message: dict[str, Any]) -> None:
        """Note what the SFU sends us; a paused picture is shown as paused, never frozen."""
        tracks = message.get("tracks")
        if not isinstance(tracks, list):
            return
        before = self.allocation
        self.allocation = {
            str(t.get("track")): t for t in tracks if isinstance(t, dict) and t.get("track")
        }
        for name, entry in self.allocation.items():
            if entry.get("paused"):
                self.resuming.discard(name)
            elif before.get(name, {}).get("paused"):
                # Its next keyframe is seconds away on a thin line (256kbit-10pct: 1-2 s
                # of the last picture, before it, under no notice at all).
                self.resuming.add(name)
        if self.window is not None and not self.window.closed:
            for name, entry in self.allocation.items():
                self.window.set_notice(name, pause_text(entry, resuming=name in self.resuming))

    # -- following the SFU's publish feedback -------------------------------------------

    def apply_publish_feedback(self, message: dict[str, Any]) -> None:
        """Encode only the layers someone receives, within the SFU's uplink estimate."""
        try:
            feedback = parse_feedback(message)
        except FeedbackError as exc:
            log.warning("ignoring %s", exc)
            return
        layers = [Layer(p.source, p.layer, p.kind, p.bitrate_kbps) for p in self.tracks]
        targets = plan(layers, feedback)
        for published in self.tracks:
            if published.kind != "video":
                continue
            track = published.track
            kbps = targets[(published.source, published.layer)]
            if kbps is None:
                if not track.idle:
                    log.info(
                        "%s/%s: nobody receives it; pausing", published.source, published.layer
                    )
                track.set_idle(True)
                continue
            if track.idle:
                log.info(
                    "%s/%s: wanted again; resuming on a keyframe", published.source, published.layer
                )
            track.set_idle(False)
            if kbps != track.bitrate_kbps:
                track.set_bitrate(kbps)
        self.status.uplink_estimate_bps = feedback.bitrate_bps

    def _restore_publishing(self) -> None:
        for published in self.tracks:
            if published.kind == "video":
                published.track.set_idle(False)
                if published.track.bitrate_kbps != published.bitrate_kbps:
                    published.track.set_bitrate(published.bitrate_kbps)
        self.status.uplink_estimate_bps = None

    async def _stop_consumers(self) -> None:
        tasks = list(self._consumers.values())
        self._consumers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- reporting --------------------------------------------------------------------

    def _on_source_state(self, source: str, state: str, reason: str) -> None:
        self.status.source_states[source] = state
        if state == "ok":
            log.info("source %s: signal back", source)
        else:
            log.warning("source %s: no signal (%s); the other sources carry on", source, reason)

    async def quality_snapshot(self) -> dict[str, Any]:
        client = self._client
        # Per track: what its frame buffer gave up, asked and repaired (cumulative).
        buffers: dict[str, dict[str, Any]] = {}
        if client is not None and client.subscribe_pc is not None:
            for transceiver in client.subscribe_pc.getTransceivers():
                remote = client.remote.get(transceiver.mid or "")
                if remote is not None and remote.info.get("track") in self.quality:
                    self.quality[remote.info["track"]].update_receiver_stats(
                        await receiver_loss(transceiver.receiver)
                    )
                    assembler = rtc_internals.frame_assembler(transceiver.receiver)
                    if isinstance(assembler, FrameBuffer):
                        buffers[remote.info["track"]] = assembler.stats()
        active = {r.info.get("track") for r in client.active_tracks()} if client else set()
        return {
            "time": round(time.time(), 3),
            # What this agent sends and what encoding it costs: cumulative counters per
            # layer and the process's CPU seconds (bench/rural.py turns them into rates).
            "publishing": {
                "cpu_s": round(time.process_time(), 3),
                "load1": round(os.getloadavg()[0], 2),
                "layers": [p.track.stats() | {"layer": p.layer} for p in self.tracks],
            },
            "room": self.room,
            "classroom": self.classroom,
            "connected": self.status.connected,
            "sources": dict(self.status.source_states),
            "tracks": [
                {
                    **q.snapshot(),
                    "source": self._track_sources.get(name, ""),
                    "layer": self.allocation.get(name, {}).get("layer"),
                    "paused": bool(self.allocation.get(name, {}).get("paused")),
                    "resuming": name in self.resuming,
                    "pause_reason": self.allocation.get(name, {}).get("reason"),
                    **({"buffer": buffers[name]} if name in buffers else {}),
                }
                for name, q in self.quality.items()
                if name in active
            ],
        }

    def state_message(self) -> dict[str, Any]:
        return self.state_reporter.message(
            self.tracks,
            source_states=self.status.source_states,
            uplink_bps=self.status.uplink_estimate_bps,
            recorder=self.recorder,
            reconnects=self.status.connects,
        )

    async def send_state(self) -> None:
        """Tell the server how this classroom's device is (shown to the master and the
        county's supervisors); a report that cannot be sent waits for the next one."""
        client = self._client
        if client is None:
            return
        try:
            await client.send(await asyncio.to_thread(self.state_message))
        except ConnectionError:
            pass

    async def _report_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.report_interval_s)
            await self.send_state()
            snapshot = await self.quality_snapshot()
            if self.on_quality is not None:
                self.on_quality(snapshot)
            if self.report is not None:
                self.report.write(json.dumps(snapshot, ensure_ascii=False) + "\n")
                self.report.flush()


@functools.cache
def _opus_fec_decoder() -> bool:
    """Decode Opus through opus_fec's decoder in this process (once, not per connection):
    a lost packet rebuilt from the next one. False where no libopus is found."""
    if not opus_fec.available():
        log.warning("libopus not found: lost audio packets are concealed, not rebuilt (FEC)")
        return False
    rtc_internals.use_decoder("opus", opus_fec.FecOpusDecoder)
    return True


def use_frame_buffers(pc: RTCPeerConnection) -> None:
    """Receive through framing.FrameBuffer: bounded waits for lost packets (see there),
    and with Opus FEC where libopus is found."""
    fec = _opus_fec_decoder()
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        video = transceiver.kind == "video"

        def make(receiver: RTCRtpReceiver = receiver, video: bool = video) -> FrameBuffer:
            def starts_keyframe(packet: Any) -> bool:
                codec = rtc_internals.receiver_codec(receiver, packet.payload_type)
                return keyframe_start(codec or "", packet.payload)

            return FrameBuffer(
                video=video,
                is_keyframe_start=starts_keyframe,
                fec_samples=opus_fec.packet_samples if fec else None,
            )

        rtc_internals.use_frame_buffer(receiver, make)


PAUSED_BANDWIDTH = "画面已暂停：网络带宽不足 / Paused: low bandwidth"
PAUSED = "画面已暂停 / Paused"
RESUMING = "画面恢复中… / Resuming…"


def pause_text(entry: dict[str, Any], *, resuming: bool = False) -> str | None:
    """What to show instead of a picture the SFU stopped sending, or over the last
    frame of one it resumed until the first new frame comes (None: it runs)."""
    if not entry.get("paused"):
        return RESUMING if resuming or entry.get("resuming") else None
    reason = entry.get("reason", entry.get("pause_reason"))
    return PAUSED_BANDWIDTH if reason == "bandwidth" else PAUSED


def summary_line(snapshot: dict[str, Any]) -> str:
    """One human line per report: what a teacher at a point would want to know."""
    parts = []
    for t in snapshot["tracks"]:
        notice = pause_text(t)
        if notice:
            parts.append(f"{t['name']}: {notice}")
        elif t["kind"] == "video":
            latency = t.get("latency_p50_ms")
            parts.append(
                f"{t['name']}: {t.get('fps', 0):.0f} fps"
                + (f", {latency:.0f} ms" if latency is not None else "")
                + (f", {t['freezes']} freezes" if t.get("freezes") else "")
                + (f", loss {t['loss_ratio']:.1%}" if t.get("loss_ratio") else "")
            )
        else:
            parts.append(f"{t['name']}: audio {'ok' if t['frames'] else 'silent'}")
    state = "connected" if snapshot["connected"] else "reconnecting"
    return f"[{state}] " + ("; ".join(parts) if parts else "no lesson tracks yet")


def write_report_path(path: Path | None) -> TextIO | None:
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8")
