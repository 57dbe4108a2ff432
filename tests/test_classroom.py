"""The classroom protocol against a real server: phase, hands, chat, call-on, mute, attendance.

Clients are the agent's LessonClient (real WebSocket, real aiortc peers where media
matters). Every refused action must leave the others' view unchanged.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from classroom_agent.client import ClientEvents, LessonClient, LessonError, Publication
from tests.lesson_server import ServerProcess
from tests.media import PatternTrack, ToneTrack, first_frames, wait_for


@dataclass
class Member:
    client: LessonClient
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> dict[str, Any]:
        states = [m["state"] for m in self.messages if m.get("type") == "classroom"]
        return states[-1] if states else {}

    def history(self) -> list[dict[str, Any]]:
        """The chat history the server sent on joining."""
        first = next(m for m in self.messages if m.get("type") == "classroom")
        return first["state"]["chat"]

    def chats(self) -> list[dict[str, Any]]:
        return [m["message"] for m in self.messages if m.get("type") == "chat"]

    async def do(self, kind: str, **fields: Any) -> dict[str, Any]:
        return await self.client.request({"type": kind, **fields})

    async def refused(self, kind: str, code: str, **fields: Any) -> str:
        with pytest.raises(LessonError) as err:
            await self.do(kind, **fields)
        assert err.value.code == code, err.value
        return err.value.message


@dataclass
class Lesson:
    server: ServerProcess
    room: str
    members: list[Member] = field(default_factory=list)

    async def join(self, classroom: str, role: str, name: str = "") -> Member:
        member = Member(client=None)  # type: ignore[arg-type]
        events = ClientEvents(on_message=member.messages.append)
        token = self.server.token(self.room, classroom, role, name=name or classroom)
        member.client = LessonClient(self.server.url, self.room, token, events=events)
        await member.client.connect()
        await wait_for(lambda: bool(member.state), what=f"{classroom}'s classroom state")
        self.members.append(member)
        return member

    async def close(self) -> None:
        for m in self.members:
            await m.client.close()


@pytest.fixture
async def lesson(server: ServerProcess, room: str) -> AsyncIterator[Lesson]:
    lesson = Lesson(server, room)
    yield lesson
    await lesson.close()


async def test_lesson_phase_hands_and_wrong_roles(lesson: Lesson) -> None:
    master = await lesson.join("c-master", "master", "城关小学")
    a = await lesson.join("p-xiaohe", "point", "小河教学点")
    b = await lesson.join("p-shanbei", "point", "山背教学点")
    observer = await lesson.join("ops", "observer")
    assert master.state["phase"] == "waiting"
    assert [p["classroom"] for p in master.state["points"]] == ["p-xiaohe", "p-shanbei"]

    # Before the lesson starts: no hands, no call-on; a point may not start it.
    await a.refused("hand_raise", "not_live")
    await a.refused("lesson_start", "forbidden")
    await master.do("lesson_start")
    await wait_for(lambda: b.state.get("phase") == "live", what="b sees the lesson live")
    await master.refused("lesson_start", "bad_state")

    # Hands queue in the order they were raised, with times.
    await b.do("hand_raise")
    await a.do("hand_raise")
    await a.do("hand_raise")  # raising twice keeps the first place
    await wait_for(lambda: len(master.state["hands"]) == 2, what="two hands at the master")
    hands = master.state["hands"]
    assert [h["classroom"] for h in hands] == ["p-shanbei", "p-xiaohe"]
    assert hands[0]["raised_at"] <= hands[1]["raised_at"]
    assert hands[1]["name"] == "小河教学点"

    # Wrong roles are refused with a reason, and nothing changes.
    message = await a.refused("call_on", "forbidden", classroom="p-shanbei")
    assert "master" in message
    await a.refused("mute", "forbidden", classroom="p-shanbei")
    await observer.refused("chat", "forbidden", text="hello")
    # A student (replays only) cannot even join, so cannot chat into the lesson.
    student = LessonClient(
        lesson.server.url, lesson.room, lesson.server.token(lesson.room, "s-1", "student")
    )
    with pytest.raises(LessonError) as err:
        await student.connect()
    assert err.value.code == "forbidden"
    await student.close()
    await observer.refused("hand_raise", "forbidden")
    await master.refused("call_on", "unknown_point", classroom="p-nowhere")
    await master.refused("call_on", "bad_request")
    assert master.state["called_on"] is None
    assert [h["classroom"] for h in master.state["hands"]] == ["p-shanbei", "p-xiaohe"]

    # The master answers b's hand; a lowers its own.
    await master.do("hand_lower", classroom="p-shanbei")
    await wait_for(lambda: [h["classroom"] for h in a.state["hands"]] == ["p-xiaohe"])
    await a.do("hand_lower")
    await wait_for(lambda: master.state["hands"] == [], what="the queue to empty")

    # End: everyone is told; the lesson refuses actions, new points and new media.
    await master.do("lesson_end")
    await wait_for(lambda: a.state.get("phase") == "ended", what="a sees the end")
    await a.refused("hand_raise", "lesson_ended")
    await master.refused("lesson_start", "lesson_ended")
    late = LessonClient(
        lesson.server.url, lesson.room, lesson.server.token(lesson.room, "p-late", "point")
    )
    with pytest.raises(LessonError) as err:
        await late.connect()
    assert err.value.code == "lesson_ended"
    await late.close()
    with pytest.raises(LessonError) as err:
        await master.client.publish([Publication(PatternTrack(), "teacher_camera")])
    assert err.value.code == "lesson_ended"


async def test_chat_room_private_history_and_limits(lesson: Lesson) -> None:
    master = await lesson.join("c-master", "master", "城关小学")
    a = await lesson.join("p-xiaohe", "point", "小河教学点")
    b = await lesson.join("p-shanbei", "point", "山背教学点")

    await master.do("chat", text="同学们好")
    await a.do("chat", text="老师，我有问题", to="master")
    await master.do("chat", text="请说", to="p-xiaohe")
    await wait_for(lambda: len(a.chats()) == 3, what="a gets all three")
    await wait_for(lambda: len(master.chats()) == 3, what="the master gets all three")
    await wait_for(lambda: len(b.chats()) >= 1, what="b gets the room-wide one")
    private = [m for m in a.chats() if m["private_with"] == "p-xiaohe"]
    assert [m["text"] for m in private] == ["老师，我有问题", "请说"]

    # Refusals: a point talks privately only to the master; limits on length and rate.
    await a.refused("chat", "forbidden", text="hi", to="p-shanbei")
    await master.refused("chat", "unknown_point", text="hi", to="p-nowhere")
    await a.refused("chat", "chat_too_long", text="长" * 501)
    await a.refused("chat", "bad_request", text="   ")
    for i in range(4):  # a has sent one already: its burst is five
        await a.do("chat", text=f"第{i}条")
    await a.refused("chat", "chat_rate_limited", text="too fast")
    await wait_for(lambda: len(b.chats()) == 5, what="b gets a's four room-wide messages")
    assert [m["text"] for m in b.chats()] == ["同学们好", "第0条", "第1条", "第2条", "第3条"]

    # A late joiner gets the room-wide history, and the private line only if it is theirs.
    late_b = await lesson.join("p-shanbei", "point", "山背教学点")
    history = late_b.history()
    assert [m["text"] for m in history] == ["同学们好", "第0条", "第1条", "第2条", "第3条"]
    late_a = await lesson.join("p-xiaohe", "point", "小河教学点")
    assert "请说" in [m["text"] for m in late_a.history()]


async def test_attendance_counts_time_per_classroom(lesson: Lesson) -> None:
    master = await lesson.join("c-master", "master")
    a = await lesson.join("p-xiaohe", "point", "小河教学点")
    await lesson.join("p-shanbei", "point")
    await master.do("lesson_start")
    await a.client.close()
    await wait_for(
        lambda: any(
            not e["present"] and e["classroom"] == "p-xiaohe" for e in master.state["attendance"]
        ),
        what="a's leave in the attendance",
    )
    await master.do("lesson_end")
    report = lesson.server.api("GET", f"/api/rooms/{lesson.room}/attendance")
    by_classroom = {e["classroom"]: e for e in report["attendance"]}
    assert report["phase"] == "ended"
    assert set(by_classroom) == {"c-master", "p-xiaohe", "p-shanbei"}
    assert by_classroom["p-xiaohe"]["joins"] == 1
    assert by_classroom["p-xiaohe"]["last_leave"] is not None
    assert by_classroom["p-xiaohe"]["present_s"] >= 0
    assert by_classroom["p-shanbei"]["present"] is True
    # A point may not read the attendance.
    token = lesson.server.token(lesson.room, "p-shanbei", "point")
    with pytest.raises(Exception) as err:
        lesson.server.api("GET", f"/api/rooms/{lesson.room}/attendance", token=token)
    assert "403" in str(err.value)


async def test_call_on_and_mute_change_who_hears_whom(lesson: Lesson) -> None:
    master = await lesson.join("c-master", "master")
    a = await lesson.join("p-xiaohe", "point", "小河教学点")
    b = await lesson.join("p-shanbei", "point", "山背教学点")
    await master.client.publish([Publication(PatternTrack(), "teacher_camera", codec="vp8")])
    await a.client.publish(
        [
            Publication(PatternTrack(), "point_camera", codec="vp8"),
            Publication(ToneTrack(), "point_mic"),
        ]
    )
    await first_frames(master.client, {"point_camera", "point_mic"})
    await first_frames(b.client, {"teacher_camera"})
    assert {t.source for t in b.client.active_tracks()} == {"teacher_camera"}

    await master.do("lesson_start")
    await master.refused("call_off", "bad_state")
    await master.do("call_on", classroom="p-xiaohe")
    # b now sees and hears a: frames decoded from both.
    frames = await first_frames(b.client, {"point_camera", "point_mic"})
    assert frames["point_camera"].width == 320
    assert frames["point_mic"].sample_rate == 48000
    assert b.state["called_on"] == "p-xiaohe"

    await master.do("call_off")
    await wait_for(
        lambda: {t.source for t in b.client.active_tracks()} == {"teacher_camera"},
        what="b stops receiving a after the release",
    )

    # Mute: a's microphone goes to nobody, and a is told.
    await master.do("mute", classroom="p-xiaohe")
    await wait_for(lambda: "p-xiaohe" in a.state["muted"], what="a is told it is muted")
    await wait_for(
        lambda: "point_mic" not in {t.source for t in master.client.active_tracks()},
        what="the master stops hearing a",
    )
    assert "point_camera" in {t.source for t in master.client.active_tracks()}
    await master.do("unmute", classroom="p-xiaohe")
    await first_frames(master.client, {"point_mic"})

    # The timeline has the lesson's interaction, in the recording vocabulary.
    timeline = lesson.server.data_dir / "timelines" / f"{lesson.room}.jsonl"
    kinds = [json.loads(line)["kind"] for line in timeline.read_text().splitlines()]
    for kind in ("join", "lesson_started", "call_on", "call_off", "muted", "unmuted"):
        assert kind in kinds
    call_on = next(
        json.loads(line)
        for line in timeline.read_text().splitlines()
        if json.loads(line)["kind"] == "call_on"
    )
    assert call_on["name"] == "小河教学点"
    assert abs(call_on["wall"] - time.time()) < 60


async def test_timetable_drives_the_phase_with_an_injected_clock(tmp_path: Any) -> None:
    from media_server.classroom import GRACE_S, Phase
    from media_server.room import LessonInfo, Room

    now = [1000.0]
    info = LessonInfo(room="tt", points=["p-a"], starts_at=1100.0, ends_at=3800.0)
    room = Room(info, timeline_dir=tmp_path)
    classroom = room.classroom
    classroom.clock = lambda: now[0]
    classroom.tick()
    assert classroom.phase is Phase.WAITING
    now[0] = 1100.0
    classroom.tick()
    assert classroom.phase is Phase.LIVE and classroom.started_at == 1100.0
    now[0] = 3800.0 + GRACE_S - 1
    classroom.tick()
    assert classroom.phase is Phase.LIVE  # the teacher may overrun into the grace period
    now[0] = 3800.0 + GRACE_S
    classroom.tick()
    assert classroom.phase is Phase.ENDED
    classroom.close()
    # A restarted server reads the phase back from the timeline.
    again = Room(info, timeline_dir=tmp_path)
    assert again.classroom.phase is Phase.ENDED
    assert again.classroom.started_at == 1100.0
    again.classroom.close()


async def test_a_tutor_has_its_classrooms_controls_and_the_private_line(lesson: Lesson) -> None:
    master = await lesson.join("c-master", "master", "城关小学")
    a = await lesson.join("p-xiaohe", "point", "小河教学点")
    b = await lesson.join("p-shanbei", "point", "山背教学点")
    tutor = await lesson.join("p-xiaohe", "tutor", "小河教学点 · 王老师")
    await master.do("lesson_start")
    await wait_for(lambda: tutor.state.get("phase") == "live", what="the tutor sees the lesson")

    # The tutor raises its classroom's hand: the master's queue shows the classroom.
    await tutor.do("hand_raise")
    await wait_for(lambda: len(master.state["hands"]) == 1, what="the tutor's hand")
    assert master.state["hands"][0]["classroom"] == "p-xiaohe"
    assert master.state["hands"][0]["name"] == "小河教学点"
    await tutor.do("hand_lower")
    await wait_for(lambda: not master.state["hands"], what="the hand lowered by the tutor")

    # Mutes its own classroom (the server stops forwarding it), never another.
    await tutor.do("mute")
    await wait_for(lambda: "p-xiaohe" in a.state["muted"], what="the point is told")
    await tutor.refused("mute", "forbidden", classroom="p-shanbei")
    await tutor.do("unmute", classroom="p-xiaohe")
    await wait_for(lambda: not master.state["muted"], what="unmuted by the tutor")

    # The private line: the master reads it, the point's own console too, b nothing.
    await tutor.do("chat", text="王老师：信号有点卡", to="master")
    await wait_for(lambda: len(master.chats()) == 1, what="the master gets the tutor's line")
    assert master.chats()[0]["private_with"] == "p-xiaohe"
    await wait_for(lambda: len(a.chats()) == 1, what="the point's console sees it too")
    await master.do("chat", text="收到", to="p-xiaohe")
    await wait_for(lambda: len(tutor.chats()) == 2, what="the master's answer at the tutor")
    assert b.chats() == []
    await tutor.refused("chat", "forbidden", text="hi", to="p-shanbei")

    # What the master alone may do stays the master's; the tutor publishes nothing.
    for kind, fields in (("call_on", {"classroom": "p-xiaohe"}), ("lesson_end", {})):
        await tutor.refused(kind, "forbidden", **fields)
    with pytest.raises(LessonError) as err:
        await tutor.client.publish([Publication(PatternTrack(), "point_camera", codec="vp8")])
    assert err.value.code == "forbidden"
    # It is no second class: attendance counts the point once.
    points = [e for e in master.state["attendance"] if e["classroom"] == "p-xiaohe"]
    assert len(points) == 1 and points[0]["joins"] == 1
