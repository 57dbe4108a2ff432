"""Which local addresses ICE offers as host candidates.

aioice leaves 127.0.0.1 out of its host candidates; a server, agent or test that runs on
loopback (or must use one chosen interface) names its addresses here instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import aioice.ice

_original = aioice.ice.get_host_addresses


def use_host_addresses(addresses: Sequence[str]) -> None:
    """Offer exactly these addresses (empty: restore aioice's own discovery)."""
    chosen = list(addresses)
    if not chosen:
        aioice.ice.get_host_addresses = _original
        return

    def fixed(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = fixed
