"""Every use of aiortc's, aioice's and pylibsrtp's private internals, in one place.

Tongke uses aiortc for ICE, DTLS, SRTP and SDP and owns the media path itself, which
means reaching past aiortc's public API: the SRTP sessions, the nominated ICE pair, the
DTLS transport's RTP/RTCP handlers, the RTP router, the sender's SSRC, and libsrtp's
protect call under pylibsrtp's wrapper (the hot path's). All of that lives here, behind
small named functions, and `check()` verifies at start-up that each internal still
exists, so an upgrade that moves one fails loudly at start instead of silently dropping
media. The three libraries are pinned in pyproject.toml.

This module also hardens what aiortc/aioice accept from the network:

- the datagram guard: aioice hands any datagram from any address to aiortc, and one
  empty datagram (an IndexError) or one over-long packet ends the DTLS transport for
  good. Every datagram is checked here first; what cannot be valid is dropped and
  counted per reason (`DATAGRAM_DROPS`, shown in /api/stats).
- consent freshness that fits satellite links: aioice's consent check waits 0.5 s for a
  reply and gives up on the connection after six misses, so any RTT above ~500 ms ends
  a lesson after ~30 s. Ours retransmits with back-off and only gives up when nothing
  has answered for `CONSENT_TIMEOUT_S` (RFC 7675's 30 s).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import struct
import time
import weakref
from asyncio import selector_events
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import aioice.ice
import aioice.stun
import aiortc.codecs.h264
import aiortc.codecs.vpx
import aiortc.rtcrtpreceiver
import aiortc.rtp
import pylibsrtp
import pylibsrtp._binding
from aiortc import (
    RTCDtlsTransport,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcdtlstransport import RtpRouter
from aiortc.rtcrtpreceiver import RTCRtpReceiver

# The asyncio transport a host candidate's socket is wrapped in (srtp_sender).
_SelectorTransport: Any = getattr(selector_events, "_SelectorTransport")  # noqa: B009
_SelectorDatagramTransport: Any = getattr(selector_events, "_SelectorDatagramTransport")  # noqa: B009

log = logging.getLogger(__name__)

# Largest datagram a WebRTC peer sends: RTP packetizers stay under the path MTU
# (aiortc 1300 bytes, Chromium ~1200), DTLS flights are fragmented to the MTU.
MAX_DATAGRAM = 1500
MIN_SRTP = 12 + 10  # RTP header + the 80-bit auth tag
MIN_SRTCP = 8 + 4 + 10  # RTCP header + SRTCP index + auth tag
SRTP_BUFFER = 1500  # what pylibsrtp's Session allocates: packet plus trailer

CONSENT_INTERVAL_S = 5.0
CONSENT_TIMEOUT_S = 30.0
CONSENT_RETRANSMISSIONS = 3  # 0.5 + 1 + 2 + 4 s: answers at 600 ms RTT and beyond

# Dropped datagrams per reason, for the whole process.
DATAGRAM_DROPS: Counter[str] = Counter()
# Exceptions from RTP/RTCP handlers that would otherwise have ended a DTLS transport.
HANDLER_ERRORS: Counter[str] = Counter()
# When each ICE connection last accepted an RTP or RTCP datagram (ICE checks alone do
# not prove that media can flow).
_LAST_RECEIVED: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
# ICE connection -> what sees each SRTP datagram it accepts, with when it arrived
# (`tap_arrivals`).
_ARRIVAL_TAPS: weakref.WeakKeyDictionary[Any, Callable[[bytes, float], None]] = (
    weakref.WeakKeyDictionary()
)

# (owner, attribute): class attributes that must exist.
_CLASS_ATTRS: list[tuple[type, str]] = [
    (RTCDtlsTransport, "_handle_rtp_data"),
    (RTCDtlsTransport, "_handle_rtcp_data"),
    (RTCDtlsTransport, "_send_rtp"),
    (RtpRouter, "register_sender"),
    (RTCRtpSender, "_handle_rtcp_packet"),
    (RTCRtpSender, "send"),
    (RTCRtpReceiver, "receive"),
    (RTCRtpReceiver, "_handle_rtp_packet"),
    (RTCRtpReceiver, "_send_rtcp_nack"),
    (aioice.ice.StunProtocol, "datagram_received"),
    (aioice.ice.Connection, "query_consent"),
    (aioice.ice.Connection, "build_request"),
    (aioice.ice.Connection, "data_received"),
    (aioice.ice.Connection, "get_component_candidates"),
]
# (class, attribute): instance attributes its __init__ must set.
_INSTANCE_ATTRS: list[tuple[type, str]] = [
    (RTCDtlsTransport, "_rx_srtp"),
    (RTCDtlsTransport, "_tx_srtp"),
    (RTCDtlsTransport, "_rtp_router"),
    (RTCRtpSender, "_ssrc"),
    (aioice.ice.Connection, "_nominated"),
    (aioice.ice.Connection, "_check_list"),
    (aioice.ice.Connection, "_query_consent_task"),
    (aioice.ice.Connection, "_protocols"),
    (aioice.ice.Connection, "stun_server"),
    (aioice.ice.Connection, "turn_server"),
    (aioice.ice.StunProtocol, "receiver"),
    (RTCIceTransport, "_connection"),
    # The wire's direct send (srtp_sender): an idle transport's socket.
    (_SelectorTransport, "_sock"),
    (_SelectorTransport, "_buffer"),
    (RTCRtpReceiver, "__jitter_buffer"),
    (RTCRtpReceiver, "__nack_generator"),
    (RTCRtpReceiver, "__decoder_queue"),
    (RTCRtpReceiver, "__decoder_thread"),
    (RTCRtpReceiver, "__codecs"),
    (RTCRtpReceiver, "__timestamp_mapper"),
    (pylibsrtp.Session, "_srtp"),
]
_MODULE_ATTRS: list[tuple[Any, str]] = [
    (aioice.ice, "get_host_addresses"),
    (aioice.ice, "CONSENT_INTERVAL"),
    (aioice.ice, "candidate_foundation"),
    (aioice.ice, "candidate_priority"),
    (aiortc.codecs.h264, "h264_depayload"),
    (aiortc.codecs.vpx, "vp8_depayload"),
    (aiortc.rtcrtpreceiver, "get_decoder"),
    (aiortc.rtp, "is_rtcp"),
    (pylibsrtp, "_srtp_assert"),
    (pylibsrtp, "SRTP_MAX_TRAILER_LEN"),
    (pylibsrtp._binding, "ffi"),
    (pylibsrtp._binding.lib, "srtp_protect"),
]


class InternalsChanged(RuntimeError):
    """aiortc or aioice no longer has an internal Tongke relies on."""


def check() -> None:
    """Fail at start-up, with the names, if any internal we rely on has moved."""
    missing = [f"{o.__name__}.{a}" for o, a in _CLASS_ATTRS if not hasattr(o, a)]
    missing += [f"{m.__name__}.{a}" for m, a in _MODULE_ATTRS if not hasattr(m, a)]
    for cls, attr in _INSTANCE_ATTRS:
        if f"self.{attr}" not in inspect.getsource(vars(cls)["__init__"]):
            missing.append(f"{cls.__name__}().{attr}")
    if missing:
        raise InternalsChanged(
            "this aiortc/aioice/pylibsrtp lacks internals Tongke needs (pin aiortc 1.16.0, "
            "aioice 0.13.0, pylibsrtp 1.0.0): " + ", ".join(missing)
        )


# -- the datagram guard and consent ------------------------------------------------------

_installed = False
# Only a receiving client (the agent's media watchdog) asks when media last arrived; the
# server's ingress does not pay for the stamp on every publisher packet.
_stamp_receive_times = False
_original_datagram_received = aioice.ice.StunProtocol.datagram_received


def install(*, receive_times: bool = False) -> None:
    """Check the internals, then install the datagram guard and our consent checks.
    `receive_times`: keep when each connection last received media (`last_received_at`).

    Idempotent; the server and the classroom agent both call it.
    """
    global _installed, _stamp_receive_times
    _stamp_receive_times = _stamp_receive_times or receive_times
    if _installed:
        return
    check()
    aioice.ice.StunProtocol.datagram_received = _guarded_datagram_received  # type: ignore[method-assign]
    aioice.ice.Connection.query_consent = _query_consent  # type: ignore[method-assign]
    _installed = True


def _drop(reason: str) -> None:
    DATAGRAM_DROPS[reason] += 1


def _expected_source(protocol: Any, addr: tuple[Any, ...]) -> bool:
    """DTLS and media come only from an address ICE knows.

    That is the selected pair, or any pair on the connection's check list: a remote
    candidate from the peer's SDP or a peer-reflexive one learnt from an authenticated
    check. Chromium may keep sending on another valid pair than the one we nominated
    (dropping those packets stalled a master console's media), while a stranger's
    address is on no list at all.
    """
    connection = protocol.receiver
    pair = connection._nominated.get(protocol.local_candidate.component)
    if pair is not None and pair.protocol is protocol and pair.remote_addr == addr:
        return True
    return any(p.protocol is protocol and p.remote_addr == addr for p in connection._check_list)


def _guarded_datagram_received(self: Any, data: bytes | str, addr: tuple[Any, ...]) -> None:
    if not isinstance(data, bytes) or not data:
        _drop("empty")
        return
    size = len(data)
    if size > MAX_DATAGRAM:
        _drop("oversized")
        return
    first = data[0]
    addr2 = (addr[0], addr[1])
    if first < 2:  # STUN (RFC 7983): aioice authenticates what it answers
        try:
            aioice.stun.parse_message(data)
        except ValueError:
            _drop("bad_stun")
            return
    elif 19 < first < 64:  # DTLS
        if not _expected_source(self, addr2):
            _drop("wrong_source")
            return
    elif 127 < first < 192:  # RTP / RTCP
        rtcp = size >= 2 and 192 <= data[1] <= 223
        if size < (MIN_SRTCP if rtcp else MIN_SRTP):
            _drop("short_rtp")
            return
        if not _expected_source(self, addr2):
            _drop("wrong_source")
            return
        if _stamp_receive_times:
            now = time.monotonic()
            _LAST_RECEIVED[self.receiver] = now
            tap = _ARRIVAL_TAPS.get(self.receiver) if not rtcp else None
            if tap is not None:
                try:
                    tap(data, now)
                except Exception:
                    HANDLER_ERRORS["arrivals"] += 1
                    log.exception("arrival tap failed; the packet goes on")
    else:
        _drop("unknown")
        return
    try:
        _original_datagram_received(self, data, addr)
    except Exception:
        _drop("rejected")
        log.debug("datagram from %s rejected", addr2, exc_info=True)


async def _query_consent(self: Any) -> None:
    """Consent freshness (RFC 7675) that survives long round trips.

    Each check retransmits with back-off instead of waiting 0.5 s once; consent is lost
    only when no check has been answered for CONSENT_TIMEOUT_S.
    """
    assert self.remote_password is not None
    loop = asyncio.get_running_loop()
    last_ok = loop.time()
    while True:
        await asyncio.sleep(CONSENT_INTERVAL_S * (0.8 + 0.4 * random.random()))
        for pair in list(self._nominated.values()):
            request = self.build_request(pair, nominate=False)
            try:
                await pair.protocol.request(
                    request,
                    pair.remote_addr,
                    integrity_key=self.remote_password.encode("utf8"),
                    retransmissions=CONSENT_RETRANSMISSIONS,
                )
                last_ok = loop.time()
            except aioice.stun.TransactionError:
                pass
        if loop.time() - last_ok > CONSENT_TIMEOUT_S:
            log.info("ICE consent expired: no answer for %.0f s", CONSENT_TIMEOUT_S)
            self._query_consent_task = None
            await self.close()
            return


# -- host candidates -------------------------------------------------------------------

_original_host_addresses = aioice.ice.get_host_addresses


def use_host_addresses(addresses: Sequence[str]) -> None:
    """Offer exactly these addresses as ICE host candidates (empty: aioice's discovery).

    aioice leaves 127.0.0.1 out of its host candidates; a server, agent or test that
    runs on loopback (or must use one chosen interface) names its addresses here.
    """
    chosen = list(addresses)
    if not chosen:
        aioice.ice.get_host_addresses = _original_host_addresses
        return

    def fixed(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = fixed


# -- a fixed UDP port range -------------------------------------------------------------

_original_component_candidates = aioice.ice.Connection.get_component_candidates
_port_range: tuple[int, int] | None = None
_next_port = 0


def use_port_range(low: int, high: int) -> None:
    """Bind every host candidate within [low, high] (a firewall opens just that range).

    aioice binds port 0; for a connection with no STUN or TURN server (the SFU's own)
    host candidates are gathered here instead, each on the next free port of the range.
    """
    global _port_range, _next_port
    if not 0 < low <= high < 65536:
        raise ValueError(f"not a UDP port range: {low}-{high}")
    _port_range = (low, high)
    _next_port = low
    aioice.ice.Connection.get_component_candidates = _ranged_component_candidates  # type: ignore[method-assign]


async def _bind_in_range(connection: Any, address: str) -> Any:
    global _next_port
    assert _port_range is not None
    low, high = _port_range
    loop = asyncio.get_running_loop()
    for _ in range(high - low + 1):
        port = _next_port
        _next_port = low if port >= high else port + 1
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(connection), local_addr=(address, port)
            )
            return protocol
        except OSError:
            continue
    raise OSError(f"no free UDP port in {low}-{high} on {address}")


async def _ranged_component_candidates(
    self: Any, component: int, addresses: list[str], timeout: int = 5
) -> list[Any]:
    if self.stun_server or self.turn_server:
        return await _original_component_candidates(self, component, addresses, timeout)
    candidates = []
    for address in addresses:
        try:
            protocol = await _bind_in_range(self, address)
        except OSError as exc:
            log.warning("ICE: %s", exc)
            continue
        host, port = protocol.transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = aioice.Candidate(
            foundation=aioice.ice.candidate_foundation("host", "udp", host),
            component=component,
            transport="udp",
            priority=aioice.ice.candidate_priority(component, "host"),
            host=host,
            port=port,
            type="host",
        )
        self._protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    return candidates


# -- DTLS / SRTP / ICE ------------------------------------------------------------------


def dtls_of(transceiver: RTCRtpTransceiver) -> RTCDtlsTransport:
    return transceiver.receiver.transport


def last_received_at(pc: RTCPeerConnection) -> float | None:
    """When `pc` last received anything from its peer (time.monotonic()), or None.

    A peer that keeps sending RTCP sender reports is reachable even when no media
    arrives (its publisher went quiet); only a path that carries nothing is dead.
    """
    stamps = [
        _LAST_RECEIVED.get(dtls_of(t).transport._connection)
        for t in pc.getTransceivers()
        if dtls_of(t) is not None
    ]
    known = [t for t in stamps if t is not None]
    return max(known) if known else None


def srtp_sessions(dtls: RTCDtlsTransport) -> tuple[Any, Any]:
    """(rx, tx) SRTP sessions; None before the DTLS handshake completes."""
    return dtls._rx_srtp, dtls._tx_srtp


def srtp_sender(
    session: Any, dtls: RTCDtlsTransport, on_error: Callable[[], None]
) -> Callable[[bytes], None] | None:
    """Protect an RTP packet with `session` and send it on `dtls`'s nominated pair, in one
    call; None while there is no pair.

    libsrtp's protect on the session's own context (the same bytes as pylibsrtp's
    `protect`, without its per-call allocation of a length cell and a buffer slice:
    about a sixth of protecting a 1.2 kB packet at 150 subscribers, valgrind 32.1k ->
    27.2k instructions) and the datagram transport's `sendto`, without the Python
    calls between them (a DownTrack calls this once per packet per subscriber: two
    calls fewer is a few per cent of the fan-out's cost). While the asyncio transport
    has nothing queued, the datagram goes straight to its socket, as its own `sendto`
    sends it; otherwise, on any socket error (a full buffer, a closed socket), and for
    a transport that is not a plain asyncio datagram transport (a TURN relay), the
    transport's `sendto` takes it and queues it or reports the error as it always did.
    A failure before the send (a packet too long, an SRTP error) drops this packet and
    calls `on_error`.
    """
    nominated = _nominated(dtls)
    if nominated is None:
        return None
    transport, addr = nominated  # asyncio's transport, or a TURN relay's
    transport_sendto = transport.sendto
    ffi, lib = pylibsrtp._binding.ffi, pylibsrtp._binding.lib
    buffer = ffi.new("char[]", SRTP_BUFFER)
    view = ffi.buffer(buffer)
    out = memoryview(view)  # copied into and sent from, without new bytes
    length = ffi.new("int *")
    context = session._srtp[0]
    protect = lib.srtp_protect
    limit = SRTP_BUFFER - pylibsrtp.SRTP_MAX_TRAILER_LEN
    check_status = pylibsrtp._srtp_assert
    direct = (
        isinstance(transport, _SelectorDatagramTransport)
        and transport._sock is not None
        and transport.get_extra_info("peername") is None
    )
    sock_sendto = transport._sock.sendto if direct else transport_sendto

    def send_rtp(packet: bytes, _session: Any = session) -> None:
        try:
            size = len(packet)
            if size > limit:
                raise ValueError("packet is too long")
            out[:size] = packet  # a memoryview's copy: half ffi.memmove's cost
            length[0] = size
            status = protect(context, buffer, length)
            if status:
                check_status(status)
            if direct and not transport._buffer:
                try:
                    sock_sendto(out[: length[0]], addr)  # sent before the buffer is reused
                    return
                except OSError:
                    pass
            transport_sendto(view[0 : length[0]], addr)  # bytes: it may queue them
        except Exception:
            on_error()

    return send_rtp


def _nominated(dtls: RTCDtlsTransport) -> tuple[Any, Any] | None:
    """(datagram transport, remote address) of the nominated ICE pair, or None."""
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None or pair.protocol.transport is None:
        return None
    return pair.protocol.transport, pair.remote_addr


def selected_pair(dtls: RTCDtlsTransport) -> tuple[Callable[[bytes, Any], None], Any] | None:
    """(sendto, remote address) of the nominated ICE pair, or None."""
    nominated = _nominated(dtls)
    return None if nominated is None else (nominated[0].sendto, nominated[1])


def hook_ingress(
    dtls: RTCDtlsTransport,
    *,
    on_srtp: Callable[[bytes], bool],
    on_rtp: Callable[[bytes], None],
    on_rtcp: Callable[[bytes], None],
) -> None:
    """Take a publisher's packets from the socket callback and from aiortc's handlers.

    `on_srtp(datagram)` sees each SRTP datagram first, in the socket callback (no
    queue, no task switch) and returns True when it consumed it. Whatever it leaves
    goes through aiortc's DTLS loop to `on_rtp` / `on_rtcp` (decrypted).
    """
    connection = dtls.transport._connection
    queued = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        if 127 < data[0] < 192 and not 192 <= data[1] <= 223 and on_srtp(data):
            return
        queued(data, component)

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        try:
            on_rtp(data)
        except Exception:
            HANDLER_ERRORS["rtp"] += 1
            log.exception("RTP handler failed; packet dropped")

    async def handle_rtcp_data(data: bytes) -> None:
        try:
            on_rtcp(data)
        except Exception:
            HANDLER_ERRORS["rtcp"] += 1
            log.exception("RTCP handler failed; packet dropped")

    connection.data_received = data_received  # type: ignore[method-assign]
    dtls._handle_rtp_data = handle_rtp_data  # type: ignore[method-assign]
    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]


def harden_rtcp(dtls: RTCDtlsTransport) -> None:
    """Make an exception in any RTCP recipient drop that packet, not the transport."""
    original = dtls._handle_rtcp_data
    if getattr(original, "_tongke_hardened", False):
        return

    async def handle_rtcp_data(data: bytes) -> None:
        try:
            await original(data)
        except Exception:
            HANDLER_ERRORS["rtcp"] += 1
            log.exception("RTCP handler failed; packet dropped")

    handle_rtcp_data._tongke_hardened = True  # type: ignore[attr-defined]
    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]


def tap_rtcp(
    dtls: RTCDtlsTransport,
    on_data: Callable[[bytes], bool],
    early: Callable[[bytes], bool] | None = None,
) -> None:
    """Show `on_data` every decrypted compound RTCP packet before aiortc parses it; a
    packet it returns True for (it held nothing aiortc reads) stops there.

    aiortc's parser reads transport-cc feedback (RTPFB FMT 15) as if it were a NACK and
    keeps none of its bytes; the SFU's send-side estimate reads them here instead.
    Browsers and the classroom agent send that feedback alone, 10-20 times a second:
    parsed again by aiortc and handed to every sender, it cost a server serving 150
    such subscribers about a twentieth of its time (bench/fanout.py --feedback).

    `early(datagram)`, from the still encrypted datagram (SRTCP leaves a packet's first
    8 bytes clear), picks what is decrypted and shown `on_data` in the socket callback:
    such feedback then skips aiortc's queue and the task switch to its DTLS loop (about
    a tenth of the cost of a report at 150 subscribers). Anything else takes aiortc's
    way, through the same tap.
    """
    harden_rtcp(dtls)
    original = dtls._handle_rtcp_data

    def consumed(data: bytes) -> bool:
        try:
            return on_data(data)
        except Exception:
            HANDLER_ERRORS["rtcp"] += 1
            log.exception("RTCP tap failed; aiortc still handles the packet")
            return False

    async def handle_rtcp_data(data: bytes) -> None:
        if not consumed(data):
            await original(data)

    handle_rtcp_data._tongke_hardened = True  # type: ignore[attr-defined]
    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]
    if early is None:
        return

    connection = dtls.transport._connection
    queued = connection.data_received
    pending: set[asyncio.Future[None]] = set()

    def data_received(data: bytes, component: int) -> None:
        rx = dtls._rx_srtp
        if rx is None or not early(data):
            queued(data, component)
            return
        try:
            plain = rx.unprotect_rtcp(data)
        except pylibsrtp.Error:
            _drop("bad_srtcp")  # as aiortc would: a forgery or a replay changes nothing
            return
        if consumed(plain):
            return
        # Feedback first, then more (not what browsers send): aiortc reads the rest.
        task = asyncio.ensure_future(original(plain))
        pending.add(task)
        task.add_done_callback(pending.discard)

    connection.data_received = data_received  # type: ignore[method-assign]


def tap_arrivals(dtls: RTCDtlsTransport, on_packet: Callable[[bytes, float], None]) -> None:
    """Show `on_packet(datagram, time.monotonic())` each SRTP packet (not SRTCP) the
    transport's ICE connection accepts, in the socket callback: before aiortc's DTLS
    queue, so the time is as near the packet's arrival as Python gets. The header is
    clear under SRTP; the payload is still encrypted. Only where `install` was told to
    keep receive times (the classroom agent)."""
    if not _stamp_receive_times:
        raise RuntimeError("arrival taps need install(receive_times=True)")
    _ARRIVAL_TAPS[dtls.transport._connection] = on_packet


async def send_rtcp(dtls: RTCDtlsTransport, packet: bytes) -> None:
    """Send one RTCP packet aiortc cannot build (transport-cc feedback), protected as
    SRTCP; ConnectionError once the transport is closed."""
    await dtls._send_rtp(packet)


def hold_rtcp(dtls: RTCDtlsTransport) -> Callable[[], None]:
    """Drop every RTCP packet this transport sends until the returned function is
    called: a receiver whose way back is not up yet (an impairment for tests and
    benchmarks: receiver reports, NACKs and transport-cc feedback all stay home)."""
    send = dtls._send_rtp
    shut = [True]

    async def held(data: bytes) -> None:
        if shut[0] and aiortc.rtp.is_rtcp(data):  # as _send_rtp itself tells them apart
            return
        await send(data)

    def release() -> None:
        shut[0] = False

    dtls._send_rtp = held  # type: ignore[method-assign]
    return release


def disable_receiver(transceiver: RTCRtpTransceiver) -> None:
    """Never start aiortc's receiver: no jitter buffer, no decoder thread."""
    transceiver.receiver.receive = _no_receive  # type: ignore[method-assign]


async def _no_receive(parameters: object) -> None:
    """Stands in for RTCRtpReceiver.receive."""


def take_over_sender(
    transceiver: RTCRtpTransceiver, start: Callable[[Any], Awaitable[None]]
) -> None:
    """Replace aiortc's sender start (which pulls and encodes a track) with `start`."""
    transceiver.sender.send = start  # type: ignore[method-assign,assignment]


def sender_ssrc(sender: RTCRtpSender) -> int:
    return int(sender._ssrc)


def register_rtcp_recipient(dtls: RTCDtlsTransport, recipient: Any, ssrc: int) -> None:
    """RTCP about `ssrc` (NACK, PLI, REMB, receiver reports) goes to `recipient`."""
    dtls._rtp_router.register_sender(recipient, ssrc)
    harden_rtcp(dtls)


def hook_sender_rtcp(sender: RTCRtpSender, on_packet: Callable[[Any], None]) -> None:
    """See every RTCP packet aiortc routes to `sender`, before aiortc handles it."""
    original = sender._handle_rtcp_packet

    async def handle_rtcp(packet: Any) -> None:
        on_packet(packet)
        await original(packet)

    sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]


# -- depacketizing (the server recorder) -------------------------------------------------

_DEPAYLOADERS: dict[str, Callable[[bytes], bytes]] = {
    "h264": aiortc.codecs.h264.h264_depayload,
    "vp8": aiortc.codecs.vpx.vp8_depayload,
}


def depayload(codec: str, payload: bytes) -> bytes:
    """One RTP payload as codec bytes: H.264 single NAL, STAP-A or FU-A to Annex B (a
    fragment that starts a NAL gets its start code and header), VP8 without its payload
    descriptor; Opus (and anything else) as it is. Raises ValueError on a malformed one."""
    depay = _DEPAYLOADERS.get(codec)
    if depay is None:
        return payload
    try:
        return depay(payload)
    except (IndexError, struct.error) as exc:
        raise ValueError(f"malformed {codec} payload: {exc}") from None


def hook_receiver_rtp(receiver: RTCRtpReceiver, on_packet: Callable[[Any], None]) -> None:
    """See every RTP packet (an `aiortc.rtp.RtpPacket`) aiortc routes to `receiver`,
    before its jitter buffer: what tests and benchmarks check of a received stream."""
    original = receiver._handle_rtp_packet

    async def handle_rtp(packet: Any, arrival_time_ms: int) -> None:
        on_packet(packet)
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle_rtp  # type: ignore[method-assign]


# -- the receiver's frame assembly -------------------------------------------------------


class FramesOut(Protocol):
    """What :func:`use_frame_buffer` hands the decoder: a frame's packets in order
    (``fec``: decode the lost packet before them from their FEC copy, see
    :func:`use_decoder`)."""

    packets: Sequence[Any]
    timestamp: int
    payload_type: int
    fec: bool


class FrameAssembler(Protocol):
    def add(self, packet: Any) -> tuple[bool, Sequence[FramesOut]]: ...

    def nacks(self) -> list[int]:
        """Sequence numbers to NACK now, oldest first (marked asked)."""
        ...

    def next_nack_at(self) -> float | None:
        """time.monotonic() when the next NACK falls due; None: none."""
        ...


class _NoNacks:
    """Stands where aiortc's receiver keeps its NackGenerator: the assembler NACKs."""

    def add(self, packet: Any) -> bool:
        return False


# One stream's NACKs go out at most this often, each carrying every number then due: a
# NACK per arriving packet (as aiortc sends) crowded a 256 kbit/s uplink with RTCP while
# a flood lost half the packets (2,892 NACK packets a minute against 470).
NACK_INTERVAL_S = 0.1


class _AssemblerInPlace:
    """Stands where aiortc's receiver keeps its JitterBuffer (same ``add`` call), but
    queues every frame the assembler completes for decoding, not one per packet, and
    sends the NACKs the assembler asks for (on packets and on a timer between them)."""

    def __init__(self, receiver: RTCRtpReceiver, assembler: FrameAssembler) -> None:
        self._receiver = receiver
        self._assembler = assembler
        self._ssrc: int | None = None
        self._nack_timer: asyncio.TimerHandle | None = None
        self._nack_timer_at = 0.0
        self._nacked_at = float("-inf")
        self._sending: set[asyncio.Task[None]] = set()

    def _nack_soon(self) -> None:
        """A packet arrived: NACK what is due now, or as soon as the interval allows."""
        at = self._assembler.next_nack_at()
        if at is None:  # nothing missing that may be asked for
            if self._nack_timer is not None:
                self._nack_timer.cancel()
                self._nack_timer = None
            return
        now = time.monotonic()
        due = max(now, at, self._nacked_at + NACK_INTERVAL_S)
        if due <= now:
            if self._nack_timer is not None:
                self._nack_timer.cancel()
            self._send_nacks()
        elif self._nack_timer is None or self._nack_timer_at > due:
            self._schedule(due)

    def _schedule(self, at: float) -> None:
        if self._nack_timer is not None:
            self._nack_timer.cancel()
        loop = asyncio.get_running_loop()
        self._nack_timer_at = at
        self._nack_timer = loop.call_later(max(0.0, at - time.monotonic()), self._send_nacks)

    def _send_nacks(self) -> None:
        self._nack_timer = None
        if self._ssrc is None or self._receiver.transport.state == "closed":
            return
        loop = asyncio.get_running_loop()
        lost = self._assembler.nacks()
        if lost:
            self._nacked_at = time.monotonic()
            # aiortc packs a NACK from differences to its first number: sorted, every
            # difference is positive across the 16-bit wrap too (as aiortc's own
            # generator sends them).
            task = loop.create_task(self._nack(self._ssrc, sorted(lost)))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        at = self._assembler.next_nack_at()
        if at is not None:
            self._schedule(max(at, self._nacked_at + NACK_INTERVAL_S))

    async def _nack(self, ssrc: int, lost: list[int]) -> None:
        try:
            await self._receiver._send_rtcp_nack(ssrc, lost)
        except Exception:
            HANDLER_ERRORS["nack"] += 1
            log.debug("NACK not sent", exc_info=True)

    def add(self, packet: Any) -> tuple[bool, None]:
        try:
            ask_keyframe, frames = self._assembler.add(packet)
        except Exception:
            # Raised out of aiortc's RTP handler it would end the DTLS transport.
            HANDLER_ERRORS["frame_buffer"] += 1
            log.exception("frame buffer failed; packet dropped")
            return False, None
        receiver = self._receiver
        if frames and getattr(receiver, "_RTCRtpReceiver__decoder_thread", None) is not None:
            codecs = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
            mapper = receiver._RTCRtpReceiver__timestamp_mapper  # type: ignore[attr-defined]
            queue = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
            for frame in frames:
                codec = codecs.get(frame.payload_type)
                if codec is None:
                    continue
                data = b"".join(p._data for p in frame.packets)
                jitter_frame = JitterFrame(data=data, timestamp=mapper.map(frame.timestamp))
                if frame.fec:
                    jitter_frame.fec = True  # type: ignore[attr-defined]
                queue.put((codec, jitter_frame))
        try:
            self._ssrc = packet.ssrc
            self._nack_soon()
        except Exception:
            HANDLER_ERRORS["nack"] += 1
            log.exception("NACKs failed")
        return ask_keyframe, None


def use_frame_buffer(receiver: RTCRtpReceiver, make: Callable[[], FrameAssembler]) -> bool:
    """Assemble `receiver`'s frames with ``make()`` instead of aiortc's JitterBuffer
    (False: it already does), and NACK what the assembler asks for instead of aiortc.

    aiortc calls ``add(packet)`` with each depayloaded packet (``packet._data``) and
    sends a PLI when the first value returned is true."""
    if isinstance(getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None), _AssemblerInPlace):
        return False
    assembler = make()
    receiver._RTCRtpReceiver__jitter_buffer = _AssemblerInPlace(receiver, assembler)  # type: ignore[attr-defined]
    if receiver._RTCRtpReceiver__nack_generator is not None:  # type: ignore[attr-defined]
        receiver._RTCRtpReceiver__nack_generator = _NoNacks()  # type: ignore[attr-defined]
    return True


def frame_assembler(receiver: RTCRtpReceiver) -> Any:
    """The assembler :func:`use_frame_buffer` put in place (None: aiortc's own buffer)."""
    in_place = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    return in_place._assembler if isinstance(in_place, _AssemblerInPlace) else None


def receiver_codec(receiver: RTCRtpReceiver, payload_type: int) -> str | None:
    """The lower-case codec name `receiver` negotiated for `payload_type` (None: unknown)."""
    codec = receiver._RTCRtpReceiver__codecs.get(payload_type)  # type: ignore[attr-defined]
    return None if codec is None else str(codec.name).lower()


# -- the receiver's decoders -------------------------------------------------------------

_decoders: dict[str, Callable[[], Any]] = {}


def use_decoder(codec: str, make: Callable[[], Any]) -> None:
    """Decode `codec` (lower-case name) with ``make()`` in every receiver of this process
    from now on, instead of aiortc's decoder: aiortc's decoder thread calls
    ``aiortc.rtcrtpreceiver.get_decoder`` for each stream, which this replaces once."""
    receiver_module = aiortc.rtcrtpreceiver
    _decoders[codec] = make
    if getattr(receiver_module.get_decoder, "_tongke", False):
        return
    original = receiver_module.get_decoder

    def get_decoder(codec_params: Any) -> Any:
        make_one = _decoders.get(str(codec_params.name).lower())
        return make_one() if make_one is not None else original(codec_params)

    get_decoder._tongke = True  # type: ignore[attr-defined]
    receiver_module.get_decoder = get_decoder  # type: ignore[assignment]
