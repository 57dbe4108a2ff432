"""The SRTP wire's sender: libsrtp's own bytes, without pylibsrtp's per-call costs."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import pylibsrtp
import pytest
from pylibsrtp import Policy, Session

from tongke import rtc_internals

KEY = bytes(range(30))


def sessions() -> tuple[Session, Session]:
    """Two outbound sessions with one key: what one protects, the other must too."""
    return tuple(  # type: ignore[return-value]
        Session(policy=Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND)) for _ in range(2)
    )


def rtp(seq: int, size: int) -> bytes:
    return bytes([0x80, 96]) + seq.to_bytes(2, "big") + bytes(8) + bytes([seq & 0xFF]) * size


async def nominated(transport: Any) -> tuple[Any, socket.socket]:
    """A DTLS transport's stand-in whose nominated pair sends to a local socket."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2)
    pair = SimpleNamespace(
        protocol=SimpleNamespace(transport=transport), remote_addr=peer.getsockname()
    )
    dtls = SimpleNamespace(
        transport=SimpleNamespace(_connection=SimpleNamespace(_nominated={1: pair}))
    )
    return dtls, peer


async def test_the_sender_sends_what_pylibsrtp_protects() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    dtls, peer = await nominated(transport)
    reference, ours = sessions()
    errors: list[int] = []
    send = rtc_internals.srtp_sender(ours, dtls, lambda: errors.append(1))  # type: ignore[arg-type]
    assert send is not None
    try:
        for seq, size in enumerate([0, 1, 100, 1150, 1300, 1, 999]):
            send(rtp(seq, size))
            assert peer.recv(2000) == reference.protect(rtp(seq, size))
        # The session's own protect still works beside it (its buffer is not ours).
        assert ours.protect(rtp(50, 10)) == reference.protect(rtp(50, 10))
        # A packet too long, as pylibsrtp refuses it, is dropped and reported; the next
        # one goes.
        with pytest.raises(ValueError):
            reference.protect(rtp(9, 1500))
        send(rtp(9, 1500))
        assert errors == [1]
        send(rtp(10, 10))
        assert peer.recv(2000) == reference.protect(rtp(10, 10))
        # So is what libsrtp refuses: the same index again, a replay.
        with pytest.raises(pylibsrtp.Error):
            reference.protect(rtp(10, 10))
        send(rtp(10, 10))
        assert errors == [1, 1]
        send(rtp(11, 10))
        assert peer.recv(2000) == reference.protect(rtp(11, 10))
    finally:
        transport.close()
        peer.close()


async def test_the_sender_leaves_another_transport_its_own_sendto() -> None:
    """A TURN relay's transport (not a plain asyncio one) sends what it is given."""
    sent: list[tuple[bytes, Any]] = []
    relay = SimpleNamespace(sendto=lambda data, addr: sent.append((bytes(data), addr)))
    dtls, peer = await nominated(relay)
    reference, ours = sessions()
    send = rtc_internals.srtp_sender(ours, dtls, lambda: None)  # type: ignore[arg-type]
    assert send is not None
    send(rtp(1, 100))
    assert sent == [(reference.protect(rtp(1, 100)), peer.getsockname())]
    peer.close()
