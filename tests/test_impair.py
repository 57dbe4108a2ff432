"""The user-space impaired link the rural-link tests and benchmark put between peers.

Counts, not timings: the impairment takes the clock as an argument, and the socket tests
count datagrams against the impairment's own counters.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.impair import (
    Conditions,
    GilbertElliott,
    Impairment,
    LinkSpec,
    NetnsLink,
    UdpRelay,
    netns_available,
)
from tests.media import wait_for


def run(
    impairment: Impairment, n: int, size: int = 1000, spacing: float = 0.01
) -> list[float | None]:
    return [impairment.admit(size, i * spacing) for i in range(n)]


def test_bernoulli_loss_drops_about_the_share_asked_for_and_repeats_with_the_seed() -> None:
    first = run(Impairment(Conditions(loss=0.05), seed=3), 20_000)
    again = run(Impairment(Conditions(loss=0.05), seed=3), 20_000)
    lost = first.count(None)
    assert first == again
    assert 900 <= lost <= 1100


def test_gilbert_elliott_loss_comes_in_bursts() -> None:
    ge = GilbertElliott.bursts(mean_loss=0.05, burst_packets=5)
    assert ge.mean_loss == pytest.approx(0.05)
    fates = run(Impairment(Conditions(burst=ge), seed=1), 50_000)
    bursts, length = [], 0
    for fate in fates:
        if fate is None:
            length += 1
        elif length:
            bursts.append(length)
            length = 0
    assert 0.04 <= fates.count(None) / len(fates) <= 0.06
    assert 4.0 <= sum(bursts) / len(bursts) <= 6.0
    # The same mean loss spread independently has bursts of ~1.05 packets.
    assert max(bursts) >= 15


def test_rate_cap_queues_then_drops_at_the_tail() -> None:
    link = Impairment(Conditions(rate_bps=80_000, queue_bytes=10_000, delay_ms=50))
    fates = [link.admit(1000, 0.0) for _ in range(30)]
    delivered = [f for f in fates if f is not None]
    # 10 packets fit the queue; each takes 1000*8/80000 = 0.1 s on the wire.
    assert len(delivered) == 10 and fates[10:] == [None] * 20
    assert delivered == pytest.approx([0.05 + 0.1 * (i + 1) for i in range(10)])
    assert link.counters.dropped == 20 and link.counters.lost == 0
    # Once the queue drains, packets pass again.
    assert link.admit(1000, 1.0) == pytest.approx(1.15)


def test_jitter_delays_unevenly_but_never_reorders() -> None:
    fates = run(Impairment(Conditions(delay_ms=100, jitter_ms=40), seed=2), 500, spacing=0.005)
    times = [f for f in fates if f is not None]
    assert len(times) == 500
    assert times == sorted(times)
    delays = [t - i * 0.005 for i, t in enumerate(times)]
    assert min(delays) >= 0.1 and max(delays) <= 0.14 + 0.005 * 8
    assert len({round(d, 4) for d in delays}) > 100


def test_conditions_change_at_run_time() -> None:
    link = Impairment(Conditions(rate_bps=5_000_000, queue_bytes=10**6))
    fast = run(link, 100, size=1250, spacing=0.0)
    link.set_conditions(Conditions(rate_bps=1_000_000, queue_bytes=10**6))
    slow = [link.admit(1250, fast[-1]) for _ in range(100)]  # type: ignore[arg-type]
    assert fast[-1] == pytest.approx(100 * 1250 * 8 / 5e6)
    assert slow[-1] - fast[-1] == pytest.approx(100 * 1250 * 8 / 1e6)  # type: ignore[operator]


def test_bad_conditions_are_refused() -> None:
    with pytest.raises(ValueError, match="loss must be within"):
        Conditions(loss=1.5)
    with pytest.raises(ValueError, match="rate_bps must be positive"):
        Conditions(rate_bps=0)


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        assert self.transport is not None
        self.transport.sendto(data, addr)


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.changed = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)
        self.changed.set()


async def test_udp_relay_loses_exactly_what_its_impairment_says() -> None:
    loop = asyncio.get_running_loop()
    server_t, echo = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    relay = await UdpRelay(
        server_t.get_extra_info("sockname"),
        LinkSpec(up=Conditions(loss=0.3), down=Conditions(delay_ms=20)),
        seed=5,
    ).start()
    client_t, sink = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    try:
        for i in range(300):
            client_t.sendto(i.to_bytes(2, "big"), relay.address)
            await asyncio.sleep(0)  # let the relay read: socket buffers are finite
        up = relay.up.impairment.counters
        await wait_for(lambda: up.packets == 300)
        await wait_for(lambda: len(sink.received) == up.delivered and echo.received == up.delivered)
        assert up.packets == 300 and 60 <= up.lost <= 120
        # Order is kept and nothing is duplicated.
        numbers = [int.from_bytes(d, "big") for d in sink.received]
        assert numbers == sorted(set(numbers))
        relay.set_link(LinkSpec(up=Conditions(), down=Conditions(loss=1.0)))
        before = len(sink.received)
        for _ in range(50):
            client_t.sendto(b"x", relay.address)
        await wait_for(lambda: relay.down.impairment.counters.lost == 50)
        assert len(sink.received) == before
    finally:
        relay.close()
        client_t.close()
        server_t.close()


SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(200):
    s.sendto(b"%d" % i, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.001)  # a sender, not a flood: the TUN queue holds 500 packets
"""


async def test_a_namespace_reaches_the_host_only_through_the_impairment() -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    loop = asyncio.get_running_loop()
    link = await NetnsLink(
        "tk-impair-test", LinkSpec(up=Conditions(loss=0.5)), subnet=91, seed=4
    ).start()
    server_t, echo = await loop.create_datagram_endpoint(Echo, local_addr=(link.host_address, 0))
    try:
        port = server_t.get_extra_info("sockname")[1]
        proc = await asyncio.create_subprocess_exec(
            *link.exec_prefix, sys.executable, "-c", SENDER, link.host_address, str(port)
        )
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert link.up is not None
        up = link.up.impairment.counters
        await wait_for(lambda: up.packets >= 200 and echo.received == up.delivered)
        assert 70 <= up.lost <= 130
        # And nothing else leads out: the namespace has no other route to the host.
        direct = subprocess.run(
            [*link.exec_prefix, "ip", "route"], capture_output=True, text=True, check=True
        )
        assert direct.stdout.split()[:3] == ["default", "via", link.host_address]
    finally:
        server_t.close()
        link.close()
