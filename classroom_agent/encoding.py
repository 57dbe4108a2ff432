"""Blocking encoders that turn raw frames into the packets the agent publishes.

Video: H.264 Annex B from libx264 (ultrafast, zerolatency, baseline; no global header,
so SPS/PPS travel in-band before every IDR and a subscriber can start on any keyframe;
forced keyframes are IDRs) or VP8 from libvpx in realtime mode. Audio: Opus at
48 kHz in 20 ms packets. Packets carry the track's timestamps: video in 1/90000,
audio in 1/48000. These objects are not thread-safe; each track owns one and drives
it from its own single worker thread.
"""

from __future__ import annotations

import fractions
import logging
import time

import av

logger = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_TIME_BASE = fractions.Fraction(1, 48000)
VIDEO_CODECS = ("h264", "vp8")
# A camera layer's rate buffer is 1/CAMERA_VBV_DIVISOR of a second of its bitrate.
CAMERA_VBV_DIVISOR = 4


def encoder_threads(width: int, height: int) -> int:
    """Threads for one encoder.

    Every layer already encodes on its own thread, so six layers keep two cores busy
    without help; libx264's default (1.5 threads per core, sliced under zerolatency)
    adds hand-offs on each frame: 3-6 % more CPU for the master's default set and twice
    the encode time of the small layers (bench/agent.py, docs/benchmarks.md). Above 720p
    a second thread keeps one frame's encode well inside its frame interval.
    """
    return 1 if width * height <= 1280 * 720 else 2


class VideoEncoder:
    """One libx264/libvpx encoder at a fixed output size; input frames are scaled to it."""

    def __init__(
        self,
        codec: str,
        width: int,
        height: int,
        fps: float,
        bitrate_kbps: int,
        keyframe_interval_s: float = 2.0,
        content: str = "camera",
    ) -> None:
        if codec not in VIDEO_CODECS:
            raise ValueError(f"video codec must be one of {VIDEO_CODECS}, got {codec!r}")
        if width % 2 or height % 2:
            raise ValueError(f"encoded size must be even, got {width}x{height}")
        self.codec = codec
        self.width = width
        self.height = height
        self.fps = fps
        self.bitrate_kbps = bitrate_kbps
        self.keyframe_interval_s = keyframe_interval_s
        self.content = content
        self._ctx: av.VideoCodecContext | None = None
        self._scaler = av.video.reformatter.VideoReformatter()
        self._index = 0
        # Whether encoding keeps real time: frames encoded and the wall time they took
        # (scaling included); read by the agent's reports and bench/agent.py.
        self.encoded_frames = 0
        self.encode_s = 0.0

    def _open(self) -> av.VideoCodecContext:
        rate = max(1, round(self.fps))
        gop = max(1, round(self.fps * self.keyframe_interval_s))
        bits = self.bitrate_kbps * 1000
        if self.codec == "h264":
            ctx = av.CodecContext.create("libx264", "w")
            options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "profile": "baseline",
                # A keyframe asked for by a subscriber's PLI must be an IDR, or a
                # decoder joining there cannot start.
                "forced-idr": "1",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1",
                # A quarter second of VBV caps a keyframe near a quarter second of the
                # layer's rate (720p at 1.2 Mbit/s: ~40 kB, not ~75 kB). A keyframe is a
                # burst that queues the frames behind it on a 2 Mbit/s point's link, and
                # the receiver's jitter buffer grows with its largest frames: with half
                # a second, Chromium held the teacher's 720p 160 ms in its jitter buffer.
                "maxrate": str(bits),
                "bufsize": str(bits // CAMERA_VBV_DIVISOR),
            }
            if self.content == "screen":
                # Screen content at a few fps: a whole second of buffer lets a keyframe
                # of sharp text through; the psychovisual tools that add grain to
                # camera pictures only blur text.
                options["bufsize"] = str(bits)
                options["x264-params"] += ":psy=0:aq-mode=0"
        else:
            ctx = av.CodecContext.create("libvpx", "w")
            options = {
                "deadline": "realtime",
                "cpu-used": "8",
                "lag-in-frames": "0",
                "auto-alt-ref": "0",
                "error-resilient": "1",
                "static-thresh": "100",
            }
            ctx.qmin = 4
            ctx.qmax = 56
        ctx.thread_count = encoder_threads(self.width, self.height)
        ctx.width = self.width
        ctx.height = self.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = fractions.Fraction(1, rate)
        ctx.framerate = fractions.Fraction(rate, 1)
        ctx.bit_rate = bits
        ctx.gop_size = gop
        ctx.max_b_frames = 0
        ctx.options = options
        ctx.open()
        return ctx

    def set_bitrate(self, kbps: int) -> None:
        """Change the target bitrate; H.264 reconfigures in place, VP8 restarts on a keyframe."""
        self.bitrate_kbps = kbps
        if self._ctx is None:
            return
        if self.codec == "h264":
            # libx264 notices the changed context fields on the next frame and calls
            # x264_encoder_reconfig, so no keyframe is spent.
            self._ctx.bit_rate = kbps * 1000
        else:
            self._ctx = None

    def encode(
        self, frame: av.VideoFrame, pts: int, force_keyframe: bool = False
    ) -> list[av.Packet]:
        """Encode one frame; returned packets carry ``pts`` in 1/90000."""
        started = time.perf_counter()
        if self._ctx is None:
            self._ctx = self._open()
            force_keyframe = True
        size = (frame.width, frame.height)
        if size != (self.width, self.height) or frame.format.name != "yuv420p":
            # Our own scaler: the layers of one source scale the same frame in parallel
            # threads, and a frame's cached scaler shared between them deadlocks.
            frame = self._scaler.reformat(
                frame, width=self.width, height=self.height, format="yuv420p"
            )
        frame.pts = self._index
        frame.time_base = self._ctx.time_base
        self._index += 1
        frame.pict_type = (
            av.video.frame.PictureType.I if force_keyframe else av.video.frame.PictureType.NONE
        )
        packets = self._ctx.encode(frame)
        for packet in packets:
            packet.time_base = VIDEO_TIME_BASE
            packet.pts = pts
            packet.dts = pts
        self.encoded_frames += 1
        self.encode_s += time.perf_counter() - started
        return packets


class AudioEncoder:
    """Opus, 48 kHz stereo, 20 ms packets; any input rate/layout/size is resampled."""

    SAMPLES = 960

    def __init__(self, bitrate_kbps: int = 32) -> None:
        self.bitrate_kbps = bitrate_kbps
        self._ctx: av.AudioCodecContext | None = None
        self._resampler = av.AudioResampler(
            format="s16", layout="stereo", rate=48000, frame_size=self.SAMPLES
        )
        self._samples = 0

    def _open(self) -> av.AudioCodecContext:
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = 48000
        ctx.layout = "stereo"
        ctx.format = "s16"
        ctx.bit_rate = self.bitrate_kbps * 1000
        ctx.time_base = AUDIO_TIME_BASE
        # Classroom speech: the voip mode favours intelligibility at low bitrates.
        # In-band FEC sized for the few percent of loss rural links have: a lost
        # packet is rebuilt from the next one instead of concealed.
        ctx.options = {
            "application": "voip",
            "frame_duration": "20",
            "fec": "1",
            "packet_loss": "10",
        }
        ctx.open()
        return ctx

    def set_bitrate(self, kbps: int) -> None:
        """Change the bitrate; Opus restarts cleanly on the next frame."""
        self.bitrate_kbps = kbps
        self._ctx = None

    def encode(self, frame: av.AudioFrame) -> list[av.Packet]:
        """Encode a frame of any size; returns zero or more 20 ms packets (pts in 1/48000)."""
        if self._ctx is None:
            self._ctx = self._open()
        frame.pts = None
        out: list[av.Packet] = []
        for chunk in self._resampler.resample(frame):
            chunk.pts = None
            for packet in self._ctx.encode(chunk):
                packet.time_base = AUDIO_TIME_BASE
                packet.pts = self._samples
                packet.dts = self._samples
                self._samples += self.SAMPLES
                out.append(packet)
        return out
