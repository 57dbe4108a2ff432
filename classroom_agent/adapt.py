"""How a publishing agent follows the SFU's ``publish_feedback`` (docs/protocol.md).

The SFU tells each publisher its receive estimate for the uplink and which layers nobody
receives. The agent stops encoding those layers (a layer that is recorded locally keeps
encoding for the safety copy but sends nothing) and splits the estimate over the layers
that are still wanted: audio keeps its bitrate, video layers share the rest in proportion
to their configured bitrates, never above them and never below a floor that keeps a
picture recognisable. A layer that becomes wanted again restarts on a keyframe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Media payload is what the encoders control; RTP/SRTP/UDP headers and retransmissions
# take the rest of the estimate.
PAYLOAD_SHARE = 0.85
# A layer is never asked for less than this share of its configured bitrate (and never
# less than MIN_KBPS): below it x264 only produces mush; the SFU drops the layer instead.
FLOOR_SHARE = 0.2
MIN_KBPS = 30


@dataclass(frozen=True)
class Layer:
    source: str
    layer: str
    kind: str
    configured_kbps: int


@dataclass(frozen=True)
class Feedback:
    bitrate_bps: int | None
    idle: frozenset[tuple[str, str]]


class FeedbackError(ValueError):
    """A ``publish_feedback`` message does not have the documented shape."""


def parse_feedback(message: dict[str, Any]) -> Feedback:
    """Validate a ``publish_feedback`` message; raise FeedbackError naming the bad field."""
    bitrate = message.get("bitrate_bps")
    if bitrate is not None and (
        isinstance(bitrate, bool) or not isinstance(bitrate, int) or bitrate <= 0
    ):
        raise FeedbackError(
            f"publish_feedback: bitrate_bps must be a positive integer, got {bitrate!r}"
        )
    raw_idle = message.get("idle", [])
    if not isinstance(raw_idle, list):
        raise FeedbackError("publish_feedback: idle must be a list")
    idle = set()
    for entry in raw_idle:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("source"), str)
            or entry.get("layer") not in ("h", "m", "l")
        ):
            raise FeedbackError(f"publish_feedback: bad idle entry {entry!r}")
        idle.add((entry["source"], entry["layer"]))
    return Feedback(bitrate_bps=bitrate, idle=frozenset(idle))


def plan(layers: Iterable[Layer], feedback: Feedback) -> dict[tuple[str, str], int | None]:
    """The bitrate (kbps) for every layer, or None for a layer to stop encoding."""
    layers = list(layers)
    out: dict[tuple[str, str], int | None] = {}
    active = []
    for layer in layers:
        key = (layer.source, layer.layer)
        if layer.kind == "video" and key in feedback.idle:
            out[key] = None
        elif layer.kind == "audio":
            out[key] = layer.configured_kbps
        else:
            active.append(layer)
    if feedback.bitrate_bps is None:
        budget = float("inf")
    else:
        audio = sum(v for v in out.values() if v is not None)
        budget = max(0.0, feedback.bitrate_bps * PAYLOAD_SHARE / 1000 - audio)
    wanted = sum(layer.configured_kbps for layer in active)
    scale = min(1.0, budget / wanted) if wanted else 1.0
    for layer in active:
        floor = max(MIN_KBPS, round(layer.configured_kbps * FLOOR_SHARE))
        kbps = max(floor, round(layer.configured_kbps * scale))
        out[(layer.source, layer.layer)] = min(layer.configured_kbps, kbps)
    return out
