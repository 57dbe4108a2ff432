"""The SRTP wire to one peer: a PacketSink that protects and sends synchronously.

`RTCDtlsTransport._send_rtp` is a coroutine that goes through two more awaits before
`sendto`; on the fan-out path that costs more than the send itself. A Wire protects
with the transport's SRTP session and writes straight to the nominated ICE pair's
datagram transport. It protects through `rtc_internals.srtp_protector`: pylibsrtp's own
`protect` allocates on every call, once per packet per subscriber.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiortc import RTCDtlsTransport

from tongke import rtc_internals


class Wire:
    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls
        self._protect: Callable[[bytes], bytes] | None = None
        self._protect_rtcp: Callable[[bytes], bytes] | None = None
        self._sendto: Callable[[bytes, Any], None] | None = None
        self._addr: Any = None
        self.errors = 0

    def _refresh(self) -> bool:
        if self.dtls.state != "connected":
            self._sendto = None
            return False
        tx = rtc_internals.srtp_sessions(self.dtls)[1]
        pair = rtc_internals.selected_pair(self.dtls)
        if tx is None or pair is None:
            self._sendto = None
            return False
        self._protect = rtc_internals.srtp_protector(tx)
        self._protect_rtcp = tx.protect_rtcp
        self._sendto, self._addr = pair
        return True

    @property
    def ready(self) -> bool:
        return self._sendto is not None or self._refresh()

    def send_rtp(self, packet: bytes) -> None:
        sendto = self._sendto
        if sendto is None:
            if not self._refresh():
                return
            sendto = self._sendto
            assert sendto is not None and self._protect is not None
        try:
            sendto(self._protect(packet), self._addr)  # type: ignore[misc]
        except Exception:
            # A closed socket or an SRTP error drops this packet only; the transport's
            # state change will detach the subscriber.
            self.errors += 1
            self._sendto = None

    def send_rtcp(self, packet: bytes) -> None:
        if not self.ready or self._protect_rtcp is None or self._sendto is None:
            return
        try:
            self._sendto(self._protect_rtcp(packet), self._addr)
        except Exception:
            self.errors += 1
            self._sendto = None

    def invalidate(self) -> None:
        self._sendto = None
