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


def enable_opus_fec(sdp: str) -> str:
    """Ask the other side for Opus in-band FEC (RFC 7587 `useinbandfec=1`).

    aiortc writes no fmtp line for Opus and refuses modified capabilities, so the SDP we
    send is amended as text: with it, a browser's Opus encoder adds in-band FEC, and a
    lost 20 ms packet is rebuilt from the next one instead of concealed. Payload types
    are per media section (the same number may be VP8 in the next one).
    """
    sections: list[list[str]] = [[]]
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    out: list[str] = []
    for lines in sections:
        if lines and lines[0].startswith("m=audio"):
            lines = _opus_fec_in_section(lines)
        out.extend(lines)
    return "\r\n".join(out)


def _opus_fec_in_section(lines: list[str]) -> list[str]:
    opus = [
        line.split()[0].split(":", 1)[1]
        for line in lines
        if line.startswith("a=rtpmap:") and " opus/48000" in line.lower()
    ]
    out: list[str] = []
    for line in lines:
        for pt in opus:
            if line.startswith(f"a=fmtp:{pt} ") and "useinbandfec" not in line:
                line += ";useinbandfec=1"
        out.append(line)
        if line.startswith("a=rtpmap:"):
            pt = line.split()[0].split(":", 1)[1]
            if pt in opus and not any(x.startswith(f"a=fmtp:{pt} ") for x in lines):
                out.append(f"a=fmtp:{pt} minptime=10;useinbandfec=1")
    return out


TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
# aiortc numbers its own extensions 1-3 (mid, audio level, abs-send-time).
TRANSPORT_CC_ID = 5


def offer_transport_cc(sdp: str, ext_id: int = TRANSPORT_CC_ID) -> str:
    """Offer transport-wide congestion control (the extension and its feedback) on every
    audio and video section of an SDP aiortc wrote (it knows neither); on an answer,
    accept it with the offer's `ext_id`.

    A browser that answers with the extension stamps nothing itself: it reports, every
    50-250 ms, when each of our packets arrived (media_server/twcc.py), and the SFU's
    send-side estimate learns from that. aiortc's own answer leaves it out; the
    classroom agent puts it in and reports as a browser does
    (classroom_agent/transport_feedback.py).
    """
    out: list[str] = []
    kind = ""
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        out.append(line)
        if kind not in ("audio", "video"):
            continue
        if line.startswith("a=rtpmap:"):
            pt = line.split()[0].split(":", 1)[1]
            if not line.lower().split()[1].startswith("rtx/"):
                out.append(f"a=rtcp-fb:{pt} transport-cc")
        elif line.startswith("a=mid:"):
            out.append(f"a=extmap:{ext_id} {TRANSPORT_CC_URI}")
    return "\r\n".join(out)


def answered_transport_cc(sdp: str) -> int | None:
    """The transport-cc extension id an answer accepted, or an offer offered (None: not
    negotiated)."""
    for line in sdp.splitlines():
        if line.startswith("a=extmap:") and line.rstrip().endswith(" " + TRANSPORT_CC_URI):
            ext_id = line[len("a=extmap:") :].split()[0].split("/", 1)[0]
            if ext_id.isdigit() and 1 <= int(ext_id) <= 14:
                return int(ext_id)
    return None


RED_PAYLOAD_TYPE = 63  # Chromium's own choice; unused by aiortc's audio codecs


def offer_audio_red(sdp: str) -> str:
    """Offer RED (RFC 2198, `red/48000/2`) around Opus in every audio section.

    A browser that answers with it receives each Opus packet together with the one
    before it: a single lost packet is rebuilt from the next one's copy instead of
    concealed. aiortc neither offers nor understands it; the DownTrack writes the bytes.
    """
    out: list[str] = []
    opus: str | None = None
    lines = sdp.split("\r\n")
    for i, line in enumerate(lines):
        if line.startswith("m="):
            opus = None
            if line.startswith("m=audio"):
                section = lines[
                    i + 1 : next(
                        (j for j in range(i + 1, len(lines)) if lines[j].startswith("m=")),
                        len(lines),
                    )
                ]
                opus = next(
                    (
                        x.split()[0].split(":", 1)[1]
                        for x in section
                        if x.startswith("a=rtpmap:") and " opus/48000" in x.lower()
                    ),
                    None,
                )
                if opus is not None:
                    head, pts = line.split(" ", 3)[:3], line.split(" ", 3)[3:]
                    line = " ".join([*head, str(RED_PAYLOAD_TYPE), *pts])
        out.append(line)
        if opus is not None and line.startswith(f"a=rtpmap:{opus} "):
            out.append(f"a=rtpmap:{RED_PAYLOAD_TYPE} red/48000/2")
            out.append(f"a=fmtp:{RED_PAYLOAD_TYPE} {opus}/{opus}")
    return "\r\n".join(out)


def answered_audio_red(sdp: str) -> tuple[int, int] | None:
    """(RED payload type, Opus payload type inside it) when the answer accepted RED."""
    red = opus = None
    for line in sdp.splitlines():
        if line.startswith("a=rtpmap:") and " red/48000" in line.lower():
            red = line.split()[0].split(":", 1)[1]
        elif line.startswith("a=rtpmap:") and " opus/48000" in line.lower():
            opus = line.split()[0].split(":", 1)[1]
    if red is None or opus is None or not red.isdigit() or not opus.isdigit():
        return None
    if not 0 <= int(red) < 128 or not 0 <= int(opus) < 128:
        return None
    return int(red), int(opus)
