"""The live director's rules, manual mode, who receives the program, and the lesson end.

Driven at the room level with byte-level packets (tests/test_rtp_rewrite.py) and an
injected clock; tests/test_director_media.py does the same cut with real aiortc peers.
"""

from __future__ import annotations

import itertools
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from media_server import director as director_module
from media_server.classroom import LessonEnd, Phase
from media_server.director import COURSEWARE_HOLD_S, PROGRAM_HOLD_S
from media_server.participant import Participant
from media_server.publisher import SignallingError
from media_server.room import LessonInfo, Room, Rooms
from media_server.sink import MemorySink
from media_server.source import MediaSource
from media_server.uptrack import UpTrack
from recording.timeline import read_timeline
from tests.test_rtp_rewrite import VP8_DELTA, VP8_KEY, rtp
from tongke.tokens import Claims, Role


async def _ignore(message: dict[str, Any]) -> None:
    pass


def _no_pc() -> Any:
    raise AssertionError("no PeerConnection in this test")


class Cam:
    """One published layer and the packets it has sent."""

    def __init__(self, up: UpTrack) -> None:
        self.up = up
        self.seq = itertools.count(up.ssrc % 1000)
        self.ts = itertools.count(0, 3000)

    def send(self, payload: bytes) -> None:
        self.up.on_rtp(rtp(next(self.seq) & 0xFFFF, next(self.ts), self.up.ssrc, payload), 0)


def uptrack(pid: str, source: str, ssrc: int, codec: str = "vp8") -> UpTrack:
    return UpTrack(
        track_id=f"{pid}/{source}/h",
        source=source,
        layer="h",
        kind="video",
        codec=codec,
        clock_rate=90000,
        ssrc=ssrc,
        payload_type=96,
        rtx_ssrc=None,
        rtx_payload_type=None,
        request_keyframe=lambda up: None,
        request_nack=lambda up: None,
    )


class Lesson:
    def __init__(self, tmp_path: Any) -> None:
        self.now = [1000.0]
        self.room = Room(
            LessonInfo(room="r", master="c-master", points=["p-a", "p-b"]), timeline_dir=tmp_path
        )
        self.room.director.clock = lambda: self.now[0]
        self.director = self.room.director
        self.ends: list[LessonEnd] = []
        self.room.classroom.end_listeners.append(self.ends.append)
        self.timeline = tmp_path / "r.jsonl"

    async def join(self, classroom: str, role: Role) -> Participant:
        p = Participant(
            participant_id=self.room.next_participant_id(),
            claims=Claims("r", classroom, role, classroom, classroom, 0),
            name=classroom,
            send_json=_ignore,
            pc_factory=_no_pc,
            on_tracks=self.room.on_tracks,
        )
        # What each one receives is asked of the router here; no media is negotiated.
        p.subscriber.update = lambda sources: None  # type: ignore[method-assign]
        await self.room.add(p)
        return p

    def publish(self, p: Participant, source: str, ssrc: int, codec: str = "vp8") -> Cam:
        cam = Cam(uptrack(p.id, source, ssrc, codec))
        self.room.on_tracks(p, [cam.up], [])
        cam.send(VP8_KEY)
        return cam

    def on_air(self) -> str | None:
        return self.director.describe()["on_air"]

    def received(self, p: Participant) -> set[str]:
        return {s.source for s in self.room.router.sources_for(p)}

    async def close(self) -> None:
        for p in list(self.room.participants.values()):
            await p.close()
        await self.room.close(end_lesson=False)


@pytest.fixture
async def lesson(tmp_path: Any) -> Any:
    lesson = Lesson(tmp_path)
    yield lesson
    await lesson.close()


async def test_automatic_rules_follow_the_lesson(lesson: Lesson) -> None:
    director = lesson.director
    master = await lesson.join("c-master", Role.MASTER)
    a = await lesson.join("p-a", Role.POINT)
    teacher = lesson.publish(master, "teacher_camera", 1111)
    lesson.publish(master, "board_camera", 2222)
    cam_a = lesson.publish(a, "point_camera", 3333)
    director.tick()
    assert lesson.on_air() == f"{master.id}/teacher_camera"
    assert director.reason == "teacher"
    program = director.program
    assert program is not None and program.codec == "vp8"

    # Courseware shared: on air at once, for the hold, then back to the teacher.
    courseware = lesson.publish(master, "courseware", 4444)
    director.tick()
    assert lesson.on_air() == f"{master.id}/courseware"
    lesson.now[0] += COURSEWARE_HOLD_S + 0.1
    for cam in (teacher, courseware, cam_a):
        cam.send(VP8_DELTA)
    director.tick()
    assert lesson.on_air() == f"{master.id}/teacher_camera"

    # A call-on cuts to the point's camera at once; the release cuts back.
    await lesson.room.classroom.start(master, {})
    await lesson.room.classroom.call_on(master, {"classroom": "p-a"})
    assert lesson.on_air() == f"{a.id}/point_camera"
    assert director.reason == "call_on"
    await lesson.room.classroom.call_off(master, {})
    assert lesson.on_air() == f"{master.id}/teacher_camera"

    # A frozen teacher camera is not on air: the board camera stands in.
    lesson.now[0] += 10
    teacher.up.last_packet_at -= 10
    director.tick()
    assert lesson.on_air() == f"{master.id}/board_camera"
    assert [c["reason"] for c in director.describe()["cuts"]][-1] == "board"


async def test_a_camera_of_another_codec_is_never_cut_in(lesson: Lesson) -> None:
    master = await lesson.join("c-master", Role.MASTER)
    a = await lesson.join("p-a", Role.POINT)
    lesson.publish(master, "teacher_camera", 1111, codec="vp8")
    lesson.publish(a, "point_camera", 3333, codec="h264")
    lesson.director.tick()
    await lesson.room.classroom.start(master, {})
    await lesson.room.classroom.call_on(master, {"classroom": "p-a"})
    assert lesson.on_air() == f"{master.id}/teacher_camera"
    with pytest.raises(SignallingError) as err:
        await lesson.director.command(master, {"track": f"{a.id}/point_camera"})
    assert err.value.code == "codec_mismatch"


async def test_manual_mode_holds_the_masters_shot_until_handed_back(lesson: Lesson) -> None:
    director = lesson.director
    master = await lesson.join("c-master", Role.MASTER)
    a = await lesson.join("p-a", Role.POINT)
    lesson.publish(master, "teacher_camera", 1111)
    lesson.publish(master, "board_camera", 2222)
    cam_a = lesson.publish(a, "point_camera", 3333)
    director.tick()
    await director.command(master, {"track": f"{master.id}/board_camera"})
    assert lesson.on_air() == f"{master.id}/board_camera"
    assert director.mode == "manual"
    await lesson.room.classroom.start(master, {})
    await lesson.room.classroom.call_on(master, {"classroom": "p-a"})
    assert lesson.on_air() == f"{master.id}/board_camera"  # the human decides
    # Wrong input and wrong roles change nothing.
    for message, code in (
        ({"track": "nobody/camera"}, "unknown_track"),
        ({"mode": "sideways"}, "bad_request"),
        ({"track": f"{master.id}/program"}, "unknown_track"),
    ):
        with pytest.raises(SignallingError) as err:
            await director.command(master, message)
        assert err.value.code == code
    with pytest.raises(SignallingError) as err:
        await director.command(a, {"mode": "auto"})
    assert err.value.code == "forbidden"
    assert lesson.on_air() == f"{master.id}/board_camera"
    cam_a.send(VP8_DELTA)
    await director.command(master, {"mode": "auto"})
    assert lesson.on_air() == f"{a.id}/point_camera"  # the rules again: a is called on


async def test_the_program_cuts_at_the_keyframe_in_one_stream_and_is_recorded(
    lesson: Lesson,
) -> None:
    master = await lesson.join("c-master", Role.MASTER)
    a = await lesson.join("p-a", Role.POINT)
    teacher = lesson.publish(master, "teacher_camera", 1111)
    cam_a = lesson.publish(a, "point_camera", 3333)
    lesson.director.tick()
    program = lesson.director.program
    assert program is not None
    sink = MemorySink()  # what the recorder's tap does with every routed source
    lesson.room.router.attach_sink(program, sink, ssrc=0x5151, payload_type=96)
    teacher.send(VP8_KEY)
    teacher.send(VP8_DELTA)
    await lesson.room.classroom.start(master, {})
    await lesson.room.classroom.call_on(master, {"classroom": "p-a"})
    teacher.send(VP8_DELTA)  # still the teacher: a's keyframe has not come
    cam_a.send(VP8_DELTA)
    cam_a.send(VP8_KEY)
    teacher.send(VP8_DELTA)
    cam_a.send(VP8_DELTA)
    got = [RtpPacket.parse(p, HeaderExtensionsMap()) for p in sink.rtp]
    assert [p.payload for p in got] == [VP8_KEY, VP8_DELTA, VP8_DELTA, VP8_KEY, VP8_DELTA]
    seqs = [p.sequence_number for p in got]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]


def _frame(cam: Cam, size: int) -> None:
    """One delta frame of `size` payload bytes, in 1000-byte packets."""
    ts = next(cam.ts)
    left = size
    while left > 0:
        chunk = min(left, 1000)
        payload = (b"\x10\x01" if left == size else b"\x00\x01") + b"x" * chunk
        cam.up.on_rtp(rtp(next(cam.seq) & 0xFFFF, ts, cam.up.ssrc, payload), 0)
        left -= chunk


async def test_a_new_slide_is_seen_from_frame_sizes_and_puts_the_courseware_on_air(
    lesson: Lesson,
) -> None:
    master = await lesson.join("c-master", Role.MASTER)
    teacher = lesson.publish(master, "teacher_camera", 1111)
    courseware = lesson.publish(master, "courseware", 4444)
    for _ in range(8):
        _frame(courseware, 200)  # a slide standing still
    lesson.now[0] += COURSEWARE_HOLD_S + 1
    teacher.send(VP8_DELTA)
    lesson.director.tick()
    assert lesson.on_air() == f"{master.id}/teacher_camera"
    _frame(courseware, 30_000)  # the next slide
    _frame(courseware, 200)  # the frame after it closes the big one
    assert lesson.on_air() == f"{master.id}/courseware"
    slides = [e for e in read_timeline(lesson.timeline) if e.kind == "slide"]
    assert [e.get("index") for e in slides] == [1]
    # A keyframe (a receiver asked for one) is big too, and no slide.
    courseware.send(VP8_KEY + b"k" * 40_000)
    _frame(courseware, 200)
    assert len([e for e in read_timeline(lesson.timeline) if e.kind == "slide"]) == 1


async def test_who_receives_the_program(lesson: Lesson) -> None:
    master = await lesson.join("c-master", Role.MASTER)
    a = await lesson.join("p-a", Role.POINT)
    b = await lesson.join("p-b", Role.POINT)
    tutor = await lesson.join("p-b", Role.TUTOR)
    observer = await lesson.join("ops", Role.OBSERVER)
    lesson.publish(master, "teacher_camera", 1111)
    lesson.publish(master, "courseware", 4444)
    lesson.publish(a, "point_camera", 3333)
    mic = uptrack(master.id, "classroom_mic", 5555, codec="opus")
    mic.kind, mic.video = "audio", False
    lesson.room.on_tracks(master, [mic], [])
    lesson.director.tick()
    # Nobody pays for a second copy of a camera unless they ask: the master's monitor does.
    assert "program" not in lesson.received(master) | lesson.received(observer)
    await lesson.director.watch_program(master, {"on": True})
    await lesson.director.watch_program(observer, {"on": True})
    assert "program" in lesson.received(master) and "program" in lesson.received(observer)
    await lesson.director.watch_program(observer, {"on": False})
    assert "program" not in lesson.received(observer)
    for who, message, code in ((a, {"on": True}, "forbidden"), (master, {"on": 1}, "bad_request")):
        with pytest.raises(SignallingError) as err:
            await lesson.director.watch_program(who, message)
        assert err.value.code == code
    assert lesson.received(a) == {"teacher_camera", "courseware", "classroom_mic"}

    # A point chooses the program alone (a thin link); its tutor may choose for it.
    await lesson.director.set_receive_mode(a, {"mode": "program"})
    assert lesson.received(a) == {"program", "classroom_mic"}
    await lesson.director.set_receive_mode(a, {"mode": "all"})
    assert "program" not in lesson.received(a)
    await lesson.director.set_receive_mode(tutor, {"mode": "program"})
    assert lesson.received(b) == {"program", "classroom_mic"}
    assert lesson.received(tutor) == {"program", "classroom_mic"}
    with pytest.raises(SignallingError) as err:
        await lesson.director.set_receive_mode(observer, {"mode": "program"})
    assert err.value.code == "forbidden"
    with pytest.raises(SignallingError) as err:
        await lesson.director.set_receive_mode(master, {"mode": "program", "classroom": "p-x"})
    assert err.value.code == "unknown_point"

    # Automatic: a point whose downlink estimate stays thin gets the program alone.
    await lesson.director.set_receive_mode(b, {"mode": "auto"})
    await lesson.director.set_receive_mode(b, {"mode": "all"})
    await lesson.director.set_receive_mode(b, {"mode": "auto"})
    a.subscriber.bandwidth = SimpleNamespace(estimate_bps=700_000, close=lambda: None)  # type: ignore[assignment]
    await lesson.director.set_receive_mode(a, {"mode": "auto"})
    lesson.director.tick()
    assert "program" not in lesson.received(a)  # one low reading is not a thin link
    lesson.now[0] += PROGRAM_HOLD_S
    lesson.director.tick()
    assert lesson.received(a) == {"program", "classroom_mic"}
    a.subscriber.bandwidth = SimpleNamespace(estimate_bps=4_000_000, close=lambda: None)  # type: ignore[assignment]
    lesson.director.tick()
    lesson.now[0] += director_module.ALL_HOLD_S
    lesson.director.tick()
    assert "program" not in lesson.received(a)


async def test_the_lesson_end_is_told_once_however_it_ends(tmp_path: Any) -> None:
    rooms = Rooms(tmp_path / "rooms.json")
    ends: list[LessonEnd] = []
    rooms.lesson_end_listeners.append(ends.append)
    # By the master.
    room = rooms.open(LessonInfo(room="one", title="数学"))
    master = Participant(
        participant_id="p1",
        claims=Claims("one", "c-master", Role.MASTER, "m", "m", 0),
        name="m",
        send_json=_ignore,
        pc_factory=_no_pc,
        on_tracks=room.on_tracks,
    )
    await room.add(master)
    await room.classroom.start(master, {})
    await room.classroom.end(master, {})
    assert [(e.room, e.reason, e.title) for e in ends] == [("one", "master", "数学")]
    assert await rooms.close("one")
    assert len(ends) == 1  # closing an ended lesson's room tells nothing new
    # By the timetable (end plus grace), on the classroom's clock.
    timed = rooms.open(LessonInfo(room="two", starts_at=100.0, ends_at=200.0))
    timed.classroom.clock = lambda: 10_000.0
    timed.classroom.tick()
    assert timed.classroom.phase is Phase.ENDED
    assert ends[-1].room == "two" and ends[-1].reason == "timetable"
    # By the room closing before the lesson ended.
    rooms.open(LessonInfo(room="three"))
    assert await rooms.close("three")
    assert ends[-1].room == "three" and ends[-1].reason == "closed"
    assert [e.describe()["reason"] for e in ends] == ["master", "timetable", "closed"]
    # A server shutting down ends no lesson (it resumes after the restart).
    rooms.open(LessonInfo(room="four"))
    await rooms.close_all()
    assert [e.room for e in ends] == ["one", "two", "three"]
    # Nor does a restart re-tell an ended one.
    again = Rooms(tmp_path / "rooms.json")
    again.lesson_end_listeners.append(ends.append)
    await again.close_all()
    assert len(ends) == 3


def test_slide_packets_do_not_confuse_the_frame_parser() -> None:
    seen: list[int] = []
    watch = director_module.SlideWatch("vp8", lambda: seen.append(1), lambda: 0.0)
    watch.send_rtp(b"\x80")  # not RTP: ignored
    watch.send_rtp(struct.pack("!BBHII", 0x80, 96, 1, 0, 1))  # empty payload
    assert seen == []


async def test_a_recorder_tap_sees_the_program_come_and_go(lesson: Lesson) -> None:
    added: list[MediaSource] = []
    removed: list[MediaSource] = []
    tap = SimpleNamespace(source_added=added.append, source_removed=removed.append)
    lesson.room.router.add_tap(tap)
    master = await lesson.join("c-master", Role.MASTER)
    lesson.publish(master, "teacher_camera", 1111)
    lesson.director.tick()
    assert "director/program" in [s.track_id for s in added]
    # The camera leaves and nothing stands in: the program holds no camera.
    await lesson.room.remove(master)
    assert lesson.director.program is not None and lesson.director.program.layers == {}
    lesson.director.close()
    assert "director/program" in [s.track_id for s in removed]
