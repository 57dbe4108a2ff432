"""aiortc tracks whose ``recv()`` returns encoded ``av.Packet`` objects.

aiortc's ``RTCRtpSender`` packs a packet with ``encoder.pack(packet)`` instead of
encoding a frame, so the agent encodes each layer once, here, and the same packets
go to the network and (through ``add_sink``) to the edge recorder. Passthrough
sources (H.264 files, RTSP cameras) are forwarded without any encoder; only their
no-signal card is encoded.

A track is either pulled (``recv()``, one consumer) or *pumped*: after ``start()`` it
captures and encodes on its own task whether or not a connection pulls, so the safety
copy keeps recording while the server is unreachable, and each connection reads its own
``feed()``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

from tongke import rtc_internals
from tongke.codecs import codec_capabilities

from .encoding import AUDIO_TIME_BASE, VIDEO_TIME_BASE, AudioEncoder, VideoEncoder
from .sources import MediaSource, Subscription

logger = logging.getLogger(__name__)

PacketSink = Callable[[av.Packet], None]

# Forced keyframes (PLIs relayed by the SFU, a new connection) come at most this often
# per layer: each is a burst every receiver pays for, and a request inside the gap is
# answered when it ends (or by a keyframe that comes meanwhile), never dropped.
KEYFRAME_MIN_GAP_S = 0.5


class _EncodedTrack(MediaStreamTrack):
    def __init__(self, source: MediaSource) -> None:
        super().__init__()
        self.source = source
        self._sub: Subscription | None = None
        self._pending: collections.deque[av.Packet] = collections.deque()
        self._sinks: list[PacketSink] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"encode-{source.name}"
        )
        self._frames = 0
        self._bytes = 0
        self._keyframes = 0
        self._started: float | None = None
        self._pump: asyncio.Task[None] | None = None
        self._feeds: list[TrackFeed] = []
        # Set while someone (a sink or a feed) wants packets: an unwatched, unrecorded
        # layer costs no encoding.
        self._wanted = asyncio.Event()

    def start(self) -> None:
        """Capture and encode from now on, whoever pulls (call on the running loop).

        Packets go to the sinks and to every open ``feed()``; ``recv()`` is no longer
        allowed. The pump only works while a sink or a feed is attached.
        """
        if self._pump is None:
            self._update_wanted()
            self._pump = asyncio.ensure_future(self._run_pump())

    def feed(self) -> TrackFeed:
        """A track for one connection: the packets encoded from now on, from a keyframe."""
        if self._pump is None:
            raise RuntimeError(f"track {self.source.name} is not started; call start() first")
        feed = TrackFeed(self)
        self._feeds.append(feed)
        self._update_wanted()
        self.request_keyframe()
        return feed

    def _detach(self, feed: TrackFeed) -> None:
        if feed in self._feeds:
            self._feeds.remove(feed)
        self._update_wanted()

    def _update_wanted(self) -> None:
        if self._sinks or self._feeds:
            self._wanted.set()
        else:
            self._wanted.clear()

    async def _run_pump(self) -> None:
        try:
            while self.readyState == "live":
                await self._wanted.wait()
                packet = await self._next_packet()
                for feed in list(self._feeds):
                    feed._offer(packet)
        except MediaStreamError:
            pass
        except Exception:
            logger.exception("encoding %s failed; the track ends", self.source.name)
        finally:
            for feed in list(self._feeds):
                feed._end()

    async def drained(self, timeout_s: float = 5.0) -> None:
        """After ``stop()``: wait (bounded) until no encode is running in its thread."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self._executor.shutdown, True), timeout_s)

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self._pump is not None:
            raise RuntimeError(f"track {self.source.name} is pumped; read a feed() instead")
        return await self._next_packet()

    async def _next_packet(self) -> av.Packet:
        raise NotImplementedError

    def add_sink(self, sink: PacketSink) -> None:
        """Also hand every published packet to ``sink`` (e.g. the safety-copy recorder).

        Sinks run on the event loop, must be quick and must not modify the packet.
        """
        self._sinks.append(sink)
        self._update_wanted()

    def remove_sink(self, sink: PacketSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)
        self._update_wanted()

    def stats(self) -> dict[str, Any]:
        """Counters since the track started: frames (packets), bytes, keyframes, bitrate."""
        elapsed = time.monotonic() - self._started if self._started else 0.0
        return {
            "source": self.source.name,
            "kind": self.kind,
            "frames": self._frames,
            "bytes": self._bytes,
            "keyframes": self._keyframes,
            "bitrate_kbps": round(self._bytes * 8 / elapsed / 1000, 1) if elapsed > 0 else 0.0,
            "source_state": self.source.state,
            "dropped": self._sub.dropped if self._sub else 0,
        }

    def _emit(self, packet: av.Packet) -> av.Packet:
        self._frames += 1
        self._bytes += packet.size
        if packet.is_keyframe:
            self._keyframes += 1
        for sink in list(self._sinks):
            try:
                sink(packet)
            except Exception:
                logger.exception("packet sink failed on %s; removing it", self.source.name)
                self.remove_sink(sink)
        return packet

    def _subscription(self) -> Subscription:
        if self.readyState != "live":
            raise MediaStreamError
        if self._sub is None:
            self._sub = self.source.subscribe()
            self._started = time.monotonic()
        return self._sub

    def stop(self) -> None:
        super().stop()
        if self._pump is not None:
            self._pump.cancel()
        for feed in list(self._feeds):
            feed._end()
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        self._executor.shutdown(wait=False)


class EncodedVideoTrack(_EncodedTrack):
    """One published video layer of ``source``: H.264 or VP8 packets, time base 1/90000."""

    kind = "video"

    def __init__(
        self,
        source: MediaSource,
        codec: str = "h264",
        bitrate_kbps: int = 1000,
        fps: float | None = None,
        keyframe_interval_s: float = 2.0,
        *,
        width: int | None = None,
        height: int | None = None,
        layer: str = "h",
        content: str = "camera",
        keyframe_min_gap_s: float = KEYFRAME_MIN_GAP_S,
    ) -> None:
        if source.kind != "video":
            raise ValueError(f"source {source.name!r} is {source.kind}, not video")
        if source.passthrough_codec and source.passthrough_codec != codec:
            raise ValueError(
                f"source {source.name!r} delivers {source.passthrough_codec} and is passed "
                f"through without re-encoding; its track codec must be "
                f"{source.passthrough_codec!r}, not {codec!r}"
            )
        super().__init__(source)
        self.codec = codec
        self.layer = layer
        self.fps = fps or source.fps
        self.width = width or source.width
        self.height = height or source.height
        self._encoder = VideoEncoder(
            codec,
            self.width,
            self.height,
            self.fps,
            bitrate_kbps,
            keyframe_interval_s,
            content=content,
        )
        self._force_keyframe = False
        self._keyframe_min_gap_s = keyframe_min_gap_s
        self._last_key_at = float("-inf")  # capture time of the last keyframe encoded
        self._idle = False
        # A passthrough layer back from idle is sent again from its next keyframe.
        self._resume_needs_key = False
        self._t0: float | None = None
        self._last_pts = -1
        self._next_due = 0.0
        # After encoded no-signal frames, forwarded packets may only resume on a keyframe.
        self._passthrough_needs_key = True
        # Time frames waited between capture and their encode: it grows when the
        # encoder's thread does not get the CPU it needs.
        self._queue_s = 0.0

    @property
    def bitrate_kbps(self) -> int:
        return self._encoder.bitrate_kbps

    def request_keyframe(self) -> None:
        """Make the next encoded frame a keyframe (IDR); called when the SFU relays a PLI.

        Within KEYFRAME_MIN_GAP_S of the last keyframe the request waits for the gap's
        end. Passthrough packets cannot be changed: their keyframes come at the camera's
        or file's own interval.
        """
        self._force_keyframe = True

    def set_bitrate(self, kbps: int) -> None:
        if kbps <= 0:
            raise ValueError(f"bitrate must be positive, got {kbps}")
        self._executor.submit(self._encoder.set_bitrate, kbps).add_done_callback(_log_failure)

    @property
    def idle(self) -> bool:
        return self._idle

    def set_idle(self, idle: bool) -> None:
        """Stop sending this layer (nobody receives it) or resume it on a keyframe.

        An idle layer is not encoded at all, unless a local sink (the safety copy) still
        takes its packets: then it is encoded for the sink alone and nothing is sent.
        """
        if self._idle and not idle:
            self._force_keyframe = True
            self._resume_needs_key = True
        self._idle = idle

    def stats(self) -> dict[str, Any]:
        """The base counters plus this layer's encoder: size, frame rate, target bitrate,
        frames encoded, the wall time they took and how long frames waited for it."""
        return {
            **super().stats(),
            "layer": self.layer,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "idle": self._idle,
            "target_kbps": self._encoder.bitrate_kbps,
            "encoded_frames": self._encoder.encoded_frames,
            "encode_s": round(self._encoder.encode_s, 4),
            "queue_s": round(self._queue_s, 4),
        }

    def _pts(self, captured: float) -> int:
        if self._t0 is None:
            self._t0 = captured
        pts = max(self._last_pts + 1, round((captured - self._t0) * 90000))
        self._last_pts = pts
        return pts

    def _encode(self, frame: av.VideoFrame, pts: int, key: bool) -> list[av.Packet]:
        return self._encoder.encode(frame, pts, key)

    def _encode_timed(
        self, frame: av.VideoFrame, pts: int, key: bool, captured: float
    ) -> list[av.Packet]:
        self._queue_s += max(0.0, time.monotonic() - captured)
        return self._encode(frame, pts, key)

    async def _next_packet(self) -> av.Packet:
        sub = self._subscription()
        loop = asyncio.get_running_loop()
        while not self._pending:
            captured, item = await sub.get_timed()
            if self.readyState != "live":
                raise MediaStreamError
            if isinstance(item, av.Packet):
                if self._passthrough_needs_key and not item.is_keyframe:
                    continue
                self._passthrough_needs_key = False
                item.time_base = VIDEO_TIME_BASE
                item.pts = item.dts = self._pts(captured)
                if self._idle or (self._resume_needs_key and not item.is_keyframe):
                    self._emit(item)  # the safety copy still wants it; the network does not
                    continue
                self._resume_needs_key = False
                self._pending.append(item)
                continue
            # A frame: a live source or the no-signal card of any source.
            self._passthrough_needs_key = True
            if captured < self._next_due - 0.5 / self.fps:
                continue  # this layer runs at a lower frame rate than the source
            self._next_due = max(self._next_due + 1 / self.fps, captured)
            if self._idle and not self._sinks:
                continue  # nobody receives this layer: spend no CPU on it
            key = (
                self._force_keyframe
                and not self._idle
                and (
                    self._resume_needs_key
                    or captured - self._last_key_at >= self._keyframe_min_gap_s
                )
            )
            if key:
                self._force_keyframe = False
            pts = self._pts(captured)
            try:
                packets = await loop.run_in_executor(
                    self._executor, self._encode_timed, item, pts, key, captured
                )
            except RuntimeError:  # executor shut down by stop()
                raise MediaStreamError from None
            if any(packet.is_keyframe for packet in packets):
                self._last_key_at = captured
                if not self._idle:
                    # A periodic keyframe answers a request still waiting for the gap.
                    self._force_keyframe = False
                self._resume_needs_key = False
            if self._idle:
                for packet in packets:
                    self._emit(packet)
                continue
            self._pending.extend(packets)
        return self._emit(self._pending.popleft())


class EncodedAudioTrack(_EncodedTrack):
    """Opus packets of ``source``, 48 kHz, 20 ms each, time base 1/48000."""

    kind = "audio"
    codec = "opus"
    layer = "h"

    def __init__(self, source: MediaSource, bitrate_kbps: int = 32) -> None:
        if source.kind != "audio":
            raise ValueError(f"source {source.name!r} is {source.kind}, not audio")
        super().__init__(source)
        self._encoder = AudioEncoder(bitrate_kbps)

    @property
    def bitrate_kbps(self) -> int:
        return self._encoder.bitrate_kbps

    def request_keyframe(self) -> None:
        """Audio has no keyframes; present so the agent can treat all tracks alike."""

    def set_bitrate(self, kbps: int) -> None:
        if kbps <= 0:
            raise ValueError(f"bitrate must be positive, got {kbps}")
        self._executor.submit(self._encoder.set_bitrate, kbps).add_done_callback(_log_failure)

    async def _next_packet(self) -> av.Packet:
        sub = self._subscription()
        loop = asyncio.get_running_loop()
        while not self._pending:
            item = await sub.get()
            if self.readyState != "live":
                raise MediaStreamError
            if isinstance(item, av.Packet):
                raise MediaStreamError(f"audio passthrough is not supported ({self.source.name})")
            try:
                packets = await loop.run_in_executor(self._executor, self._encoder.encode, item)
            except RuntimeError:
                raise MediaStreamError from None
            for packet in packets:
                packet.time_base = AUDIO_TIME_BASE
            self._pending.extend(packets)
        return self._emit(self._pending.popleft())


class TrackFeed(MediaStreamTrack):
    """One connection's view of a pumped track (see ``_EncodedTrack.feed``).

    aiortc stops a sender's track when its connection ends; the capture, the encoder and
    the safety copy outlive that, so each connection gets its own feed. Video starts on a
    keyframe; a connection that stops pulling loses old packets (bounded memory) and
    restarts on the next keyframe rather than stalling the encoder.
    """

    MAX_QUEUED = 256

    def __init__(self, inner: _EncodedTrack) -> None:
        super().__init__()
        self.kind = inner.kind
        self.codec = getattr(inner, "codec", None)
        self._inner = inner
        self._queue: collections.deque[av.Packet] = collections.deque()
        self._ready = asyncio.Event()
        self._needs_key = inner.kind == "video"
        self._ended = False

    def _offer(self, packet: av.Packet) -> None:
        if len(self._queue) >= self.MAX_QUEUED:
            self._queue.clear()
            if self.kind == "video":
                self._needs_key = True
                self._inner.request_keyframe()
        if self._needs_key:
            if not packet.is_keyframe:
                return
            self._needs_key = False
        self._queue.append(packet)
        self._ready.set()

    def _end(self) -> None:
        self._ended = True
        self._ready.set()

    async def recv(self) -> av.Packet:  # type: ignore[override]
        while not self._queue:
            if self._ended or self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def request_keyframe(self) -> None:
        self._inner.request_keyframe()

    def stop(self) -> None:
        super().stop()
        self._end()
        self._inner._detach(self)


def _log_failure(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("changing the bitrate failed", exc_info=future.exception())


def add_encoded_track(
    pc: RTCPeerConnection,
    track: MediaStreamTrack,
    codec: str | None = None,
    on_keyframe_request: Callable[[], None] | None = None,
) -> RTCRtpTransceiver:
    """Publish a pre-encoded ``track`` on ``pc`` (send-only), negotiating only its codec.

    ``codec`` defaults to the track's own. PLI/FIR arriving for this sender (from the SFU
    or a direct peer) go to ``track.request_keyframe()`` and ``on_keyframe_request``:
    aiortc's sender honours them only when it encodes itself, which it never does here.
    """
    codec = codec or getattr(track, "codec", None)
    transceiver = pc.addTransceiver(track, direction="sendonly")
    if codec is not None:
        transceiver.setCodecPreferences(codec_capabilities(track.kind, codec))
    request = getattr(track, "request_keyframe", None)

    def on_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            if request is not None:
                request()
            if on_keyframe_request is not None:
                on_keyframe_request()

    rtc_internals.hook_sender_rtcp(transceiver.sender, on_rtcp)
    return transceiver
