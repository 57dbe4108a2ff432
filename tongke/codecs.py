"""Which codec a transceiver may negotiate when its packets are not encoded by aiortc.

Neither the SFU nor the agent lets aiortc encode: the SFU forwards the publisher's
packets and the agent hands aiortc packets it encoded itself. Either way exactly the
packets' own codec must be negotiated, or aiortc packs / the browser decodes them as
something else.
"""

from __future__ import annotations

from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

MIME = {"h264": "video/h264", "vp8": "video/vp8", "opus": "audio/opus"}
CODEC_OF_MIME = {mime: codec for codec, mime in MIME.items()}


def codec_capabilities(kind: str, codec: str) -> list[RTCRtpCodecCapability]:
    """aiortc's capability for `codec` (plus RTX for video), for setCodecPreferences.

    H.264 is offered as packetization-mode 1, constrained baseline (42e01f): what
    libx264's baseline profile produces and every browser decodes.
    """
    if codec not in MIME:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(MIME)}")
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in caps if c.mimeType.lower() == MIME[codec]]
    if codec == "h264":
        chosen = [
            c
            for c in chosen
            if c.parameters.get("packetization-mode") == "1"
            and str(c.parameters.get("profile-level-id", "")).lower() == "42e01f"
        ]
    if not chosen:
        raise ValueError(f"aiortc cannot send {codec} as {kind}")
    rtx = [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]
    return chosen[:1] + rtx[:1]
