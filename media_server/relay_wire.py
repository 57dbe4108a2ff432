"""The server-to-server relay's datagrams and how nodes prove who they are.

A relay datagram is a 12-byte header, a body and an 8-byte tag:

    0x7E | kind | link id (u32) | stream (u16) | sent (u32, wall-clock microseconds) | body | tag

0x7E is neither RTP/RTCP (0x80-0xBF) nor STUN (0-3) nor DTLS (20-63), so a relay
datagram is never mistaken for a client's. The tag is a keyed BLAKE2b of header and
body with the link's key; the key is derived from the secret every node of a service
shares (the one that signs room tokens) and the two nonces of the link's handshake, so a
node that does not hold the secret can neither open a link nor inject into one.
`sent` lets the receiver measure the relay's one-way delay (meaningful when the two
clocks agree, as on one host or NTP-synchronised servers). For an RTP datagram it is the
time the exporting node took the packet in (its UpTrack's ingress), not the time it was
sealed, so the delay includes everything the exporter did before relaying it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import time

MAGIC = 0x7E
HEADER = struct.Struct("!BBIHI")
TAG_BYTES = 8
OVERHEAD = HEADER.size + TAG_BYTES

RTP = 1  # body: one RTP packet of an exported stream (sender -> receiver)
SR = 2  # body: NTP (u64) and RTP (u32) time of the stream's sender report
PLI = 3  # body: empty; the receiver asks the stream's sender for a keyframe
NACK = 4  # body: the stream's lost sequence numbers (u16 each)
KINDS = frozenset({RTP, SR, PLI, NACK})

SR_BODY = struct.Struct("!QI")
MAX_NACKS = 256

# A handshake older than this is refused (a replayed hello).
HELLO_MAX_AGE_S = 60.0
NODE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _mac(secret: str, *parts: object) -> str:
    text = "|".join(str(p) for p in parts)
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def hello_mac(secret: str, node: str, room: str, sent_at: float, nonce: str, port: int) -> str:
    """What an edge signs when it asks an origin for a link (holding the secret)."""
    return _mac(secret, "tongke-relay-hello", node, room, repr(sent_at), nonce, port)


def welcome_mac(secret: str, node: str, link: int, edge_nonce: str, nonce: str, port: int) -> str:
    """What the origin signs back: the edge knows it reached a node of its own service."""
    return _mac(secret, "tongke-relay-welcome", node, link, edge_nonce, nonce, port)


def link_key(secret: str, link: int, edge_nonce: str, origin_nonce: str) -> bytes:
    return bytes.fromhex(_mac(secret, "tongke-relay-key", link, edge_nonce, origin_nonce))[:32]


def now_us() -> int:
    return time.time_ns() // 1000 & 0xFFFFFFFF


def seal(
    key: bytes, kind: int, link: int, stream: int, body: bytes, sent_us: int | None = None
) -> bytes:
    """A relay datagram; `sent_us` (u32 wall-clock microseconds) defaults to now."""
    sent = now_us() if sent_us is None else sent_us & 0xFFFFFFFF
    message = HEADER.pack(MAGIC, kind, link, stream, sent) + body
    return message + hashlib.blake2b(message, key=key, digest_size=TAG_BYTES).digest()


def link_of(data: bytes) -> int | None:
    """The link id a datagram claims, or None when it is not a relay datagram."""
    if len(data) < OVERHEAD or data[0] != MAGIC:
        return None
    return int.from_bytes(data[2:6], "big")


def authentic(key: bytes, data: bytes) -> bool:
    tag = hashlib.blake2b(data[:-TAG_BYTES], key=key, digest_size=TAG_BYTES).digest()
    return hmac.compare_digest(tag, data[-TAG_BYTES:])


def delay_us(sent_us: int, at_us: int | None = None) -> int:
    """Microseconds from `sent_us` (the header's send time) to `at_us` (default now),
    across the u32 wrap."""
    return ((now_us() if at_us is None else at_us) - sent_us) & 0xFFFFFFFF


def pack_nacks(seqs: list[int]) -> list[bytes]:
    """Lost sequence numbers as NACK bodies of at most MAX_NACKS each."""
    return [
        struct.pack(f"!{len(chunk)}H", *chunk)
        for chunk in (seqs[i : i + MAX_NACKS] for i in range(0, len(seqs), MAX_NACKS))
    ]


def unpack_nacks(body: bytes) -> tuple[int, ...]:
    if len(body) % 2 or len(body) > 2 * MAX_NACKS:
        raise ValueError("a NACK body is whole u16 sequence numbers, at most 256")
    return struct.unpack(f"!{len(body) // 2}H", body)
