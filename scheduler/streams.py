"""Stream profiles of a remote lesson: what a point's line must carry down (and up).

A master lesson is sent either as the director's program alone (one mixed picture plus
audio, what most 专递课堂 use) or as its parts (teacher camera, courseware screen and
audio, which the point's page lays out itself). Two-way lessons also send each point's
class camera back up to the master. offers.csv names the profile per lesson; explicit
`stream_mbps` / `point_uplink_mbps` columns override its figures.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamProfile:
    name: str
    down_mbps: float  # what one point receives
    up_mbps: float  # what one point sends back (0: one-way)
    text: str


_CAMERA, _COURSEWARE, _AUDIO, _POINT_CAMERA = 1.2, 1.0, 0.064, 0.6

PROFILES: dict[str, StreamProfile] = {
    "program": StreamProfile(
        "program", 2.0, 0.0, "导播画面 / the director's program alone (one picture + audio)"
    ),
    "full": StreamProfile(
        "full",
        round(_CAMERA + _COURSEWARE + _AUDIO, 3),
        0.0,
        "教师画面+课件+声音 / teacher camera + courseware + audio",
    ),
    "program-two-way": StreamProfile(
        "program-two-way",
        2.0,
        _POINT_CAMERA,
        "导播画面，教学点回传画面 / program, points send their class camera back",
    ),
    "full-two-way": StreamProfile(
        "full-two-way",
        round(_CAMERA + _COURSEWARE + _AUDIO, 3),
        _POINT_CAMERA,
        "teacher camera + courseware + audio, points send their class camera back",
    ),
}
DEFAULT_PROFILE = "program"
