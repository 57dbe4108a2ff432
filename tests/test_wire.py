"""The SRTP wire's protect: libsrtp's own bytes, without pylibsrtp's per-call costs."""

from __future__ import annotations

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


def test_the_protector_writes_what_pylibsrtp_writes() -> None:
    reference, ours = sessions()
    protect = rtc_internals.srtp_protector(ours)
    for seq, size in enumerate([0, 1, 100, 1150, 1300, 1, 999]):
        packet = rtp(seq, size)
        assert protect(packet) == reference.protect(packet)
    # The session's own protect still works beside it (its buffer is not ours).
    assert ours.protect(rtp(50, 10)) == reference.protect(rtp(50, 10))


def test_the_protector_refuses_what_pylibsrtp_refuses() -> None:
    reference, ours = sessions()
    protect = rtc_internals.srtp_protector(ours)
    too_long = rtp(1, 1500)
    with pytest.raises(ValueError):
        reference.protect(too_long)
    with pytest.raises(ValueError):
        protect(too_long)
    protect(rtp(2, 10))
    reference.protect(rtp(2, 10))
    with pytest.raises(pylibsrtp.Error) as theirs:
        reference.protect(rtp(2, 10))  # the same index again: a replay
    with pytest.raises(pylibsrtp.Error) as mine:
        protect(rtp(2, 10))
    assert str(mine.value) == str(theirs.value)
