"""Where a subscription's packets go: the small interface every receiver implements.

A DownTrack rewrites packets for one receiver and hands them to a PacketSink. The SRTP
wire to a subscriber is one sink (`wire.Wire`); a recorder's file writer, a relay to
another node, and a test's capturing sink are others. Sinks are synchronous and must
not block: they are called from the forwarding hot path.
"""

from __future__ import annotations

from typing import Protocol


class PacketSink(Protocol):
    def send_rtp(self, packet: bytes) -> None:
        """One rewritten RTP packet (plain, unencrypted)."""

    def send_rtcp(self, packet: bytes) -> None:
        """One compound RTCP packet (sender reports) about what `send_rtp` carried."""


class MemorySink:
    """Keeps what it is sent, in order: for tests and in-process consumers."""

    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, packet: bytes) -> None:
        self.rtp.append(packet)

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp.append(packet)
