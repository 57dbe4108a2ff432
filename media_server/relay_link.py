"""One relay link: a room's media between two nodes, in both directions.

Each end of a link exports the room's sources to the other and imports what the other
exports; the two ends run the same code (the origin accepted the link, the edge opened
it). Exporting is a RouterTap: every source is announced on the control channel with
a stream id per layer, and a layer the other end asks for gets a PacketSink on the
router (`Router.attach_sink`) that seals each packet into a relay datagram. Importing
turns each announced source into a detached MediaSource on this node's router whose
layers are UpTracks fed from the link's datagrams; their keyframe requests and NACKs go
back over the link, where they become the exporter's DownTrack's keyframe request and
retransmissions from its cache. A source is never exported over the link it came in
on, so an origin never receives its own sources back.

Latency: an exported stream's sink is served first in each packet's fan-out (before the
local subscribers' DownTracks) and sends from the fan-out itself, no queue in between; its
RTP datagrams carry the time this node took the packet in, and the importer measures to
when it took the datagram off its socket (`delay`) and to when it starts fanning it out
(`fanout_delay`, which adds the wait behind the fan-out of earlier packets in the same
read: what a local publisher's packets wait too, in their socket).

Layer selection: the importer asks for exactly the streams whose UpTrack has a
subscriber (immediately when one gains its first, within a tick when one loses its
last), so an edge whose viewers all receive the low layer carries only that one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from media_server import relay_wire as wire
from media_server.downtrack import DownTrack
from media_server.room import Room
from media_server.source import LAYER_ORDER, MediaSource
from media_server.uptrack import LatencyHistogram, NackBatch, UpTrack
from tongke.codecs import CODEC_OF_MIME
from tongke.tokens import Role
from tongke.untrusted import display_text_problem

log = logging.getLogger(__name__)

TICK_S = 1.0
CODECS = frozenset(CODEC_OF_MIME.values())
TEXT_FIELDS = ("participant", "classroom", "name", "source", "label")


class BadRelayMessage(ValueError):
    """A control message from the other node that we cannot act on (logged, counted)."""


@dataclass
class LinkStats:
    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    plis_in: int = 0
    nacks_in: int = 0
    retransmitted: int = 0
    unknown_stream: int = 0
    bad_messages: int = 0
    # RTP only: the exporter's ingress to our socket read, and to our fan-out's start.
    delay: LatencyHistogram = field(default_factory=LatencyHistogram)
    fanout_delay: LatencyHistogram = field(default_factory=LatencyHistogram)

    def reset_delays(self) -> None:
        self.delay.reset()
        self.fanout_delay.reset()


@dataclass(eq=False)
class ExportStream:
    """One layer of one of our sources, as the other node may receive it."""

    stream: int
    source: MediaSource
    layer: str
    ssrc: int
    down: DownTrack | None = None  # attached while the other node wants it


@dataclass(eq=False)
class Export:
    sid: int
    source: MediaSource
    streams: dict[str, ExportStream] = field(default_factory=dict)  # layer -> stream


@dataclass(eq=False)
class Import:
    sid: int
    source: MediaSource
    streams: dict[int, UpTrack] = field(default_factory=dict)  # stream id -> layer


class _StreamSink:
    """The PacketSink of one exported stream: each rewritten packet, sealed, to the peer.

    The datagram is stamped with the time our UpTrack took the packet in (set before its
    fan-out), so the other node's delay figure counts our work as well; a retransmission
    is stamped when it is sent.
    """

    def __init__(self, link: RelayLink, es: ExportStream) -> None:
        self._link = link
        self._send = link.send_datagram
        self._es = es
        self._stream = es.stream

    def send_rtp(self, packet: bytes) -> None:
        down = self._es.down
        up = down.current if down is not None else None
        if up is None or self._link.resending:
            self._send(wire.RTP, self._stream, packet)
        else:
            self._send(wire.RTP, self._stream, packet, int(up.last_packet_at * 1e6))

    def send_rtcp(self, packet: bytes) -> None:
        pass  # the link sends its own sender reports each tick


def _as_int(raw: dict[str, Any], key: str, low: int, high: int) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRelayMessage(f"{key} must be an integer in {low}..{high}")
    return value


class DatagramOut(Protocol):
    def sendto(self, data: bytes, addr: tuple[str, int]) -> None: ...


class RelayLink:
    def __init__(
        self,
        *,
        room: Room,
        link_id: int,
        key: bytes,
        peer_node: str,
        own_node: str,
        peer_addr: tuple[str, int],
        transport: DatagramOut,
        role: str,
    ) -> None:
        self.room = room
        self.link_id = link_id
        self.key = key
        self.peer_node = peer_node
        self.own_node = own_node
        self.peer_addr = peer_addr
        self.role = role  # "origin" (we accepted the link) or "edge" (we opened it)
        self.stats = LinkStats()
        self.opened_at = time.time()
        self._transport = transport
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._sids = iter(range(1, 1 << 31))
        self._stream_ids = iter(range(1, 1 << 16))
        self._exports: dict[MediaSource, Export] = {}
        self._export_streams: dict[int, ExportStream] = {}
        self._imports: dict[int, Import] = {}
        self._imported: set[MediaSource] = set()
        self._by_stream: dict[int, UpTrack] = {}
        self._wanted_sent: set[int] | None = None
        self._want_soon = False
        self._nacks = NackBatch(self._send_nacks)
        self._stream_of: dict[UpTrack, int] = {}
        self.resending = False  # answering a NACK: the sink stamps resends with now
        self.closed = False

    # -- the control channel -----------------------------------------------------------

    async def serve(
        self,
        receive: Callable[[], Awaitable[str | None]],
        send: Callable[[str], Awaitable[None]],
        on_message: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        """Run the link until the control channel closes (`receive` returns None).

        `on_message` gets what the link itself does not handle (classroom mirroring).
        """
        writer = asyncio.ensure_future(self._write(send))
        ticker = asyncio.ensure_future(self._tick())
        self.room.router.add_tap(self)
        try:
            while True:
                text = await receive()
                if text is None:
                    return
                try:
                    message = json.loads(text)
                    if not isinstance(message, dict):
                        raise BadRelayMessage("a control message must be a JSON object")
                    if self._handle(message):
                        continue
                    if on_message is None:
                        raise BadRelayMessage(f"unknown message type {message.get('type')!r}")
                    await on_message(message)
                except (BadRelayMessage, ValueError) as exc:
                    self.stats.bad_messages += 1
                    log.warning("relay %s from %s: refused %.200s (%s)", self.link_id,
                                self.peer_node, text, exc)  # fmt: skip
                except Exception:  # a bug here must not take the lesson's relay down
                    self.stats.bad_messages += 1
                    log.exception("relay %s: handling %.200s failed", self.link_id, text)
        finally:
            writer.cancel()
            ticker.cancel()
            self.close()

    def post(self, message: dict[str, Any]) -> None:
        """Queue a control message (in order) for the other node."""
        if not self.closed:
            self._outbox.put_nowait(message)

    async def _write(self, send: Callable[[str], Awaitable[None]]) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await send(json.dumps(message, ensure_ascii=False))
            except ConnectionError:
                return

    def _handle(self, message: dict[str, Any]) -> bool:
        kind = message.get("type")
        if kind == "source":
            self._import_source(message)
        elif kind == "source_removed":
            self._import_removed(_as_int(message, "sid", 1, 1 << 31))
        elif kind == "want":
            streams = message.get("streams")
            if not isinstance(streams, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in streams
            ):
                raise BadRelayMessage("want.streams must be a list of stream ids")
            self._set_wanted(set(streams))
        else:
            return False
        return True

    async def _tick(self) -> None:
        """Sender reports, layers added to exported sources, what we want, NACK retries."""
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._tick_once()
            except Exception:  # the next tick tries again; the media keeps flowing
                log.exception("relay %s: tick failed", self.link_id)

    def _tick_once(self) -> None:
        for es in self._export_streams.values():
            report = es.down.sender_report() if es.down is not None else None
            if report is not None:
                self.send_datagram(wire.SR, es.stream, report[8:20])
        for export in list(self._exports.values()):
            if set(export.source.layers) != set(export.streams):
                self._announce(export)
        self._send_wanted()
        for up in self._by_stream.values():
            if up.missing:
                self._send_nacks(up)

    # -- datagrams ---------------------------------------------------------------------

    def send_datagram(
        self, kind: int, stream: int, body: bytes, sent_us: int | None = None
    ) -> None:
        if self.closed:
            return
        data = wire.seal(self.key, kind, self.link_id, stream, body, sent_us)
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(data)
        self._transport.sendto(data, self.peer_addr)

    def on_datagram(self, data: bytes, arrival_ns: int, read_us: int | None = None) -> None:
        """An authentic datagram of this link (the service checked its tag).

        `arrival_ns` (perf counter) starts the SFU latency of its fan-out here; `read_us`
        (u32 wall-clock microseconds, default now) is when it was taken off the socket.
        """
        _, kind, _, stream, sent = wire.HEADER.unpack_from(data)
        stats = self.stats
        stats.datagrams_in += 1
        stats.bytes_in += len(data)
        body = data[wire.HEADER.size : -wire.TAG_BYTES]
        if kind == wire.RTP:
            up = self._by_stream.get(stream)
            if up is None:
                stats.unknown_stream += 1
                return
            now = wire.now_us()
            stats.delay.add_ns(wire.delay_us(sent, now if read_us is None else read_us) * 1000)
            stats.fanout_delay.add_ns(wire.delay_us(sent, now) * 1000)
            up.on_rtp(body, arrival_ns)
        elif kind == wire.SR:
            up = self._by_stream.get(stream)
            if up is not None and len(body) == wire.SR_BODY.size:
                up.on_sender_report(*wire.SR_BODY.unpack(body))
        elif kind == wire.PLI:
            es = self._export_streams.get(stream)
            stats.plis_in += 1
            if es is not None and es.down is not None:
                es.down.stats.keyframe_requests += 1
                up = es.down.target or es.down.current
                if up is not None:
                    es.down.stats.keyframes_asked += 1
                    # The edge's layer gated this request already (a join, a switch or
                    # a repair, which the wire does not tell apart); here it only
                    # merges with the origin's other receivers' requests.
                    up.request_keyframe(urgent=True)
        elif kind == wire.NACK:
            es = self._export_streams.get(stream)
            stats.nacks_in += 1
            if es is None or es.down is None:
                return
            try:
                seqs = wire.unpack_nacks(body)
            except ValueError:
                stats.bad_messages += 1
                return
            self.resending = True
            try:
                for seq in seqs:
                    if es.down.retransmit(seq):
                        stats.retransmitted += 1
            finally:
                self.resending = False

    # -- exporting: RouterTap ------------------------------------------------------------

    def source_added(self, source: MediaSource) -> None:
        if source in self._imported or source in self._exports:
            return  # never send the other node its own sources back
        export = self._exports[source] = Export(sid=next(self._sids), source=source)
        self._announce(export)

    def source_removed(self, source: MediaSource) -> None:
        export = self._exports.pop(source, None)
        if export is None:
            return
        for es in export.streams.values():
            self._drop_stream(es)
        self.post({"type": "source_removed", "sid": export.sid})

    def _announce(self, export: Export) -> None:
        source = export.source
        for layer in [layer for layer in export.streams if layer not in source.layers]:
            self._drop_stream(export.streams.pop(layer))
        if not source.layers:
            # Nothing to carry yet (the director's program before its first cut): the
            # other node would refuse it; the tick announces it once it has a layer.
            return
        layers = {}
        for layer, up in source.layers.items():
            es = export.streams.get(layer)
            if es is None:
                es = ExportStream(
                    stream=next(self._stream_ids),
                    source=source,
                    layer=layer,
                    ssrc=secrets.randbits(32) or 1,
                )
                export.streams[layer] = self._export_streams[es.stream] = es
            layers[layer] = {
                "stream": es.stream,
                "ssrc": es.ssrc,
                "payload_type": up.payload_type,
                "clock_rate": up.clock_rate,
            }
        self.post(
            {
                "type": "source",
                "sid": export.sid,
                "participant": source.participant,
                "classroom": source.classroom,
                "name": source.name,
                "source": source.source,
                "kind": source.kind,
                "codec": source.codec,
                "label": source.label,
                "role": source.role.value if source.role is not None else None,
                "layers": layers,
            }
        )

    def _set_wanted(self, streams: set[int]) -> None:
        router = self.room.router
        for es in self._export_streams.values():
            if es.stream in streams and es.down is None:
                up = es.source.layers.get(es.layer)
                if up is None:
                    continue
                es.down = router.attach_sink(
                    es.source,
                    _StreamSink(self, es),
                    ssrc=es.ssrc,
                    payload_type=up.payload_type,
                    layer=es.layer,
                    first=True,
                )
            elif es.stream not in streams and es.down is not None:
                router.detach_sink(es.down)
                es.down = None

    def _drop_stream(self, es: ExportStream) -> None:
        self._export_streams.pop(es.stream, None)
        if es.down is not None:
            self.room.router.detach_sink(es.down)
            es.down = None

    # -- importing ------------------------------------------------------------------------

    def _import_source(self, raw: dict[str, Any]) -> None:
        sid = _as_int(raw, "sid", 1, 1 << 31)
        for key in TEXT_FIELDS:
            problem = display_text_problem(raw.get(key, ""), max_chars=128)
            if problem is not None and raw.get(key) != "":
                raise BadRelayMessage(f"{key} {problem}")
        kind, codec, role = raw.get("kind"), raw.get("codec"), raw.get("role")
        if kind not in ("audio", "video") or codec not in CODECS:
            raise BadRelayMessage("kind must be audio or video, codec one Tongke forwards")
        if role is not None and role not in Role.__members__.values():
            raise BadRelayMessage("role must be a Tongke role")
        layers = raw.get("layers")
        if not isinstance(layers, dict) or not layers or not set(layers) <= set(LAYER_ORDER):
            raise BadRelayMessage("layers must map some of h, m, l to streams")
        specs = {}
        for layer, spec in layers.items():
            if not isinstance(spec, dict):
                raise BadRelayMessage("each layer must be an object")
            specs[layer] = (
                _as_int(spec, "stream", 1, 0xFFFF),
                _as_int(spec, "ssrc", 1, 0xFFFFFFFF),
                _as_int(spec, "payload_type", 0, 127),
                _as_int(spec, "clock_rate", 1, 192_000),
            )
        for stream, *_ in specs.values():
            owner = self._by_stream.get(stream)
            if owner is not None and (sid not in self._imports or owner not in
                                      self._imports[sid].streams.values()):  # fmt: skip
                raise BadRelayMessage(f"stream {stream} belongs to another source")
        if self.own_node in str(raw.get("participant", "")).split("~")[:-1]:
            # Our own source, come back round a cycle of links (A edge of B, B of A):
            # an imported source's participant names every node it crossed.
            raise BadRelayMessage("a source of this node came back over another link")
        imp = self._imports.get(sid)
        if imp is None:
            source = MediaSource(
                participant=f"{self.peer_node}~{raw['participant']}",
                classroom=str(raw.get("classroom", "")),
                name=str(raw.get("name", "")),
                source=str(raw["source"]),
                kind=kind,
                codec=codec,
                label=str(raw.get("label", "")),
                role=Role(role) if role is not None else None,
            )
            imp = self._imports[sid] = Import(sid=sid, source=source)
            self._imported.add(source)
        source = imp.source
        if (kind, codec) != (source.kind, source.codec):
            raise BadRelayMessage("a source cannot change its kind or codec")
        wanted = {stream for stream, *_ in specs.values()}
        for stream in [s for s in imp.streams if s not in wanted]:
            self._by_stream.pop(stream, None)
            gone = imp.streams.pop(stream)
            self._stream_of.pop(gone, None)
            gone.close()
        layers_now: dict[str, UpTrack] = {}
        for layer, (stream, ssrc, pt, rate) in specs.items():
            up = imp.streams.get(stream)
            if up is None:
                up = UpTrack(
                    track_id=f"{source.track_id}/{layer}",
                    source=source.source,
                    layer=layer,
                    kind=kind,
                    codec=codec,
                    clock_rate=rate,
                    ssrc=ssrc,
                    payload_type=pt,
                    rtx_ssrc=None,
                    rtx_payload_type=None,
                    request_keyframe=self._request_keyframe,
                    request_nack=self._nacks.add,
                    label=source.label,
                    on_wanted=self._wanted,
                )
                self._stream_of[up] = stream
                imp.streams[stream] = self._by_stream[stream] = up
            layers_now[layer] = up
        router = self.room.router
        if source in router.sources():
            router.set_layers(source, layers_now)
        else:
            source.layers = layers_now
            router.add_source(source)

    def _import_removed(self, sid: int) -> None:
        imp = self._imports.pop(sid, None)
        if imp is None:
            return
        self.room.router.remove_source(imp.source)
        self._imported.discard(imp.source)
        for stream, up in imp.streams.items():
            self._by_stream.pop(stream, None)
            self._stream_of.pop(up, None)
            up.close()

    def _wanted(self, up: UpTrack) -> None:
        """An imported layer has its first subscriber: ask for it now, not in a tick."""
        if not self._want_soon:
            self._want_soon = True
            asyncio.get_running_loop().call_soon(self._send_wanted)

    def _send_wanted(self) -> None:
        self._want_soon = False
        wanted = {s for s, up in self._by_stream.items() if up.downtracks}
        if wanted != self._wanted_sent:
            self._wanted_sent = wanted
            self.post({"type": "want", "streams": sorted(wanted)})

    def _request_keyframe(self, up: UpTrack) -> None:
        stream = self._stream_of.get(up)
        if stream is not None:
            self.send_datagram(wire.PLI, stream, b"")

    def _send_nacks(self, up: UpTrack) -> None:
        stream = self._stream_of.get(up)
        seqs = up.take_nacks()
        if seqs and stream is not None:
            up.stats.nacks_sent += 1
            for body in wire.pack_nacks(seqs):
                self.send_datagram(wire.NACK, stream, body)

    # -- state ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        s = self.stats
        return {
            "link": self.link_id,
            "room": self.room.id,
            "role": self.role,
            "peer": self.peer_node,
            "peer_address": f"{self.peer_addr[0]}:{self.peer_addr[1]}",
            "opened_at": round(self.opened_at, 3),
            "exported": [
                {
                    "track": e.source.track_id,
                    "layers": {es.layer: es.down is not None for es in e.streams.values()},
                }
                for e in self._exports.values()
            ],
            "imported": [
                {
                    "track": imp.source.track_id,
                    "layers": {
                        up.layer: {
                            "packets": up.stats.packets,
                            "lost": up.stats.lost,
                            "recovered": up.stats.recovered,
                            "keyframes": up.stats.keyframes,
                            "subscribers": len(up.downtracks),
                            "synced": up.sender_clock.known,
                        }
                        for up in imp.streams.values()
                    },
                }
                for imp in self._imports.values()
            ],
            "datagrams_in": s.datagrams_in,
            "datagrams_out": s.datagrams_out,
            "bytes_in": s.bytes_in,
            "bytes_out": s.bytes_out,
            "keyframe_requests_in": s.plis_in,
            "nacks_in": s.nacks_in,
            "retransmitted": s.retransmitted,
            "unknown_stream": s.unknown_stream,
            "bad_messages": s.bad_messages,
            "delay_ms": {"p50": s.delay.percentile_ms(0.5), "p99": s.delay.percentile_ms(0.99)},
            "fanout_delay_ms": {
                "p50": s.fanout_delay.percentile_ms(0.5),
                "p99": s.fanout_delay.percentile_ms(0.99),
            },
        }

    def close(self) -> None:
        """Forget everything this link added to the room, and stop sending."""
        if self.closed:
            return
        self.closed = True
        router = self.room.router
        router.remove_tap(self)
        for es in list(self._export_streams.values()):
            self._drop_stream(es)
        self._exports.clear()
        for sid in list(self._imports):
            self._import_removed(sid)
