"""The room router: taps see sources come and go, sinks get continuous rewritten streams."""

from __future__ import annotations

import itertools
from typing import Any

from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from media_server.participant import Participant
from media_server.router import Router
from media_server.sink import MemorySink
from media_server.source import MediaSource
from tests.test_rtp_rewrite import VP8_DELTA, VP8_KEY, make_up, rtp
from tongke.tokens import Claims, Role


async def _ignore(message: dict[str, Any]) -> None:
    pass


def participant(router: Router, pid: str, role: Role) -> Participant:
    def no_pc() -> Any:
        raise AssertionError("no PeerConnection in this test")

    p = Participant(
        participant_id=pid,
        claims=Claims("r", f"class-{pid}", role, pid, pid, 0),
        name=pid,
        send_json=_ignore,
        pc_factory=no_pc,
        on_tracks=router.publish,
    )
    router.add(p)
    return p


class RecorderTap:
    """A tap like the recorder: one sink per source, attached when the source appears."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.sinks: dict[str, MemorySink] = {}
        self.removed: list[str] = []

    def source_added(self, source: MediaSource) -> None:
        sink = self.sinks[source.track_id] = MemorySink()
        self.router.attach_sink(source, sink, ssrc=0x5151, payload_type=96)

    def source_removed(self, source: MediaSource) -> None:
        self.removed.append(source.track_id)


async def test_a_tap_records_every_source_from_its_keyframe_and_hears_it_leave() -> None:
    router = Router()
    master = participant(router, "p1", Role.MASTER)
    requests: list[str] = []
    up = make_up("h", 1111, requests)
    tap = RecorderTap(router)
    router.add_tap(tap)
    router.publish(master, [up], [])
    assert list(tap.sinks) == ["p1/teacher_camera"]
    assert requests == ["h"]  # the sink asked for a keyframe to start from
    up.on_rtp(rtp(10, 0, 1111, VP8_DELTA), 0)  # before the keyframe: not recorded
    up.on_rtp(rtp(11, 3000, 1111, VP8_KEY), 0)
    up.on_rtp(rtp(12, 6000, 1111, VP8_DELTA), 0)
    got = [RtpPacket.parse(p, HeaderExtensionsMap()) for p in tap.sinks["p1/teacher_camera"].rtp]
    assert [p.payload for p in got] == [VP8_KEY, VP8_DELTA]
    assert {p.ssrc for p in got} == {0x5151}
    assert got[1].sequence_number == (got[0].sequence_number + 1) & 0xFFFF

    router.remove(master)
    assert tap.removed == ["p1/teacher_camera"]
    up.on_rtp(rtp(13, 9000, 1111, VP8_KEY), 0)
    assert len(tap.sinks["p1/teacher_camera"].rtp) == 2  # detached: nothing more


async def test_a_late_tap_is_told_of_existing_sources_and_points_see_only_the_master() -> None:
    router = Router()
    master = participant(router, "p1", Role.MASTER)
    point_a = participant(router, "p2", Role.POINT)
    point_b = participant(router, "p3", Role.POINT)
    router.publish(master, [make_up("h", 1, [])], [])
    cam = make_up("h", 2, [])
    cam.source = "point_camera"
    router.publish(point_a, [cam], [])
    tap = RecorderTap(router)
    router.add_tap(tap)
    assert sorted(tap.sinks) == ["p1/teacher_camera", "p2/point_camera"]
    assert [s.track_id for s in router.sources_for(point_b)] == ["p1/teacher_camera"]
    assert sorted(s.track_id for s in router.sources_for(master)) == ["p2/point_camera"]
    for p in (master, point_a, point_b):
        await p.close()


async def test_a_detached_source_cuts_between_cameras_at_a_keyframe_in_one_stream() -> None:
    """The director's program: a source no participant publishes, whose layers the owner
    points at one camera and then another."""
    router = Router()
    master = participant(router, "p1", Role.MASTER)
    teacher = make_up("h", 1111, [])
    board = make_up("h", 2222, [])
    board.source = "board_camera"
    router.publish(master, [teacher, board], [])
    program = MediaSource(
        participant="director",
        classroom="class-p1",
        name="导播",
        source="program",
        kind="video",
        codec="vp8",
        label="Program",
    )
    tap = RecorderTap(router)
    router.add_tap(tap)
    router.add_source(program)
    assert "director/program" in tap.sinks
    router.set_layers(program, {"h": teacher})
    teacher.on_rtp(rtp(100, 9000, 1111, VP8_KEY), 0)
    teacher.on_rtp(rtp(101, 12000, 1111, VP8_DELTA), 0)
    # Cut to the board: the program keeps the teacher until the board's keyframe.
    router.set_layers(program, {"h": board})
    teacher.on_rtp(rtp(102, 15000, 1111, VP8_DELTA), 0)
    board.on_rtp(rtp(7, 500, 2222, VP8_DELTA), 0)
    board.on_rtp(rtp(8, 3500, 2222, VP8_KEY), 0)
    teacher.on_rtp(rtp(103, 18000, 1111, VP8_DELTA), 0)
    board.on_rtp(rtp(9, 6500, 2222, VP8_DELTA), 0)
    got = [RtpPacket.parse(p, HeaderExtensionsMap()) for p in tap.sinks["director/program"].rtp]
    assert [p.payload for p in got] == [VP8_KEY, VP8_DELTA, VP8_DELTA, VP8_KEY, VP8_DELTA]
    seqs = [p.sequence_number for p in got]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(5)]  # one gap-free stream
    stamps = [p.timestamp for p in got]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    router.remove_source(program)
    assert "director/program" in tap.removed
    await master.close()
