"""The SRTP wire to one peer: a PacketSink that protects and sends synchronously.

`RTCDtlsTransport._send_rtp` is a coroutine that goes through two more awaits before
`sendto`; on the fan-out path that costs more than the send itself. A Wire protects
with the transport's SRTP session and writes straight to the nominated ICE pair's
datagram transport. It protects and sends through `rtc_internals.srtp_sender`: one call
per packet, without pylibsrtp's per-call allocations (`protect` allocates on every
call, once per packet per subscriber) or the calls between protecting and the socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiortc import RTCDtlsTransport

from tongke import rtc_internals


class Wire:
    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls
        self._protect_rtcp: Callable[[bytes], bytes] | None = None
        self._sendto: Callable[[bytes, Any], None] | None = None
        self._addr: Any = None
        self.errors = 0
        # What each packet is handed to: once the transport is ready, the sender itself
        # (no call through this object per packet); before, and after an error, the
        # method that looks for the transport again.
        self.send_rtp: Callable[[bytes], None] = self._send_rtp_unready

    def _refresh(self) -> bool:
        if self.dtls.state != "connected":
            self.invalidate()
            return False
        tx = rtc_internals.srtp_sessions(self.dtls)[1]
        pair = rtc_internals.selected_pair(self.dtls)
        send = rtc_internals.srtp_sender(tx, self.dtls, self._failed) if tx is not None else None
        if pair is None or send is None:
            self.invalidate()
            return False
        self._protect_rtcp = tx.protect_rtcp
        self._sendto, self._addr = pair
        self.send_rtp = send
        return True

    @property
    def ready(self) -> bool:
        return self._sendto is not None or self._refresh()

    def _send_rtp_unready(self, packet: bytes) -> None:
        if self._refresh():
            self.send_rtp(packet)

    def _failed(self) -> None:
        # An SRTP error drops this packet only; the next one looks for the transport
        # again, and the transport's state change will detach the subscriber.
        self.errors += 1
        self.invalidate()

    def send_rtcp(self, packet: bytes) -> None:
        if not self.ready or self._protect_rtcp is None or self._sendto is None:
            return
        try:
            self._sendto(self._protect_rtcp(packet), self._addr)
        except Exception:
            self.errors += 1
            self.invalidate()

    def invalidate(self) -> None:
        self._sendto = None
        self.send_rtp = self._send_rtp_unready
