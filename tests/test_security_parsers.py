"""Property tests: byte parsers, SDP and the upload API refuse garbage cleanly.

Bounded (a few hundred examples each, deterministic) so the suite stays fast; the long
runs are `bench/fuzz.py`.
"""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from typing import Any

from aiortc.rtp import RtcpPacket, RtcpRtpfbPacket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media_server.publisher import SignallingError, nack_packet, parse_sdp
from media_server.rtpbytes import is_keyframe_start, payload_bounds
from tests.lesson_server import ServerProcess
from tongke.untrusted import BadInput, display_text_problem, loads

FAST = settings(max_examples=300, deadline=None, derandomize=True)


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_give_payload_bounds_or_value_error(data: bytes) -> None:
    try:
        start, end = payload_bounds(data)
    except ValueError:
        return
    assert 12 <= start <= end <= len(data)
    for codec in ("h264", "vp8", "opus"):
        assert is_keyframe_start(codec, data, start, end) in (True, False)


@st.composite
def rtp_packets(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    """A well-formed RTP packet, its payload and its padding length."""
    csrcs = draw(st.integers(0, 15))
    ext_words = draw(st.one_of(st.none(), st.integers(0, 8)))
    payload = draw(st.binary(max_size=64))
    padding = draw(st.integers(0, 8))
    first = 0x80 | csrcs | (0x10 if ext_words is not None else 0) | (0x20 if padding else 0)
    header = struct.pack("!BBHII", first, 96, 1, 2, 3) + b"\0" * (4 * csrcs)
    if ext_words is not None:
        header += struct.pack("!HH", 0xBEDE, ext_words) + b"\0" * (4 * ext_words)
    pad = (b"\0" * (padding - 1) + bytes([padding])) if padding else b""
    return header + payload + pad, payload, padding


@FAST
@given(rtp_packets())
def test_well_formed_packets_give_exactly_their_payload(case: tuple[bytes, bytes, int]) -> None:
    packet, payload, _ = case
    start, end = payload_bounds(packet)
    assert packet[start:end] == payload


@FAST
@given(rtp_packets(), st.integers(1, 40))
def test_truncated_packets_never_overrun(case: tuple[bytes, bytes, int], cut: int) -> None:
    packet = case[0][:-cut] if cut < len(case[0]) else b""
    try:
        start, end = payload_bounds(packet)
    except ValueError:
        return
    assert 12 <= start <= end <= len(packet)


SDP_LINES = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "v=0",
                "o=- 1 1 IN IP4 127.0.0.1",
                "s=-",
                "t=0 0",
                "m=video 9 UDP/TLS/RTP/SAVPF 96",
                "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                "c=IN IP4 0.0.0.0",
                "a=rtpmap:96 VP8/90000",
                "a=rtpmap:111 opus/48000/2",
                "a=mid:0",
                "a=sendonly",
                "a=ssrc:1 cname:x",
                "a=fingerprint:sha-256 00:11",
                "a=group:BUNDLE 0",
                "a=rtcp-fb:96 nack",
                "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
                "a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
            ]
        ),
        st.text(max_size=40),
    ),
    max_size=20,
)


@FAST
@given(SDP_LINES)
def test_any_sdp_text_is_parsed_or_refused_as_bad_sdp(lines: list[str]) -> None:
    try:
        parse_sdp("v=0\r\n" + "\r\n".join(lines) + "\r\n")
    except SignallingError as exc:
        assert exc.code == "bad_sdp"


JSON_TEXT = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
).map(lambda v: json.dumps(v, ensure_ascii=True))


@FAST
@given(st.one_of(JSON_TEXT, st.text(max_size=60)))
def test_loads_accepts_or_refuses_with_bad_json_and_what_it_returns_encodes(text: str) -> None:
    try:
        value = loads(text)
    except BadInput as exc:
        assert exc.code == "bad_json"
        return
    json.dumps(value, allow_nan=False).encode("utf-8")


@FAST
@given(st.text(max_size=80))
def test_accepted_display_text_is_printable_and_bounded(text: str) -> None:
    if display_text_problem(text) is None:
        assert 0 < len(text) <= 64 and text.strip()
        assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) < 0xA0 for c in text)
        text.encode("utf-8")


FILE_ENTRIES = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "path": st.one_of(
                st.sampled_from(["manifest.json", "tracks/a.rtp", "../x", "/etc/passwd"]),
                st.text(max_size=20),
            ),
            "size": st.one_of(st.integers(-5, 2**40), st.floats(), st.text(max_size=3)),
            "sha256": st.one_of(st.just("0" * 64), st.text(max_size=70)),
        },
    ),
    max_size=4,
)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=st.one_of(st.fixed_dictionaries({"files": FILE_ENTRIES}), JSON_TEXT.map(json.loads)))
def test_the_upload_api_answers_any_body_with_a_client_error_never_500(
    server: ServerProcess, room: str, body: Any
) -> None:
    token = server.token(room, "c-up", "agent")
    req = urllib.request.Request(
        f"{server.url}/api/recordings/{room}/uploads",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    assert status < 500, body


def test_deeply_nested_bodies_get_400_on_every_packages_routes(
    server: ServerProcess, room: str
) -> None:
    # These reached json.loads in the scheduler and recording APIs: RecursionError, 500.
    token = server.token(room, "c-up", "agent")
    for path in (f"/api/recordings/{room}/uploads", f"/api/schedule/lessons/{room}/tokens"):
        for body in ("[" * 50_000, '{"files": "\\ud800"}'):
            req = urllib.request.Request(
                server.url + path,
                data=body.encode(),
                method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            try:
                urllib.request.urlopen(req, timeout=10)
                status, code = 200, None
            except urllib.error.HTTPError as err:
                status, code = err.code, json.loads(err.read())["error"]["code"]
            assert (status, code) == (400, "bad_json"), (path, body[:10])


def test_nacks_across_the_sequence_wrap_are_packed() -> None:
    """Found by the soak: losses at 65534, 65535, 0, 1 (arrival order) raised ValueError
    in aiortc's packer, so no NACK went out for them and they stayed lost."""
    (packet,) = RtcpPacket.parse(nack_packet(1, 2, [65534, 65535, 0, 1]))
    assert isinstance(packet, RtcpRtpfbPacket)
    assert (packet.ssrc, packet.media_ssrc) == (1, 2)
    assert sorted(packet.lost) == [0, 1, 65534, 65535]


@FAST
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=200))
def test_any_nack_list_is_packed_and_parses_back(seqs: list[int]) -> None:
    (packet,) = RtcpPacket.parse(nack_packet(7, 9, seqs))
    assert isinstance(packet, RtcpRtpfbPacket)
    assert set(packet.lost) == set(seqs)
