"""An Opus decoder for the point agent that rebuilds a lost packet from the next one.

aiortc decodes Opus through libav's libopus wrapper, which has no way to ask libopus for
the in-band FEC copy (the sender's agents encode with ``fec=1``): on a 10 % loss line
every lost packet was a hole (12-14 % of the audio missing at 256 kbit/s). The frame
buffer (`classroom_agent/framing.py`) hands a lost packet's successor on marked
``fec``; this decoder then calls ``opus_decode(..., decode_fec=1)`` on it, which yields
the lost packet's audio from the low-bitrate copy the successor carries. It talks to
libopus (the system's, or the copy PyAV's wheel bundles) through ctypes, with the same
output as aiortc's decoder (s16 stereo at 48 kHz).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fractions
from functools import cache
from pathlib import Path
from typing import Any

import av
import numpy as np
from av import AudioFrame

SAMPLE_RATE = 48000
CHANNELS = 2
MAX_SAMPLES = 5760  # 120 ms at 48 kHz, the longest Opus packet
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class OpusUnavailable(RuntimeError):
    pass


def _candidates() -> list[str]:
    """The system's libopus, then the one PyAV's wheel bundles (a slim container image or
    a classroom box without Debian's libopus0 still has that one)."""
    names = [ctypes.util.find_library("opus") or "libopus.so.0"]
    libs = Path(av.__file__).resolve().parent.parent / "av.libs"
    names += sorted(str(p) for p in libs.glob("libopus*.so*"))
    return names


@cache
def _lib() -> ctypes.CDLL:
    errors = []
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as exc:
            errors.append(str(exc))
    else:
        raise OpusUnavailable(f"libopus not found ({'; '.join(errors)})")
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.POINTER(ctypes.c_int16),
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.opus_packet_get_nb_samples.restype = ctypes.c_int
    lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    return lib


def available() -> bool:
    try:
        _lib()
    except OpusUnavailable:
        return False
    return True


def packet_samples(payload: bytes) -> int:
    """Samples (at 48 kHz) one Opus packet holds; 0 if it is malformed."""
    if not payload:
        return 0
    n = int(_lib().opus_packet_get_nb_samples(payload, len(payload), SAMPLE_RATE))
    return max(n, 0)


class FecOpusDecoder:
    """aiortc's Decoder interface: ``decode(frame)`` -> audio frames. A frame with
    ``fec`` set is the successor of a lost packet: the lost packet's audio is decoded
    from the FEC copy it carries (the successor itself comes as its own frame next)."""

    def __init__(self) -> None:
        lib = _lib()
        err = ctypes.c_int(0)
        self._lib = lib
        self._dec = lib.opus_decoder_create(SAMPLE_RATE, CHANNELS, ctypes.byref(err))
        if not self._dec or err.value != 0:
            raise OpusUnavailable(f"opus_decoder_create failed ({err.value})")
        self._pcm = (ctypes.c_int16 * (MAX_SAMPLES * CHANNELS))()

    def __del__(self) -> None:
        dec, self._dec = getattr(self, "_dec", None), None
        if dec:
            self._lib.opus_decoder_destroy(dec)

    def decode(self, encoded_frame: Any) -> list[AudioFrame]:
        data: bytes = encoded_frame.data
        if not data:
            return []  # libopus would conceal 120 ms for an empty packet
        fec = bool(getattr(encoded_frame, "fec", False))
        # FEC: ask for exactly the lost packet's length (what the successor holds).
        size = packet_samples(data) if fec else MAX_SAMPLES
        if size <= 0:
            return []
        n = self._lib.opus_decode(self._dec, data, len(data), self._pcm, size, int(fec))
        if n <= 0:
            return []
        samples = np.ctypeslib.as_array(self._pcm)[: n * CHANNELS].copy().reshape(1, -1)
        frame = AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = encoded_frame.timestamp
        frame.time_base = TIME_BASE
        return [frame]
