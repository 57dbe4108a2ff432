"""The program with real aiortc peers: a point on a thin link sees the call-on as a cut.

The master publishes a 320x240 teacher camera, point A a 640x360 camera; point B asks
for the program alone. When the master calls on A, B's program decodes A's pictures,
and the RTP stream B receives is one stream: the first packet of A is a keyframe and
comes with the very next sequence number after the teacher's last.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection

from classroom_agent.client import ClientEvents, LessonClient, Publication, RemoteTrack
from media_server.rtpbytes import vp8_keyframe_start
from tests.lesson_server import ServerProcess
from tests.media import PatternTrack, ToneTrack, wait_for
from tongke import rtc_internals

SWITCH_LIMIT_S = 5.0  # generous for a loaded CI machine; bench/classroom.py measures it


def vp8_key_width(payload: bytes) -> int | None:
    """The width in a VP8 keyframe's header, or None for any other packet."""
    if not vp8_keyframe_start(payload, 0, len(payload)):
        return None
    pos = 1
    if payload[0] & 0x80:
        ext = payload[1]
        pos = 2
        if ext & 0x80:
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:
            pos += 1
        if ext & 0x30:
            pos += 1
    if payload[pos + 3 : pos + 6] != b"\x9d\x01\x2a":
        return None
    return int.from_bytes(payload[pos + 6 : pos + 8], "little") & 0x3FFF


@dataclass
class ProgramWatcher:
    """Point B: the RTP packets and the decoded widths of its program track."""

    packets: dict[str, list[tuple[int, int, int | None]]] = field(default_factory=dict)
    widths: list[tuple[float, int]] = field(default_factory=list)
    hooked: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None

    def hook(self, pc: RTCPeerConnection) -> None:
        for transceiver in pc.getTransceivers():
            mid = transceiver.mid
            if mid is None or mid in self.hooked or transceiver.kind != "video":
                continue
            self.hooked.add(mid)
            seen = self.packets.setdefault(mid, [])
            rtc_internals.hook_receiver_rtp(
                transceiver.receiver,
                lambda p, seen=seen: seen.append(
                    (p.sequence_number, p.timestamp, vp8_key_width(p.payload))
                ),
            )

    def track(self, remote: RemoteTrack) -> None:
        if remote.source == "program" and self.task is None and remote.track is not None:
            self.task = asyncio.ensure_future(self._decode(remote))

    async def _decode(self, remote: RemoteTrack) -> None:
        assert remote.track is not None
        while True:
            try:
                frame = await remote.track.recv()
            except Exception:
                return
            self.widths.append((time.monotonic(), frame.width))

    def width_since(self, t: float, width: int) -> float | None:
        return next((at for at, w in self.widths if at >= t and w == width), None)


async def test_a_call_on_is_a_keyframe_cut_in_one_program_stream(
    server: ServerProcess, room: str
) -> None:
    watcher = ProgramWatcher()
    events = ClientEvents(on_subscribe_transceivers=watcher.hook, on_track=watcher.track)
    master = LessonClient(server.url, room, server.token(room, "c-master", "master"))
    a = LessonClient(server.url, room, server.token(room, "p-a", "point", name="小河"))
    b = LessonClient(
        server.url, room, server.token(room, "p-b", "point", name="山背"), events=events
    )
    clients = (master, a, b)
    try:
        for client in clients:
            await client.connect()
        await master.publish([Publication(PatternTrack(320, 240), "teacher_camera", codec="vp8")])
        await a.publish(
            [
                Publication(PatternTrack(640, 360), "point_camera", codec="vp8"),
                Publication(ToneTrack(), "point_mic"),
            ]
        )
        await master.request({"type": "lesson_start"})
        await b.request({"type": "receive_mode", "mode": "program"})
        await wait_for(
            lambda: {t.source for t in b.active_tracks()} == {"program"},
            what="b receives the program alone",
        )
        await wait_for(lambda: watcher.width_since(0, 320) is not None, what="teacher on air")

        t0 = time.monotonic()
        await master.request({"type": "call_on", "classroom": "p-a"})
        await wait_for(
            lambda: watcher.width_since(t0, 640) is not None,
            SWITCH_LIMIT_S,
            "b's program shows a",
        )
        # a's microphone reaches b with the program (every voice goes with it).
        await wait_for(
            lambda: "point_mic" in {t.source for t in b.active_tracks()}, what="a's voice at b"
        )

        mid = next(r.mid for r in b.active_tracks() if r.source == "program")
        packets = watcher.packets[mid]
        seqs = sorted({s for s, _, _ in packets}, key=lambda s: (s - packets[0][0]) & 0xFFFF)
        assert all((y - x) & 0xFFFF == 1 for x, y in itertools.pairwise(seqs)), "gap in program"
        cut = next(i for i, (_, _, w) in enumerate(packets) if w == 640)
        before, first = packets[cut - 1], packets[cut]
        assert (first[0] - before[0]) & 0xFFFF == 1  # the next number: one stream
        assert 0 < (first[1] - before[1]) & 0xFFFFFFFF < 90000 * 5  # time moves on
        assert all(w in (None, 320) for _, _, w in packets[:cut])

        t1 = time.monotonic()
        await master.request({"type": "call_off"})
        await wait_for(
            lambda: watcher.width_since(t1, 320) is not None,
            SWITCH_LIMIT_S,
            "b's program back on the teacher",
        )
        state = await master.request({"type": "classroom_state"})
        reasons = [c["reason"] for c in state["state"]["director"]["cuts"]]
        assert reasons[-3:] == ["teacher", "call_on", "teacher"]
    finally:
        if watcher.task is not None:
            watcher.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher.task
        for client in clients:
            await client.close()


async def test_the_master_directs_by_hand_and_a_thin_point_is_refused_nothing(
    server: ServerProcess, room: str
) -> None:
    states: list[dict[str, Any]] = []

    def keep(message: dict[str, Any]) -> None:
        if message.get("type") == "classroom":
            states.append(message["state"])

    def director() -> dict[str, Any]:
        return states[-1].get("director", {}) if states else {}

    master = LessonClient(
        server.url,
        room,
        server.token(room, "c-master", "master"),
        events=ClientEvents(on_message=keep),
    )
    a = LessonClient(server.url, room, server.token(room, "p-a", "point"))
    try:
        await master.connect()
        await a.connect()
        await master.publish(
            [
                Publication(PatternTrack(320, 240), "teacher_camera", codec="vp8"),
                Publication(PatternTrack(480, 270), "board_camera", codec="vp8"),
            ]
        )
        await wait_for(lambda: director()["on_air"] is not None, what="a first shot")
        board = f"{master.joined['participant']}/board_camera"
        await master.request({"type": "director", "track": board})
        await wait_for(lambda: director()["mode"] == "manual", what="manual mode announced")
        await wait_for(lambda: director()["on_air"] == board, what="the board on air")
        # A point may not direct; a bad track is refused; the shot stays.
        for client, message, code in (
            (a, {"type": "director", "mode": "auto"}, "forbidden"),
            (master, {"type": "director", "track": "p9/camera"}, "unknown_track"),
            (master, {"type": "receive_mode", "mode": "loud"}, "bad_request"),
        ):
            try:
                await client.request(message)
            except Exception as exc:
                assert getattr(exc, "code", None) == code
            else:
                raise AssertionError(f"{message} was accepted")
        await master.request({"type": "director", "mode": "auto"})
        teacher = f"{master.joined['participant']}/teacher_camera"
        await wait_for(lambda: director()["on_air"] == teacher, what="auto: the teacher")
    finally:
        await a.close()
        await master.close()
