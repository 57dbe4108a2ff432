"""The master classroom's packets and tracks, for the in-process hot-path benches.

H.264 in FU-A packets (a delta frame of 5, a keyframe of 50) and Opus, on one-layer
UpTracks. Nothing here imports media_server at import time: bench/forwardcost.py loads
this module first and then another tree's media_server (`--tree`).
"""

from __future__ import annotations

from typing import Any

PAYLOAD = 1150
VIDEO_PACKETS = 5  # a delta frame: ~6 kB, 1.5 Mbit/s at 30 fps
KEY_PACKETS = 50


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return (
        bytes([0x80, (0x80 if marker else 0) | pt])
        + (seq & 0xFFFF).to_bytes(2, "big")
        + (ts & 0xFFFFFFFF).to_bytes(4, "big")
        + ssrc.to_bytes(4, "big")
        + payload
    )


def frame_payloads(key: bool) -> list[bytes]:
    """One H.264 frame's FU-A payloads, in order."""
    count = KEY_PACKETS if key else VIDEO_PACKETS
    nal = 5 if key else 1
    out = []
    for i in range(count):
        fu = (0x80 if i == 0 else 0) | (0x40 if i == count - 1 else 0) | nal
        out.append(bytes([0x7C, fu]) + bytes(PAYLOAD))
    return out


def master_tracks() -> tuple[dict[str, Any], dict[str, Any]]:
    """(UpTracks, MediaSources) by kind: the teacher camera (H.264, SSRC 1000, PT 102)
    and the classroom microphone (Opus, SSRC 2000, PT 111), from whichever media_server
    is on the path."""
    from media_server.source import MediaSource
    from media_server.uptrack import UpTrack

    ups = {}
    for kind, ssrc in (("video", 1000), ("audio", 2000)):
        video = kind == "video"
        ups[kind] = UpTrack(
            track_id=f"master/{kind}",
            source="teacher_camera" if video else "classroom_mic",
            layer="h",
            kind=kind,
            codec="h264" if video else "opus",
            clock_rate=90000 if video else 48000,
            ssrc=ssrc,
            payload_type=102 if video else 111,
            rtx_ssrc=None,
            rtx_payload_type=None,
            request_keyframe=lambda up: None,
            request_nack=lambda up: None,
        )
    sources = {
        kind: MediaSource(
            participant="master",
            classroom="c",
            name="m",
            source=up.source,
            kind=kind,
            codec=up.codec,
            label="",
            layers={"h": up},
        )
        for kind, up in ups.items()
    }
    return ups, sources
