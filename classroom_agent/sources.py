"""The common interface of every media source, its fan-out, and the no-signal fallback.

A source (synthetic test card, camera, microphone, screen, RTSP camera, file) is read
by one dedicated thread, because capture APIs block. Everything it yields (raw
``av.VideoFrame``/``av.AudioFrame``, or ``av.Packet`` for passthrough sources) is
fanned out to every subscribed track on the asyncio loop, so two simulcast layers of
one camera share a single capture. When the source fails, the same thread keeps the
subscribers fed with a no-signal card (video) or silence (audio), retries opening
the source with exponential backoff, and resumes the real signal when it returns.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

import av

from . import nosignal, pixelclock

logger = logging.getLogger(__name__)

Kind = Literal["audio", "video"]
State = Literal["ok", "no_signal"]
StateCallback = Callable[[str, str, str], None]
Item = av.VideoFrame | av.AudioFrame | av.Packet

AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms at 48 kHz, the Opus frame the tracks publish


class SourceError(Exception):
    """A source cannot be opened or stopped delivering; the message says which and why."""


class Subscription:
    """One consumer's view of a source: a small queue that drops the oldest item when full.

    Dropping old video frames keeps latency bounded when an encoder falls behind; the
    audio queue is deeper so short hiccups do not cut the sound.
    """

    def __init__(self, source: MediaSource, maxsize: int) -> None:
        self.source = source
        self._items: collections.deque[tuple[float, Item]] = collections.deque(maxlen=maxsize)
        self._event = asyncio.Event()
        self.dropped = 0

    def _put(self, item: Item) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append((time.monotonic(), item))
        self._event.set()

    async def get(self) -> Item:
        return (await self.get_timed())[1]

    async def get_timed(self) -> tuple[float, Item]:
        """The next item and the monotonic time it reached the loop (its capture time)."""
        while not self._items:
            self._event.clear()
            await self._event.wait()
        return self._items.popleft()

    def close(self) -> None:
        self.source.unsubscribe(self)


class MediaSource(abc.ABC):
    """Base class: subclasses implement the blocking ``open``/``read``/``close`` trio."""

    kind: Kind = "video"
    #: "h264"/"vp8" when ``read`` returns encoded packets to forward as they are.
    passthrough_codec: str | None = None

    def __init__(
        self,
        name: str,
        *,
        label: str | None = None,
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        on_state: StateCallback | None = None,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        no_signal_fps: float = 2.0,
    ) -> None:
        self.name = name
        self.label = label or name.replace("_", " ").capitalize()
        self.width = width
        self.height = height
        self.fps = fps
        self.on_state = on_state
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.no_signal_fps = no_signal_fps
        self.state: State | None = None
        self.reason = ""
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._dying: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- what a concrete source implements (called from the source thread) --------------
    @abc.abstractmethod
    def open(self) -> None:
        """Open the device/file/stream; raise SourceError with a readable reason."""

    @abc.abstractmethod
    def read(self) -> Item:
        """Block until the next item is due and return it; raise SourceError on failure."""

    def close(self) -> None:  # noqa: B027 - sources with nothing to release keep this
        """Release the device; must not raise."""

    # -- fan-out -------------------------------------------------------------------------
    def subscribe(self, maxsize: int | None = None) -> Subscription:
        """Start receiving this source's items; starts the capture thread on first use."""
        loop = asyncio.get_running_loop()
        sub = Subscription(self, maxsize or (50 if self.kind == "audio" else 2))
        with self._lock:
            self._subs.append(sub)
            if self._thread is None:
                if self._dying is not None:
                    # The previous thread shares the stop flag: let it finish first.
                    self._dying.join(timeout=5)
                    self._dying = None
                self._loop = loop
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name=f"source-{self.name}", daemon=True
                )
                self._thread.start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop feeding ``sub``; the capture thread stops with the last subscriber."""
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
            thread = self._thread if not self._subs else None
            if thread is not None:
                self._stop.set()
                self._thread = None
                self._dying = thread
        # The thread closes the device itself once it sees the stop flag.

    def stop(self) -> None:
        """Stop capturing regardless of subscribers (agent shutdown)."""
        with self._lock:
            self._subs.clear()
            thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _deliver(self, item: Item) -> None:
        loop = self._loop
        with self._lock:
            subs = list(self._subs)
        if loop is None or loop.is_closed():
            return
        for sub in subs:
            try:
                loop.call_soon_threadsafe(sub._put, item)
            except RuntimeError:  # loop closed between the check and the call
                return

    def _set_state(self, state: State, reason: str = "") -> None:
        if state == self.state:
            # Retries that fail again are not news; keep the latest reason for the card.
            self.reason = reason
            return
        self.state, self.reason = state, reason
        log = logger.info if state == "ok" else logger.warning
        log("source %s: %s %s", self.name, state, reason)
        if self.on_state is not None and self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self.on_state, self.name, state, reason)
            except RuntimeError:
                pass

    def wait_until(self, deadline: float) -> bool:
        """Pace the source thread to ``deadline`` (monotonic); False if stopping."""
        delay = deadline - time.monotonic()
        if delay > 0:
            return not self._stop.wait(delay)
        return not self._stop.is_set()

    def _run(self) -> None:
        backoff = self.retry_initial_s
        while not self._stop.is_set():
            try:
                self.open()
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._set_state("no_signal", _reason(exc))
                self._fill_no_signal(time.monotonic() + backoff)
                backoff = min(backoff * 2, self.retry_max_s)
                continue
            self._set_state("ok")
            backoff = self.retry_initial_s
            try:
                while not self._stop.is_set():
                    self._deliver(self.read())
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._set_state("no_signal", _reason(exc))
                self._safe_close()
                self._fill_no_signal(time.monotonic() + backoff)
                continue
        self._safe_close()

    def _safe_close(self) -> None:
        try:
            self.close()
        except Exception:
            logger.exception("closing source %s", self.name)

    def _fill_no_signal(self, until: float) -> None:
        """Keep subscribers fed while waiting for the next retry."""
        if self.kind == "audio":
            period = AUDIO_SAMPLES / AUDIO_RATE
        else:
            period = 1.0 / self.no_signal_fps
        due = time.monotonic()
        while not self._stop.is_set():
            self._deliver(self.no_signal_item())
            due += period
            if due >= until:
                self.wait_until(until)
                return
            if not self.wait_until(due):
                return

    def no_signal_item(self) -> Item:
        """What subscribers receive in place of the real signal."""
        if self.kind == "audio":
            return nosignal.silence(AUDIO_SAMPLES, AUDIO_RATE)
        frame = nosignal.render_no_signal(self.width, self.height, self.label, self.reason)
        pixelclock.stamp_frame(frame, pixelclock.now_ms())
        return frame


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SourceError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
