"""A relay link in one process: what it imports, and what it refuses from the other node."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from media_server import relay_wire as wire
from media_server.relay import RelayRefused, RelayService
from media_server.relay_link import RelayLink
from media_server.room import LessonInfo, Room
from media_server.source import MediaSource
from tests.test_rtp_rewrite import VP8_KEY, make_up
from tests.test_rtp_rewrite import rtp as video_rtp
from tongke.tokens import Role

KEY = b"k" * 32
PEER = ("10.9.9.9", 4000)


class Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


def make_link(room: Room, transport: Transport, link_id: int = 7) -> RelayLink:
    return RelayLink(
        room=room,
        link_id=link_id,
        key=KEY,
        peer_node="origin-a",
        own_node="edge-b",
        peer_addr=PEER,
        transport=transport,  # type: ignore[arg-type]
        role="edge",
    )


def announce(**overrides: Any) -> dict[str, Any]:
    message = {
        "type": "source",
        "sid": 1,
        "participant": "p1",
        "classroom": "c-master",
        "name": "城关小学",
        "source": "teacher_camera",
        "kind": "video",
        "codec": "vp8",
        "label": "Teacher camera",
        "role": "master",
        "layers": {"h": {"stream": 5, "ssrc": 1234, "payload_type": 96, "clock_rate": 90000}},
    }
    message.update(overrides)
    return message


def rtp(seq: int, ts: int = 0) -> bytes:
    return (
        bytes([0x80, 96])
        + seq.to_bytes(2, "big")
        + ts.to_bytes(4, "big")
        + b"\0\0\x04\xd2"
        + b"x" * 20
    )


async def serving(link: RelayLink, messages: list[object]) -> None:
    """Run the link over a control channel that delivers `messages`, then closes."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m if isinstance(m, str) else json.dumps(m))
    done = asyncio.Event()

    async def receive() -> str | None:
        if queue.empty():
            done.set()
            await asyncio.sleep(3600)
        return await queue.get()

    async def send(text: str) -> None:
        pass

    task = asyncio.ensure_future(link.serve(receive, send))
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()


async def test_an_announced_source_becomes_a_routed_source_fed_by_the_link() -> None:
    room = Room(LessonInfo(room="r1"))
    transport = Transport()
    link = make_link(room, transport)
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    queue.put_nowait(json.dumps(announce()))

    async def send(text: str) -> None:
        pass

    task = asyncio.ensure_future(link.serve(queue.get, send))
    try:
        for _ in range(100):
            if room.sources():
                break
            await asyncio.sleep(0.01)
        (source,) = room.sources()
        assert source.participant == "origin-a~p1" and source.name == "城关小学"
        up = source.layers["h"]
        link.on_datagram(wire.seal(KEY, wire.RTP, 7, 5, rtp(100)), 0)
        link.on_datagram(wire.seal(KEY, wire.RTP, 7, 5, rtp(103)), 0)
        assert (up.stats.packets, up.stats.lost) == (2, 2)
        await asyncio.sleep(0.01)  # the NACK goes out on the next loop turn
        nacks = [d for d, _ in transport.sent if d[1] == wire.NACK]
        assert len(nacks) == 1 and wire.unpack_nacks(nacks[0][12:-8]) == (101, 102)
        link.on_datagram(wire.seal(KEY, wire.SR, 7, 5, wire.SR_BODY.pack(1 << 40, 555)), 0)
        assert up.sender_clock.known and up.sender_clock.rtp == 555
        queue.put_nowait(json.dumps({"type": "source_removed", "sid": 1}))
        for _ in range(100):
            if not room.sources():
                break
            await asyncio.sleep(0.01)
        assert room.sources() == [] and up.closed
    finally:
        queue.put_nowait(None)
        await asyncio.wait_for(task, 5)
    assert link.closed


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[1, 2]",
        {"type": "source"},
        announce(kind="smell"),
        announce(codec="h265"),
        announce(role="king"),
        announce(layers={}),
        announce(layers={"x": {"stream": 1, "ssrc": 1, "payload_type": 96, "clock_rate": 1}}),
        announce(layers={"h": {"stream": 0, "ssrc": 1, "payload_type": 96, "clock_rate": 1}}),
        announce(layers={"h": {"stream": 5, "ssrc": 1, "payload_type": 300, "clock_rate": 1}}),
        announce(name="a\u202eb"),
        announce(name="x" * 500),
        announce(participant="edge-b~p1"),  # our own source, back round a cycle
        announce(participant="node-c~edge-b~p1"),  # ... a longer one
        {"type": "want", "streams": "all"},
        {"type": "source_removed", "sid": "one"},
        {"type": "classroom"},
    ],
)
async def test_a_message_the_link_cannot_act_on_is_counted_and_changes_nothing(bad: object) -> None:
    room = Room(LessonInfo(room="r2"))
    link = make_link(room, Transport())
    await serving(link, [bad])
    assert link.stats.bad_messages == 1
    assert room.sources() == []


async def test_a_stream_id_cannot_be_claimed_by_two_sources() -> None:
    room = Room(LessonInfo(room="r3"))
    link = make_link(room, Transport())
    await serving(link, [announce(), announce(sid=2, source="board_camera")])
    assert link.stats.bad_messages == 1
    assert [s.source for s in room.sources()] == ["teacher_camera"]


def test_relay_datagrams_are_sealed_and_a_changed_byte_breaks_the_tag() -> None:
    data = wire.seal(KEY, wire.RTP, 42, 3, b"payload")
    assert wire.link_of(data) == 42 and wire.authentic(KEY, data)
    assert not wire.authentic(b"x" * 32, data)
    tampered = bytearray(data)
    tampered[14] ^= 1
    assert not wire.authentic(KEY, bytes(tampered))
    assert wire.link_of(b"\x80" + data[1:]) is None  # RTP is never taken for relay
    bodies = wire.pack_nacks(list(range(300)))
    assert [len(wire.unpack_nacks(b)) for b in bodies] == [256, 44]
    with pytest.raises(ValueError):
        wire.unpack_nacks(b"\x00")


async def test_the_service_drops_and_counts_what_is_not_from_a_link_peer() -> None:
    room = Room(LessonInfo(room="r4"))
    service = RelayService(None, secret="s" * 32, host="127.0.0.1")  # type: ignore[arg-type]
    link = make_link(room, Transport(), link_id=9)
    service.links[9] = link
    good = wire.seal(KEY, wire.PLI, 9, 1, b"")
    service.on_datagram(b"\x80" * 40, PEER)
    service.on_datagram(wire.seal(KEY, wire.PLI, 8, 1, b""), PEER)
    service.on_datagram(good, ("10.6.6.6", 4000))
    service.on_datagram(good[:-1] + bytes([good[-1] ^ 1]), PEER)
    service.on_datagram(wire.seal(KEY, 99, 9, 1, b""), PEER)
    assert dict(service.dropped) == {
        "not_relay": 1,
        "unknown_link": 1,
        "wrong_source": 1,
        "bad_tag": 2,
    }
    service.on_datagram(good, PEER)
    assert link.stats.plis_in == 1 and link.stats.datagrams_in == 1
    link.close()


class Rooms:
    def __init__(self, *rooms: Room) -> None:
        self.rooms = {r.id: r for r in rooms}

    def get(self, room_id: str) -> Room | None:
        return self.rooms.get(room_id)


class Sfu:
    def __init__(self, *rooms: Room) -> None:
        self.rooms = Rooms(*rooms)


def hello(secret: str, node: str, room: str, **overrides: Any) -> dict[str, Any]:
    sent_at, nonce, port = time.time(), "ab" * 16, 4000
    message = {
        "type": "hello",
        "node": node,
        "room": room,
        "sent_at": sent_at,
        "nonce": nonce,
        "port": port,
        "mac": wire.hello_mac(secret, node, room, sent_at, nonce, port),
    }
    message.update(overrides)
    return message


async def test_an_edge_announcing_itself_twice_keeps_one_link_and_bad_hellos_open_none() -> None:
    room = Room(LessonInfo(room="r5"))
    secret = "s" * 32
    service = RelayService(Sfu(room), secret=secret, host="127.0.0.1")  # type: ignore[arg-type]
    await service.start()
    try:
        _, first = service._open_link(hello(secret, "edge-b", "r5"), "10.0.0.3")
        _, second = service._open_link(hello(secret, "edge-b", "r5"), "10.0.0.3")
        assert first.closed and not second.closed
        assert list(service.links.values()) == [second]
        refusals = {
            "relay_refused": hello("another-secret-0123456789abcdef", "edge-c", "r5"),
            "stale_hello": hello(secret, "edge-c", "r5", sent_at=time.time() - 3600),
            "unknown_room": hello(secret, "edge-c", "no-such-lesson"),
            "bad_hello": hello(secret, "edge c/../", "r5"),
            "self_link": hello(secret, service.node, "r5"),
        }
        for code, message in refusals.items():
            with pytest.raises(RelayRefused) as refused:
                service._open_link(message, "10.0.0.4")
            assert refused.value.code == code
        assert list(service.links.values()) == [second]
    finally:
        await service.close()


class Recorded:
    """A local subscriber's sink and the relay's socket, writing into one ordered log."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name
        self.sent: list[bytes] = []

    def send_rtp(self, packet: bytes) -> None:
        self.log.append(self.name)

    def send_rtcp(self, packet: bytes) -> None:
        pass

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.log.append(self.name)
        self.sent.append(data)


async def test_the_relay_gets_each_packet_before_the_local_subscribers_stamped_at_ingress() -> None:
    """A relay joining late still goes first: the edge's audience must not wait for ours."""
    room = Room(LessonInfo(room="r6"))
    log: list[str] = []
    up = make_up("h", 1111, [])
    source = MediaSource(
        participant="p1",
        classroom="c-master",
        name="m",
        source="teacher_camera",
        kind="video",
        codec="vp8",
        label="Teacher camera",
        role=Role.MASTER,
    )
    source.layers = {"h": up}
    room.router.add_source(source)
    for i in range(3):  # local subscribers, there before the edge asks
        room.router.attach_sink(source, Recorded(log, "local"), ssrc=100 + i, payload_type=96)
    socket = Recorded(log, "relay")
    link = make_link(room, socket)  # type: ignore[arg-type]
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def send(text: str) -> None:
        pass

    task = asyncio.ensure_future(link.serve(queue.get, send))
    try:
        for _ in range(100):
            if source in link._exports:
                break
            await asyncio.sleep(0.01)
        stream = link._exports[source].streams["h"].stream
        queue.put_nowait(json.dumps({"type": "want", "streams": [stream]}))
        for _ in range(100):
            if link.describe()["exported"][0]["layers"]["h"]:
                break
            await asyncio.sleep(0.01)
        up.on_rtp(video_rtp(10, 0, 1111, VP8_KEY), 0)
        assert log == ["relay", "local", "local", "local"]
        (datagram,) = socket.sent
        assert wire.HEADER.unpack_from(datagram)[4] == int(up.last_packet_at * 1e6) & 0xFFFFFFFF
    finally:
        queue.put_nowait(None)
        await asyncio.wait_for(task, 5)


async def test_the_edge_measures_the_relay_to_its_socket_read_and_to_its_fan_out() -> None:
    room = Room(LessonInfo(room="r7"))
    link = make_link(room, Transport())
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    queue.put_nowait(json.dumps(announce()))

    async def send(text: str) -> None:
        pass

    task = asyncio.ensure_future(link.serve(queue.get, send))
    try:
        for _ in range(100):
            if room.sources():
                break
            await asyncio.sleep(0.01)
        now = wire.now_us()
        # Taken in 5 ms ago on the origin, read off our socket 0.3 ms after that.
        sent = wire.seal(KEY, wire.RTP, 7, 5, rtp(100), sent_us=now - 5000)
        link.on_datagram(sent, 0, read_us=now - 4700)
        delays = link.describe()
        assert delays["delay_ms"]["p50"] == 0.35  # the 300-350 us bucket
        assert delays["fanout_delay_ms"]["p50"] >= 5.0
        link.stats.reset_delays()
        assert link.describe()["delay_ms"]["p50"] is None
    finally:
        queue.put_nowait(None)
        await asyncio.wait_for(task, 5)


def test_each_media_worker_relays_on_its_own_port_after_the_configured_one() -> None:
    from tongke.cluster.workers import WorkerPool, worker_config
    from tongke.config import Config

    config = Config(relay_port=18350)
    assert [worker_config(config, slot).relay_port for slot in (1, 2, 3)] == [18350, 18351, 18352]
    assert worker_config(Config(), 2).relay_port == 0  # any port, each its own
    with pytest.raises(ValueError):
        WorkerPool(Config(relay_port=65535), 2, host_id="h")


def test_a_host_with_two_workers_and_a_fixed_relay_port_starts_and_relays_on_two_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.lesson_server import ServerProcess, start_server_process

    monkeypatch.setenv("TONGKE_RELAY_PORT", "18360")
    server = start_server_process(tmp_path, extra=["--workers", "2"])
    try:
        ports = sorted(
            ServerProcess(
                proc=server.proc, url=n["url"], secret=server.secret, data_dir=tmp_path
            ).api("GET", "/api/relay")["port"]
            for n in server.api("GET", "/api/cluster")["nodes"]
        )
        assert ports == [18360, 18361]
    finally:
        server.stop()


async def test_a_source_without_layers_is_announced_once_it_has_one() -> None:
    """The director's program exists before its first cut: the other node must not be
    sent an announcement it refuses (logged and counted as a bad message there)."""
    room = Room(LessonInfo(room="r8"))
    program = MediaSource(
        participant="director",
        classroom="",
        name="导播",
        source="program",
        kind="video",
        codec="vp8",
        label="Program",
        role=None,
    )
    room.router.add_source(program)
    sent: list[dict[str, Any]] = []
    link = make_link(room, Transport())
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def send(text: str) -> None:
        sent.append(json.loads(text))

    task = asyncio.ensure_future(link.serve(queue.get, send))
    try:
        await asyncio.sleep(0.05)
        assert [m for m in sent if m["type"] == "source"] == []
        room.router.set_layers(program, {"h": make_up("h", 1111, [])})
        link._tick_once()
        await asyncio.sleep(0.05)
        (announced,) = [m for m in sent if m["type"] == "source"]
        assert announced["source"] == "program" and list(announced["layers"]) == ["h"]
    finally:
        queue.put_nowait(None)
        await asyncio.wait_for(task, 5)
