"""Counts every decoder and encoder aiortc creates in this process.

The SFU must never create one; the stats endpoint, the tests and the fan-out benchmark
read these counters to prove it.
"""

from __future__ import annotations

import threading
from typing import Any

import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender

counts = {"decoders": 0, "encoders": 0}
_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    get_decoder = aiortc.rtcrtpreceiver.get_decoder
    get_encoder = aiortc.rtcrtpsender.get_encoder

    def counting_decoder(codec: Any) -> Any:
        counts["decoders"] += 1
        return get_decoder(codec)

    def counting_encoder(codec: Any) -> Any:
        counts["encoders"] += 1
        return get_encoder(codec)

    aiortc.rtcrtpreceiver.get_decoder = counting_decoder
    aiortc.rtcrtpsender.get_encoder = counting_encoder


def decoder_threads() -> int:
    """aiortc starts one '<kind>-decoder' thread per started receiver."""
    return sum(1 for t in threading.enumerate() if t.name.endswith("-decoder"))


def snapshot() -> dict[str, int]:
    return {
        "decoders": counts["decoders"],
        "encoders": counts["encoders"],
        "decoder_threads": decoder_threads(),
    }
