"""A user-space impaired network link, for tests and benchmarks (this kernel has no netem).

Three layers, each usable alone:

* ``Impairment`` decides each packet's fate from ``Conditions``: Bernoulli or
  Gilbert-Elliott loss, a rate cap with a drop-tail queue, one-way delay and jitter. It
  is pure (no I/O, the caller passes the clock) and seeded, so tests count outcomes.
* ``UdpRelay`` relays datagrams between clients and one target address through an
  impairment per direction (a client sends to the relay as if it were the server).
* ``NetnsLink`` puts a client in its own network namespace whose only way out is a pair
  of TUN devices served by this process: every IP packet (ICE, DTLS/SRTP, the signalling
  WebSocket, TURN over TCP) crosses the impairment, and no SDP needs rewriting. The
  server listens on ``link.host_address``; the client runs under ``link.exec_prefix``.
  Needs root (``ip netns``); ``netns_available()`` says whether this machine allows it.

Conditions can be changed while traffic flows (``set_conditions``), e.g. for
5 -> 1 -> 5 Mbit/s steps.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import os
import random
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

# A queue of ~200 ms at 2 Mbit/s: what a DSL or 4G modem buffers in front of its uplink.
DEFAULT_QUEUE_BYTES = 50_000


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state burst loss: the link flips between a good and a bad state per packet.

    Mean burst length is ``1 / p_bad_to_good`` packets; the stationary loss is
    ``pi_bad * loss_bad + pi_good * loss_good`` with ``pi_bad = p_gb / (p_gb + p_bg)``.
    """

    p_good_to_bad: float
    p_bad_to_good: float
    loss_bad: float = 1.0
    loss_good: float = 0.0

    @classmethod
    def bursts(cls, mean_loss: float, burst_packets: float) -> GilbertElliott:
        """Losses in bursts of about ``burst_packets`` averaging ``mean_loss`` overall."""
        p_bg = 1.0 / burst_packets
        p_gb = mean_loss * p_bg / (1.0 - mean_loss)
        return cls(p_good_to_bad=p_gb, p_bad_to_good=p_bg)

    @property
    def mean_loss(self) -> float:
        pi_bad = self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good)
        return pi_bad * self.loss_bad + (1 - pi_bad) * self.loss_good


@dataclass(frozen=True)
class Conditions:
    """One direction of a link. ``rate_bps=None`` means no rate cap."""

    loss: float = 0.0
    burst: GilbertElliott | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_bps: float | None = None
    queue_bytes: int = DEFAULT_QUEUE_BYTES

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be within [0, 1], got {self.loss}")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay and jitter must not be negative")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise ValueError(f"rate_bps must be positive, got {self.rate_bps}")
        if self.queue_bytes <= 0:
            raise ValueError(f"queue_bytes must be positive, got {self.queue_bytes}")


@dataclass
class Counters:
    packets: int = 0
    bytes: int = 0
    lost: int = 0  # random (Bernoulli or Gilbert-Elliott) loss
    dropped: int = 0  # the rate cap's queue was full
    delivered: int = 0
    delivered_bytes: int = 0


class Impairment:
    """The fate of each packet of one direction; deterministic for a given seed and clock."""

    def __init__(self, conditions: Conditions | None = None, seed: int = 0) -> None:
        self.conditions = conditions or Conditions()
        self.counters = Counters()
        self._rng = random.Random(seed)
        self._bad = False
        self._busy_until = 0.0  # when the rate-capped wire finishes the queued bytes
        self._last_departure = 0.0

    def set_conditions(self, conditions: Conditions) -> None:
        """Change the link now; packets already queued keep their departure times."""
        self.conditions = conditions

    def backlog_bytes(self, now: float) -> float:
        rate = self.conditions.rate_bps
        if rate is None:
            return 0.0
        return max(0.0, self._busy_until - now) * rate / 8

    def admit(self, size: int, now: float) -> float | None:
        """The time (same clock as ``now``) a packet of ``size`` bytes arrives, or None."""
        c = self.conditions
        self.counters.packets += 1
        self.counters.bytes += size
        if self._lose(c):
            self.counters.lost += 1
            return None
        leave = now
        if c.rate_bps is not None:
            if self.backlog_bytes(now) + size > c.queue_bytes:
                self.counters.dropped += 1
                return None
            self._busy_until = max(now, self._busy_until) + size * 8 / c.rate_bps
            leave = self._busy_until
        arrive = leave + c.delay_ms / 1000
        if c.jitter_ms:
            arrive += self._rng.uniform(0, c.jitter_ms) / 1000
        # A link delays packets unevenly but does not reorder them.
        arrive = max(arrive, self._last_departure)
        self._last_departure = arrive
        self.counters.delivered += 1
        self.counters.delivered_bytes += size
        return arrive

    def _lose(self, c: Conditions) -> bool:
        if c.burst is not None:
            ge = c.burst
            flip = ge.p_bad_to_good if self._bad else ge.p_good_to_bad
            if self._rng.random() < flip:
                self._bad = not self._bad
            if self._rng.random() < (ge.loss_bad if self._bad else ge.loss_good):
                return True
        return c.loss > 0 and self._rng.random() < c.loss


class Direction:
    """An impairment that delivers packets on the event loop at their arrival times."""

    def __init__(
        self, deliver: Callable[[bytes], None], conditions: Conditions | None, seed: int
    ) -> None:
        self.impairment = Impairment(conditions, seed)
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()

    def send(self, packet: bytes) -> None:
        arrive = self.impairment.admit(len(packet), self._loop.time())
        if arrive is not None:
            self._loop.call_at(arrive, self._safe_deliver, packet)

    def _safe_deliver(self, packet: bytes) -> None:
        try:
            self._deliver(packet)
        except OSError:
            pass  # the far end went away; a real link would drop it too


@dataclass
class LinkSpec:
    """Both directions of a link: ``up`` is client -> server, ``down`` server -> client."""

    up: Conditions = field(default_factory=Conditions)
    down: Conditions = field(default_factory=Conditions)

    @classmethod
    def symmetric(
        cls,
        *,
        rate_bps: float | None = None,
        loss: float = 0.0,
        rtt_ms: float = 0.0,
        jitter_ms: float = 0.0,
        burst: GilbertElliott | None = None,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
    ) -> LinkSpec:
        one_way = Conditions(
            loss=loss,
            burst=burst,
            delay_ms=rtt_ms / 2,
            jitter_ms=jitter_ms,
            rate_bps=rate_bps,
            queue_bytes=queue_bytes,
        )
        return cls(up=one_way, down=replace(one_way))


# -- UDP relay ---------------------------------------------------------------------------


class _ClientSide(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay._from_client(data, addr)


class _ServerSide(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, client: tuple[str, int]) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.down.send_to(data, self.client)


class _AddressedDirection(Direction):
    def send_to(self, packet: bytes, addr: tuple[str, int]) -> None:
        arrive = self.impairment.admit(len(packet), self._loop.time())
        if arrive is not None:
            self._loop.call_at(arrive, self._deliver_to, packet, addr)

    def _deliver_to(self, packet: bytes, addr: tuple[str, int]) -> None:
        try:
            self._deliver(packet, addr)  # type: ignore[call-arg]
        except OSError:
            pass


class UdpRelay:
    """Datagrams from clients to ``target`` and back, impaired; one server-side socket
    per client address, as a NAT would keep one mapping per flow."""

    def __init__(self, target: tuple[str, int], link: LinkSpec | None = None, seed: int = 0):
        self.target = target
        self.link = link or LinkSpec()
        self.seed = seed
        self.address: tuple[str, int] = ("", 0)
        self._listen: asyncio.DatagramTransport | None = None
        self._flows: dict[tuple[str, int], _ServerSide] = {}
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._opening: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> UdpRelay:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ClientSide(self), local_addr=(host, port)
        )
        self._listen = transport
        self.address = transport.get_extra_info("sockname")[:2]
        self.up = _AddressedDirection(self._to_server, self.link.up, self.seed)  # type: ignore[arg-type]
        self.down = _AddressedDirection(self._to_client, self.link.down, self.seed + 1)  # type: ignore[arg-type]
        return self

    def set_link(self, link: LinkSpec) -> None:
        self.link = link
        self.up.impairment.set_conditions(link.up)
        self.down.impairment.set_conditions(link.down)

    def _from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        self.up.send_to(data, addr)

    def _to_server(self, data: bytes, client: tuple[str, int]) -> None:
        flow = self._flows.get(client)
        if flow is None:
            flow = self._flows[client] = _ServerSide(self, client)
            self._pending[client] = [data]
            task = asyncio.ensure_future(self._open_flow(flow))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
            return
        if client in self._pending:  # the flow's socket is still opening: keep the order
            self._pending[client].append(data)
            return
        flow.transport.sendto(data, self.target)

    async def _open_flow(self, flow: _ServerSide) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: flow, local_addr=(self.address[0], 0))
        assert flow.transport is not None
        for data in self._pending.pop(flow.client, []):
            flow.transport.sendto(data, self.target)

    def _to_client(self, data: bytes, client: tuple[str, int]) -> None:
        if self._listen is not None:
            self._listen.sendto(data, client)

    def close(self) -> None:
        if self._listen is not None:
            self._listen.close()
        for flow in self._flows.values():
            if flow.transport is not None:
                flow.transport.close()
        self._flows.clear()


# -- a client namespace behind TUN devices ---------------------------------------------

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


def netns_available() -> str | None:
    """None when this machine lets us create namespaces and TUN devices; else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    probe = f"tkprobe{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class NetnsLink:
    """A client network namespace ``name`` reaching this host only through the impairment.

    Inside it the client has ``client_address``; the host (the server) is
    ``host_address``. ``block_udp()`` adds a firewall that drops the client's UDP, as a
    school firewall would.
    """

    def __init__(self, name: str, link: LinkSpec | None = None, *, subnet: int = 77, seed: int = 0):
        if not 1 <= subnet <= 254:
            raise ValueError("subnet must be 1..254")
        self.name = name
        self.link = link or LinkSpec()
        self.seed = seed
        self.host_address = f"10.{subnet}.0.1"
        self.client_address = f"10.{subnet}.0.2"
        self._host_dev = f"tkh{subnet}"
        self._client_dev = f"tkc{subnet}"
        self._fds: list[int] = []
        self.up: Direction | None = None
        self.down: Direction | None = None
        #: IP protocol numbers of what the client sent (6 TCP, 17 UDP), before impairment.
        self.protocols_up: collections.Counter[int] = collections.Counter()

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    async def start(self) -> NetnsLink:
        self.close()  # a namespace left over by a killed run
        _ip("netns", "add", self.name)
        host_fd = _open_tun(self._host_dev)
        client_fd = _open_tun(self._client_dev)
        self._fds = [host_fd, client_fd]
        _ip("link", "set", self._client_dev, "netns", self.name)
        _ip("link", "set", "lo", "up", netns=self.name)
        _ip("addr", "add", self.host_address, "peer", self.client_address, "dev", self._host_dev)
        _ip("link", "set", self._host_dev, "up")
        _ip(
            "addr",
            "add",
            self.client_address,
            "peer",
            self.host_address,
            "dev",
            self._client_dev,
            netns=self.name,
        )
        _ip("link", "set", self._client_dev, "up", netns=self.name)
        _ip("route", "add", "default", "via", self.host_address, netns=self.name)
        loop = asyncio.get_running_loop()
        # client -> host: read from the client's TUN, write into the host's, and back.
        self.up = Direction(lambda p: os.write(host_fd, p), self.link.up, self.seed)
        self.down = Direction(lambda p: os.write(client_fd, p), self.link.down, self.seed + 1)
        loop.add_reader(client_fd, self._pump, client_fd, self.up)
        loop.add_reader(host_fd, self._pump, host_fd, self.down)
        return self

    def _pump(self, fd: int, direction: Direction) -> None:
        for _ in range(64):
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                return
            if direction is self.up and len(packet) > 9 and packet[0] >> 4 == 4:
                self.protocols_up[packet[9]] += 1
            direction.send(packet)

    def launcher(self, directory: Path, program: str) -> str:
        """An executable that runs ``program`` inside the namespace (for Playwright's
        ``executable_path``: Chromium behind the link)."""
        path = directory / f"{Path(program).name}-in-{self.name}"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {program} "$@"\n')
        path.chmod(0o755)
        return str(path)

    def set_link(self, link: LinkSpec) -> None:
        self.link = link
        if self.up is not None and self.down is not None:
            self.up.impairment.set_conditions(link.up)
            self.down.impairment.set_conditions(link.down)

    def block_udp(self, allow_ports: tuple[int, ...] = ()) -> None:
        """Drop UDP leaving the namespace (DNS-less school firewall), except ``allow_ports``."""
        rules = ["table inet tkfw {", " chain out { type filter hook output priority 0;"]
        for port in allow_ports:
            rules.append(f"  udp dport {port} accept")
        rules += ["  meta l4proto udp drop", " }", "}"]
        subprocess.run(
            [*self.exec_prefix, "nft", "-f", "-"],
            input="\n".join(rules),
            check=True,
            capture_output=True,
            text=True,
        )

    def close(self) -> None:
        loop = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        for fd in self._fds:
            if loop is not None:
                loop.remove_reader(fd)
            os.close(fd)
        self._fds = []
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self._host_dev], capture_output=True)
