"""Real capture sources through PyAV, all behind the :class:`MediaSource` interface.

* Raw capture, decoded to frames and encoded by the track: V4L2 cameras, the X11
  screen (courseware on the teacher PC), ALSA and PulseAudio microphones.
* Passthrough, forwarded as the camera or file encoded it (no decode, no re-encode):
  RTSP IP cameras and H.264/VP8 files. H.264 in MP4/MKV (avcC) is rewritten to
  Annex B with FFmpeg's ``h264_mp4toannexb`` bitstream filter; keyframes that lack
  in-band SPS/PPS (common with RTSP) get the stream's parameter sets prepended, so a
  subscriber can start decoding at any keyframe. Files play in real time and loop.
  Passthrough streams must not contain B-frames (WebRTC decoders do not reorder).

Opening failures raise :class:`SourceError` with the device and FFmpeg's reason; the
source's thread then shows the no-signal card and retries.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from typing import Any

import av
import av.bitstream

from .sources import Item, MediaSource, SourceError

_START_CODE = b"\x00\x00\x00\x01"


class CaptureSource(MediaSource):
    """A libavdevice input decoded to raw frames (camera, screen, microphone)."""

    #: Human name of the device type, used in error messages.
    device_type = "capture device"
    av_format = ""

    def __init__(
        self, name: str, url: str, *, options: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name, **kwargs)
        self.url = url
        self.options = options or {}
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame | av.AudioFrame] | None = None

    def _preflight(self) -> None:
        """Fail early with a clearer message than FFmpeg's where we can."""

    def open(self) -> None:
        self._preflight()
        try:
            container = av.open(
                self.url, format=self.av_format or None, options=self.options, timeout=(10.0, 5.0)
            )
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"cannot open {self.device_type} {self.url!r}: {exc}") from exc
        streams = container.streams.video if self.kind == "video" else container.streams.audio
        if not streams:
            container.close()
            raise SourceError(f"{self.device_type} {self.url!r} has no {self.kind} stream")
        self._container = container
        self._frames = container.decode(streams[0])

    def read(self) -> Item:
        if self._frames is None:
            raise SourceError(f"{self.device_type} {self.url!r} is not open")
        try:
            return next(self._frames)
        except StopIteration:
            raise SourceError(f"{self.device_type} {self.url!r} stopped delivering") from None
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"{self.device_type} {self.url!r} failed: {exc}") from exc

    def close(self) -> None:
        container, self._container, self._frames = self._container, None, None
        if container is not None:
            container.close()


class V4L2Camera(CaptureSource):
    """A USB/HDMI-capture camera through Video4Linux2."""

    kind = "video"
    device_type = "V4L2 camera"
    av_format = "video4linux2"

    def __init__(
        self,
        name: str,
        device: str = "/dev/video0",
        *,
        width: int = 1280,
        height: int = 720,
        fps: float = 30.0,
        input_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        options = {"video_size": f"{width}x{height}", "framerate": f"{fps:g}"}
        if input_format:
            # e.g. "mjpeg": most USB cameras only reach 720p30 in MJPEG.
            options["input_format"] = input_format
        super().__init__(
            name, device, options=options, width=width, height=height, fps=fps, **kwargs
        )

    def _preflight(self) -> None:
        if not os.path.exists(self.url):
            raise SourceError(f"V4L2 camera {self.url} does not exist (unplugged?)")


class X11Screen(CaptureSource):
    """The teacher PC's screen (courseware) through x11grab."""

    kind = "video"
    device_type = "X11 screen"
    av_format = "x11grab"

    def __init__(
        self,
        name: str,
        display: str | None = None,
        *,
        width: int = 1280,
        height: int = 720,
        fps: float = 5.0,
        offset: tuple[int, int] = (0, 0),
        draw_mouse: bool = True,
        **kwargs: Any,
    ) -> None:
        display = display or os.environ.get("DISPLAY", "")
        url = f"{display}+{offset[0]},{offset[1]}" if display else ""
        options = {
            "video_size": f"{width}x{height}",
            "framerate": f"{fps:g}",
            "draw_mouse": "1" if draw_mouse else "0",
        }
        super().__init__(name, url, options=options, width=width, height=height, fps=fps, **kwargs)

    def _preflight(self) -> None:
        if not self.url:
            raise SourceError("X11 screen: no display given and DISPLAY is not set")


class AlsaMicrophone(CaptureSource):
    """A microphone through ALSA (``default``, ``hw:1,0``, ``plughw:CARD=Array``...)."""

    kind = "audio"
    device_type = "ALSA microphone"
    av_format = "alsa"

    def __init__(
        self,
        name: str,
        device: str = "default",
        *,
        sample_rate: int = 48000,
        channels: int = 2,
        **kwargs: Any,
    ) -> None:
        options = {"sample_rate": str(sample_rate), "channels": str(channels)}
        super().__init__(name, device, options=options, **kwargs)


class PulseMicrophone(CaptureSource):
    """A microphone through PulseAudio/PipeWire.

    When PyAV's FFmpeg lacks the ``pulse`` input (as in the wheels on PyPI), the ALSA
    ``pulse`` plugin device reaches the same server.
    """

    kind = "audio"
    device_type = "PulseAudio microphone"

    def __init__(self, name: str, device: str = "default", **kwargs: Any) -> None:
        if "pulse" in av.formats_available:
            self.av_format = "pulse"
            url = device
        else:
            self.av_format = "alsa"
            url = "pulse" if device == "default" else device
        super().__init__(name, url, **kwargs)


class PassthroughSource(MediaSource):
    """Already-encoded H.264/VP8 from a file or an RTSP camera, forwarded packet by packet."""

    kind = "video"
    device_type = "video"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        codec: str = "h264",
        realtime: bool = False,
        loop: bool = False,
        options: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        if codec not in ("h264", "vp8"):
            raise ValueError(f"passthrough codec must be h264 or vp8, got {codec!r}")
        self.passthrough_codec = codec
        self.url = url
        self.realtime = realtime
        self.loop = loop
        self.options = options or {}
        self._container: av.container.InputContainer | None = None
        self._packets: Iterator[av.Packet] | None = None
        self._bsf: av.bitstream.BitStreamFilterContext | None = None
        self._parameter_sets = b""
        self._ready: collections.deque[av.Packet] = collections.deque()
        self._time_base = 0.0
        self._first_pts: int | None = None
        self._last_pts = 0
        self._wall0 = 0.0
        self._interval = 1.0 / self.fps

    def _open_container(self) -> None:
        try:
            container = av.open(self.url, options=self.options, timeout=(10.0, 5.0))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"cannot open {self.device_type} {self.url!r}: {exc}") from exc
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.device_type} {self.url!r} has no video stream")
        stream = container.streams.video[0]
        actual = stream.codec_context.name
        if actual != self.passthrough_codec:
            container.close()
            raise SourceError(
                f"{self.device_type} {self.url!r} is {actual}; expected {self.passthrough_codec}"
            )
        extradata = stream.codec_context.extradata or b""
        self._bsf = None
        self._parameter_sets = b""
        if actual == "h264" and extradata[:1] == b"\x01":
            self._bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", stream)
        elif actual == "h264":
            self._parameter_sets = extradata
        self._time_base = float(stream.time_base or 0) or 1 / 90000
        if stream.average_rate:
            self._interval = 1.0 / float(stream.average_rate)
        self._container = container
        self._packets = container.demux(stream)
        self._first_pts = None

    def open(self) -> None:
        self._ready.clear()
        self._open_container()
        self._wall0 = time.monotonic()

    def _next_raw(self) -> av.Packet | None:
        assert self._packets is not None
        try:
            while True:
                packet = next(self._packets)
                if packet.size:
                    return packet
        except StopIteration:
            return None
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"{self.device_type} {self.url!r} failed: {exc}") from exc

    def read(self) -> Item:
        if self._packets is None:
            raise SourceError(f"{self.device_type} {self.url!r} is not open")
        while not self._ready:
            packet = self._next_raw()
            if packet is None:
                if not self.loop:
                    raise SourceError(f"{self.device_type} {self.url!r} ended")
                # Continue the timeline one frame after the last one, from the top.
                elapsed = (self._last_pts - (self._first_pts or 0)) * self._time_base
                self.close()
                self._open_container()
                self._wall0 += elapsed + self._interval
                continue
            if self._bsf is not None:
                self._ready.extend(p for p in self._bsf.filter(packet) if p.size)
            else:
                self._ready.append(packet)
        packet = self._ready.popleft()
        if packet.pts is not None:
            if self._first_pts is None:
                self._first_pts = self._last_pts = packet.pts
            self._last_pts = max(self._last_pts, packet.pts)
            if self.realtime:
                due = self._wall0 + (packet.pts - self._first_pts) * self._time_base
                if not self.wait_until(due):
                    raise SourceError("stopping")
        return self._annexb_copy(packet)

    def _annexb_copy(self, packet: av.Packet) -> av.Packet:
        """A packet the tracks may retime freely, with SPS/PPS before every H.264 keyframe."""
        data = bytes(packet)
        if self._parameter_sets and packet.is_keyframe and not _has_sps(data):
            data = self._parameter_sets + data
        out = av.Packet(data)
        out.is_keyframe = packet.is_keyframe
        return out

    def close(self) -> None:
        container, self._container, self._packets = self._container, None, None
        if container is not None:
            container.close()


class FileSource(PassthroughSource):
    """An H.264 (or VP8) file played in real time, looping; for demos and rehearsals."""

    device_type = "video file"

    def __init__(
        self, name: str, path: str, *, codec: str = "h264", loop: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(name, path, codec=codec, realtime=True, loop=loop, **kwargs)

    def open(self) -> None:
        if not os.path.isfile(self.url):
            raise SourceError(f"video file {self.url} does not exist")
        super().open()


class RTSPCamera(PassthroughSource):
    """An IP camera's RTSP stream (TCP interleaved: survives NAT and lossy school LANs)."""

    device_type = "RTSP camera"

    def __init__(
        self, name: str, url: str, *, codec: str = "h264", transport: str = "tcp", **kwargs: Any
    ) -> None:
        options = {"rtsp_transport": transport, "fflags": "nobuffer"}
        super().__init__(
            name, url, codec=codec, realtime=False, loop=False, options=options, **kwargs
        )


def _has_sps(data: bytes) -> bool:
    """Whether an Annex B access unit contains a sequence parameter set (NAL type 7)."""
    pos = data.find(b"\x00\x00\x01")
    while pos != -1 and pos + 3 < len(data):
        if data[pos + 3] & 0x1F == 7:
            return True
        pos = data.find(b"\x00\x00\x01", pos + 3)
    return False
