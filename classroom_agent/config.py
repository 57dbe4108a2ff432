"""The classroom agent's TOML configuration and the factory that turns it into tracks.

Example (every key is optional; a master without ``[[source]]`` tables publishes the
standard recording-classroom set, a point its camera and microphone)::

    [agent]
    server_url = "https://tongke.example.edu.cn"
    token_file = "/etc/tongke/agent.token"   # or token = "eyJ..."
    role = "master"                          # master | point
    classroom_id = "school-12/room-301"
    synthetic = false                        # true: test cards instead of default devices
    synthetic_pattern = "card"               # card | noise (fills the bitrate like a camera)

    [recording]
    dir = "/var/lib/tongke/recordings"
    disk_budget_gb = 50

    [[source]]
    name = "teacher_camera"
    kind = "video"
    type = "v4l2"               # synthetic | noise | v4l2 | file | rtsp | x11 | alsa | pulse
    device = "/dev/video0"
    codec = "h264"
    bitrate_kbps = 1500
    width = 1280
    height = 720
    fps = 30
    layers = ["h", "l"]         # simulcast: h = as configured, m = 360p, l = 180p
                                # (screen content: every layer at full resolution)

Errors name the offending key, e.g. ``source 'board_camera': unknown key 'bitrate'``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .capture import AlsaMicrophone, FileSource, PulseMicrophone, RTSPCamera, V4L2Camera, X11Screen
from .noise import NoiseVideo
from .sources import MediaSource, StateCallback
from .testcard import SyntheticAudio, SyntheticVideo
from .tracks import EncodedAudioTrack, EncodedVideoTrack

ROLES = ("master", "point")
VIDEO_TYPES = ("synthetic", "noise", "v4l2", "file", "rtsp", "x11")
#: What synthetic video shows: the test card, or a high-entropy scene (classroom_agent.noise).
SYNTHETIC_PATTERNS = ("card", "noise")
CONTENT_TYPES = ("camera", "screen")
AUDIO_TYPES = ("synthetic", "alsa", "pulse")
PASSTHROUGH_TYPES = ("file", "rtsp")
VIDEO_CODECS = ("h264", "vp8")
CAMERA_KEYFRAME_S = 2.0
# A slide changes rarely; a keyframe of sharp text is large, so send one less often
# (a subscriber that joins asks for one anyway).
SCREEN_KEYFRAME_S = 6.0
# A point on a 2 Mbit/s line receives the teacher's top layer, the courseware, the board's
# lowest layer and audio: 1200 + 300 + 120 + 32 kbit/s of media, about 1.8 Mbit/s with
# RTP/SRTP/UDP headers and audio's RED. On 1 Mbit/s: the teacher's 360p layer (450), the
# courseware's low layer and the board's lowest.
# Lower simulcast layers: (height, bitrate_kbps, fps); width follows the aspect ratio.
LAYER_PRESETS: dict[str, tuple[int, int, float]] = {"m": (360, 450, 30.0), "l": (180, 120, 15.0)}
# Lower layers of screen content: (bitrate_kbps, fps) at full resolution, because a
# slide scaled down to 180p cannot be read; a slide changes rarely, so fewer frames cost
# little. The low layer is what a 1 Mbit/s point receives beside the teacher's 360p and
# the board (3 fps keeps the courseware above 2 fps through losses), and what a
# 256 kbit/s point receives instead of any camera: 70 kbit/s next to audio fits the
# ~130 kbit/s the SFU estimates on a 256 kbit/s line with 10 % loss. A slide standing
# still costs far less; only a changing screen fills it.
SCREEN_LAYER_PRESETS: dict[str, tuple[int, float]] = {"m": (150, 3.0), "l": (70, 3.0)}


class ConfigError(ValueError):
    """The agent configuration is invalid; the message names the key."""


@dataclass
class SourceConfig:
    name: str
    kind: str = "video"
    type: str = "synthetic"
    label: str = ""
    device: str = ""
    url: str = ""
    path: str = ""
    codec: str = ""
    bitrate_kbps: int = 0
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    layers: list[str] = field(default_factory=lambda: ["h"])
    #: V4L2 pixel format to ask the camera for, e.g. "mjpeg".
    input_format: str = ""
    #: Files: start over at the end.
    loop: bool = True
    #: "camera" or "screen": screen content (courseware) keeps full resolution at a low
    #: frame rate, with rarer keyframes and a deeper rate buffer so text stays sharp.
    content: str = "camera"
    #: Synthetic sources: motion pattern seed; tone frequency for audio.
    seed: int = 0
    freq: float = 440.0

    @property
    def display_label(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()


@dataclass
class RecordingConfig:
    dir: Path = field(default_factory=lambda: Path("data/agent-recordings"))
    disk_budget_gb: float = 20.0


@dataclass
class AgentConfig:
    # One server, or several separated by commas (the nodes of one Tongke service): the
    # agent moves to the next when one cannot be reached.
    server_url: str = "http://127.0.0.1:8080"
    token: str = ""
    token_file: Path | None = None
    role: str = "master"
    classroom_id: str = ""
    synthetic: bool = False
    synthetic_pattern: str = "card"
    sources: list[SourceConfig] = field(default_factory=list)
    recording: RecordingConfig = field(default_factory=RecordingConfig)

    @property
    def server_urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.server_url.split(",") if u.strip()]

    def resolved_token(self) -> str:
        """The room/agent token, read from ``token_file`` when it is not inline."""
        if self.token:
            return self.token
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"token_file: cannot read {self.token_file}: {exc}") from exc
        return ""


def default_sources(
    role: str, synthetic: bool = False, pattern: str = "card"
) -> list[SourceConfig]:
    """The standard set: a recording classroom for a master, camera + mic for a point.

    ``pattern`` chooses what synthetic video shows: ``card`` or ``noise``.
    """
    synthetic_type = "noise" if pattern == "noise" else "synthetic"

    def video(name: str, device: str, **kw: Any) -> SourceConfig:
        device_type = "x11" if name == "courseware" else "v4l2"
        kind_type = synthetic_type if synthetic else device_type
        return SourceConfig(
            name=name, kind="video", type=kind_type, device=device, codec="h264", **kw
        )

    def audio(name: str) -> SourceConfig:
        return SourceConfig(
            name=name,
            kind="audio",
            type="synthetic" if synthetic else "alsa",
            device="default",
            codec="opus",
            bitrate_kbps=32,
        )

    if role == "point":
        return [
            video("point_camera", "/dev/video0", bitrate_kbps=500, width=640, height=360, seed=7),
            audio("point_mic"),
        ]
    return [
        # Three layers of the teacher and two of the board: the SFU gives each point the
        # best one its link carries, and the agent stops encoding those nobody receives.
        video("teacher_camera", "/dev/video0", bitrate_kbps=1200, layers=["h", "m", "l"], seed=1),
        video("board_camera", "/dev/video2", bitrate_kbps=800, layers=["h", "l"], seed=2),
        # Courseware in two layers, both at full resolution (slides stay readable): 5 fps,
        # and 3 fps at a quarter of the bitrate for thin links.
        video(
            "courseware", "", bitrate_kbps=300, fps=5.0, content="screen", layers=["h", "l"], seed=3
        ),
        audio("classroom_mic"),
    ]


def _convert(where: str, key: str, value: Any, current: Any) -> Any:
    expected: type | tuple[type, ...]
    if isinstance(current, bool):
        expected = bool
    elif isinstance(current, int):
        expected = int
    elif isinstance(current, float):
        expected = (int, float)
    elif isinstance(current, list):
        expected = list
    else:
        expected = str
    if isinstance(value, bool) and expected is not bool:
        raise ConfigError(f"{where}: {key} must be {_name(expected)}, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{where}: {key} must be {_name(expected)}, got {value!r}")
    return float(value) if isinstance(current, float) else value


def _name(expected: type | tuple[type, ...]) -> str:
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        list: "a list",
        str: "a string",
    }
    return names[expected[-1] if isinstance(expected, tuple) else expected]


def _source(index: int, table: Any) -> SourceConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"source[{index}] must be a table ([[source]])")
    name = table.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(
            f"source[{index}]: name must be an identifier like 'teacher_camera', got {name!r}"
        )
    where = f"source {name!r}"
    cfg = SourceConfig(name=name)
    known = {f.name for f in fields(SourceConfig)}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}")
        setattr(cfg, key, _convert(where, key, value, getattr(cfg, key)))
    if cfg.kind not in ("video", "audio"):
        raise ConfigError(f"{where}: kind must be 'video' or 'audio', got {cfg.kind!r}")
    types = VIDEO_TYPES if cfg.kind == "video" else AUDIO_TYPES
    if cfg.type not in types:
        raise ConfigError(
            f"{where}: type for {cfg.kind} must be one of {', '.join(types)}, got {cfg.type!r}"
        )
    if cfg.kind == "audio":
        cfg.codec = cfg.codec or "opus"
        cfg.bitrate_kbps = cfg.bitrate_kbps or 32
        if cfg.codec != "opus":
            raise ConfigError(f"{where}: codec for audio must be 'opus', got {cfg.codec!r}")
        if cfg.layers != ["h"]:
            raise ConfigError(f"{where}: layers: audio has a single layer")
    else:
        cfg.codec = cfg.codec or "h264"
        cfg.bitrate_kbps = cfg.bitrate_kbps or 1000
        if cfg.codec not in VIDEO_CODECS:
            raise ConfigError(
                f"{where}: codec must be one of {', '.join(VIDEO_CODECS)}, got {cfg.codec!r}"
            )
        for key in ("width", "height"):
            value = getattr(cfg, key)
            if value < 16 or value % 2:
                raise ConfigError(f"{where}: {key} must be an even number >= 16, got {value}")
        if not cfg.layers or "h" not in cfg.layers or set(cfg.layers) - {"h", "m", "l"}:
            raise ConfigError(
                f"{where}: layers must include 'h' and only use 'h', 'm', 'l', got {cfg.layers!r}"
            )
        if len(set(cfg.layers)) != len(cfg.layers):
            raise ConfigError(f"{where}: layers lists a layer twice: {cfg.layers!r}")
        if cfg.type in PASSTHROUGH_TYPES and cfg.layers != ["h"]:
            raise ConfigError(
                f"{where}: layers: a {cfg.type} source is passed through without "
                "re-encoding, so it has only layer 'h'"
            )
    if cfg.content not in CONTENT_TYPES:
        raise ConfigError(f"{where}: content must be 'camera' or 'screen', got {cfg.content!r}")
    if cfg.fps <= 0 or cfg.fps > 60:
        raise ConfigError(f"{where}: fps must be in (0, 60], got {cfg.fps}")
    if cfg.bitrate_kbps <= 0:
        raise ConfigError(f"{where}: bitrate_kbps must be positive, got {cfg.bitrate_kbps}")
    required = {"file": "path", "rtsp": "url", "v4l2": "device"}.get(cfg.type)
    if required and not getattr(cfg, required):
        raise ConfigError(f"{where}: type {cfg.type!r} needs {required!r}")
    return cfg


def parse_config(data: dict[str, Any]) -> AgentConfig:
    """Validate a parsed TOML document (see the module docstring for the layout)."""
    top = dict(data.get("agent", {}))
    for key, value in data.items():
        if key not in ("agent", "source", "recording"):
            top[key] = value
    cfg = AgentConfig()
    simple = {
        "server_url",
        "token",
        "token_file",
        "role",
        "classroom_id",
        "synthetic",
        "synthetic_pattern",
    }
    for key, value in top.items():
        if key not in simple:
            raise ConfigError(f"agent: unknown key {key!r}")
        if key == "token_file":
            if not isinstance(value, str):
                raise ConfigError(f"agent: token_file must be a path string, got {value!r}")
            cfg.token_file = Path(value)
        else:
            setattr(cfg, key, _convert("agent", key, value, getattr(cfg, key)))
    if cfg.role not in ROLES:
        raise ConfigError(f"agent: role must be 'master' or 'point', got {cfg.role!r}")
    if cfg.synthetic_pattern not in SYNTHETIC_PATTERNS:
        raise ConfigError(
            f"agent: synthetic_pattern must be 'card' or 'noise', got {cfg.synthetic_pattern!r}"
        )
    if cfg.token and cfg.token_file:
        raise ConfigError("agent: give token or token_file, not both")
    recording = data.get("recording", {})
    if not isinstance(recording, dict):
        raise ConfigError("recording must be a table")
    for key, value in recording.items():
        if key == "dir":
            if not isinstance(value, str):
                raise ConfigError(f"recording: dir must be a path string, got {value!r}")
            cfg.recording.dir = Path(value)
        elif key == "disk_budget_gb":
            cfg.recording.disk_budget_gb = _convert("recording", key, value, 0.0)
            if cfg.recording.disk_budget_gb <= 0:
                raise ConfigError(f"recording: disk_budget_gb must be positive, got {value}")
        else:
            raise ConfigError(f"recording: unknown key {key!r}")
    tables = data.get("source")
    if tables is None:
        cfg.sources = default_sources(cfg.role, cfg.synthetic, cfg.synthetic_pattern)
    else:
        if not isinstance(tables, list):
            raise ConfigError("source must be an array of tables ([[source]])")
        cfg.sources = [_source(i, t) for i, t in enumerate(tables)]
    names = [s.name for s in cfg.sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"source: name {duplicates[0]!r} is used twice")
    return cfg


def load_config(path: Path | str) -> AgentConfig:
    """Read and validate an agent TOML file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc}") from exc
    return parse_config(data)


@dataclass
class PublishedTrack:
    """One track the agent publishes, tagged the way the SFU groups simulcast layers."""

    source: str
    kind: str
    layer: str
    label: str
    track: EncodedVideoTrack | EncodedAudioTrack
    codec: str
    media_source: MediaSource
    width: int = 0
    height: int = 0
    bitrate_kbps: int = 0


def make_source(cfg: SourceConfig, on_state: StateCallback | None = None) -> MediaSource:
    """The capture source for one ``[[source]]`` table."""
    common: dict[str, Any] = {"label": cfg.display_label, "on_state": on_state}
    video: dict[str, Any] = {**common, "width": cfg.width, "height": cfg.height, "fps": cfg.fps}
    if cfg.kind == "audio":
        if cfg.type == "synthetic":
            return SyntheticAudio(freq=cfg.freq, name=cfg.name, **common)
        if cfg.type == "alsa":
            return AlsaMicrophone(cfg.name, cfg.device or "default", **common)
        return PulseMicrophone(cfg.name, cfg.device or "default", **common)
    if cfg.type in ("synthetic", "noise"):
        card = SyntheticVideo if cfg.type == "synthetic" else NoiseVideo
        return card(
            cfg.width,
            cfg.height,
            cfg.fps,
            cfg.display_label,
            cfg.seed,
            name=cfg.name,
            on_state=on_state,
        )
    if cfg.type == "v4l2":
        return V4L2Camera(cfg.name, cfg.device, input_format=cfg.input_format or None, **video)
    if cfg.type == "x11":
        return X11Screen(cfg.name, cfg.device or None, **video)
    if cfg.type == "file":
        return FileSource(cfg.name, cfg.path, codec=cfg.codec, loop=cfg.loop, **video)
    return RTSPCamera(cfg.name, cfg.url, codec=cfg.codec, **video)


def _layer_size(cfg: SourceConfig, layer: str) -> tuple[int, int, int, float]:
    if layer == "h":
        return cfg.width, cfg.height, cfg.bitrate_kbps, cfg.fps
    if cfg.content == "screen":
        kbps, fps = SCREEN_LAYER_PRESETS[layer]
        return cfg.width, cfg.height, min(kbps, cfg.bitrate_kbps), min(fps, cfg.fps)
    height, kbps, fps = LAYER_PRESETS[layer]
    height = min(height, cfg.height)
    width = round(cfg.width * height / cfg.height / 2) * 2
    return width, height, min(kbps, cfg.bitrate_kbps), min(fps, cfg.fps)


def build_tracks(
    config: AgentConfig, on_state: StateCallback | None = None
) -> list[PublishedTrack]:
    """One encoded track per source and layer; layers of a source share one capture."""
    published = []
    for cfg in config.sources:
        source = make_source(cfg, on_state)
        if cfg.kind == "audio":
            published.append(
                PublishedTrack(
                    cfg.name,
                    "audio",
                    "h",
                    cfg.display_label,
                    EncodedAudioTrack(source, cfg.bitrate_kbps),
                    "opus",
                    source,
                    bitrate_kbps=cfg.bitrate_kbps,
                )
            )
            continue
        for layer in cfg.layers:
            width, height, kbps, fps = _layer_size(cfg, layer)
            track = EncodedVideoTrack(
                source,
                cfg.codec,
                kbps,
                fps,
                SCREEN_KEYFRAME_S if cfg.content == "screen" else CAMERA_KEYFRAME_S,
                width=width,
                height=height,
                layer=layer,
                content=cfg.content,
            )
            published.append(
                PublishedTrack(
                    cfg.name,
                    "video",
                    layer,
                    cfg.display_label,
                    track,
                    cfg.codec,
                    source,
                    width,
                    height,
                    kbps,
                )
            )
    return published
