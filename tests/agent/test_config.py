"""The agent's TOML configuration and the track factory."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import av
import pytest

from classroom_agent import pixelclock
from classroom_agent.config import ConfigError, build_tracks, load_config, parse_config

from .conftest import within

EXAMPLE = """
[agent]
server_url = "https://tongke.example.edu.cn"
token_file = "{token}"
role = "master"
classroom_id = "school-12/room-301"

[recording]
dir = "/var/lib/tongke/recordings"
disk_budget_gb = 50

[[source]]
name = "teacher_camera"
kind = "video"
type = "synthetic"
codec = "h264"
bitrate_kbps = 1500
width = 640
height = 360
fps = 30
layers = ["h", "l"]

[[source]]
name = "lesson_clip"
type = "file"
path = "/srv/clips/intro.mp4"

[[source]]
name = "classroom_mic"
kind = "audio"
type = "synthetic"
"""


def test_example_file_loads(tmp_path: Path) -> None:
    token = tmp_path / "agent.token"
    token.write_text("secret-token\n")
    path = tmp_path / "agent.toml"
    path.write_text(EXAMPLE.format(token=token))
    cfg = load_config(path)
    assert cfg.resolved_token() == "secret-token"
    assert cfg.classroom_id == "school-12/room-301"
    assert cfg.recording.disk_budget_gb == 50.0
    assert [(s.name, s.type, s.codec) for s in cfg.sources] == [
        ("teacher_camera", "synthetic", "h264"),
        ("lesson_clip", "file", "h264"),
        ("classroom_mic", "synthetic", "opus"),
    ]
    assert cfg.sources[2].bitrate_kbps == 32


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('role = "teacher"', "role must be 'master' or 'point'"),
        ('serverurl = "x"', "agent: unknown key 'serverurl'"),
        (
            '[[source]]\nname = "board_camera"\nbitrate = 800',
            "source 'board_camera': unknown key 'bitrate'",
        ),
        ('[[source]]\nname = "cam"\ntype = "usb"', "source 'cam': type for video must be one of"),
        ('[[source]]\nname = "cam"\nwidth = "wide"', "source 'cam': width must be an integer"),
        ('[[source]]\nname = "cam"\nwidth = 641', "source 'cam': width must be an even number"),
        (
            '[[source]]\nname = "clip"\ntype = "file"\npath = "a.mp4"\nlayers = ["h", "l"]',
            "source 'clip': layers: a file source is passed through",
        ),
        ('[[source]]\nname = "cam"\ntype = "rtsp"', "source 'cam': type 'rtsp' needs 'url'"),
        (
            '[[source]]\nname = "mic"\nkind = "audio"\ntype = "v4l2"',
            "source 'mic': type for audio must be one of",
        ),
        ('[[source]]\nname = "cam"\n[[source]]\nname = "cam"', "name 'cam' is used twice"),
        ("[recording]\nbudget = 3", "recording: unknown key 'budget'"),
        ('[[source]]\nname = "cam"\ncontent = "film"', "source 'cam': content must be"),
        ('synthetic_pattern = "snow"', "agent: synthetic_pattern must be 'card' or 'noise'"),
    ],
)
def test_bad_keys_are_named(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(tomllib.loads(toml))


def test_role_defaults() -> None:
    master = parse_config({"role": "master"})
    tracks = build_tracks(parse_config({"role": "master", "synthetic": True}))
    assert [(s.name, s.type) for s in master.sources] == [
        ("teacher_camera", "v4l2"),
        ("board_camera", "v4l2"),
        ("courseware", "x11"),
        ("classroom_mic", "alsa"),
    ]
    assert [
        (t.source, t.layer, t.kind, t.codec, t.width, t.height, t.bitrate_kbps) for t in tracks
    ] == [
        ("teacher_camera", "h", "video", "h264", 1280, 720, 1200),
        ("teacher_camera", "m", "video", "h264", 640, 360, 450),
        ("teacher_camera", "l", "video", "h264", 320, 180, 120),
        ("board_camera", "h", "video", "h264", 1280, 720, 800),
        ("board_camera", "l", "video", "h264", 320, 180, 120),
        ("courseware", "h", "video", "h264", 1280, 720, 300),
        ("courseware", "l", "video", "h264", 1280, 720, 70),
        ("classroom_mic", "h", "audio", "opus", 0, 0, 32),
    ]
    # Courseware is screen content: full resolution at a low frame rate, in every layer
    # (a slide scaled to 180p cannot be read); the thin links' layer has fewer frames.
    assert tracks[5].track.fps == 5.0
    assert tracks[6].track.fps == 3.0
    assert master.sources[2].content == "screen"
    # Both teacher camera layers read the same capture.
    assert tracks[0].media_source is tracks[1].media_source
    point = parse_config({"role": "point"})
    assert [(s.name, s.width, s.height, s.bitrate_kbps) for s in point.sources] == [
        ("point_camera", 640, 360, 500),
        ("point_mic", 1280, 720, 32),
    ]


async def test_built_tracks_publish() -> None:
    cfg = parse_config({"role": "point", "synthetic": True})
    tracks = build_tracks(cfg)
    try:
        video = await within(tracks[0].track.recv())
        audio = await within(tracks[1].track.recv())
    finally:
        for t in tracks:
            t.track.stop()
    frames = av.CodecContext.create("h264", "r").decode(video)
    assert (frames[0].width, frames[0].height) == (640, 360)
    assert pixelclock.read_frame(frames[0]) is not None
    assert audio.time_base.denominator == 48000


def test_a_2_mbit_point_fits_the_teachers_top_layer_next_to_courseware_board_and_audio() -> None:
    """What a 2 Mbit/s point receives from the master's defaults stays near 1.8 Mbit/s on
    the wire (media, about 6 % of RTP/SRTP/UDP/IP headers on video, Opus with RED)."""
    tracks = {
        (t.source, t.layer): t.bitrate_kbps
        for t in build_tracks(parse_config({"role": "master", "synthetic": True}))
    }
    video = (
        tracks[("teacher_camera", "h")]
        + tracks[("courseware", "h")]
        + min(kbps for (source, _), kbps in tracks.items() if source == "board_camera")
    )
    audio_on_wire = 2 * tracks[("classroom_mic", "h")] + 28  # RED doubles it; 50 headers/s
    assert video * 1.06 + audio_on_wire <= 1850
    # A 1 Mbit/s point fits the teacher's 360p layer, the courseware's low layer and the
    # board's lowest (the estimate of a lossy 1 Mbit/s link is below the link).
    video = (
        tracks[("teacher_camera", "m")]
        + tracks[("courseware", "l")]
        + tracks[("board_camera", "l")]
    )
    assert video * 1.06 + audio_on_wire <= 850
    # A 256 kbit/s point fits the courseware's low layer beside audio, with room for
    # the repair of 10 % loss.
    assert tracks[("courseware", "l")] * 1.06 + audio_on_wire <= 0.8 * 256
