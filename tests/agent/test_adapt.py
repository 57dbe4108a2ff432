"""The agent follows the SFU's publish_feedback: bitrates within the estimate, idle layers
not encoded, a keyframe when a layer is wanted again."""

from __future__ import annotations

import asyncio

import pytest

from classroom_agent.adapt import Feedback, FeedbackError, Layer, parse_feedback, plan
from classroom_agent.agent import ClassroomAgent
from classroom_agent.config import AgentConfig, SourceConfig, build_tracks
from classroom_agent.testcard import SyntheticVideo
from classroom_agent.tracks import EncodedVideoTrack
from tongke.tokens import issue_token

from .conftest import wait_for, within

MASTER = [
    Layer("teacher_camera", "h", "video", 1500),
    Layer("teacher_camera", "m", "video", 500),
    Layer("teacher_camera", "l", "video", 150),
    Layer("courseware", "h", "video", 400),
    Layer("classroom_mic", "h", "audio", 32),
]


def feedback(bitrate: int | None, *idle: tuple[str, str]) -> Feedback:
    return Feedback(bitrate_bps=bitrate, idle=frozenset(idle))


@pytest.mark.parametrize(
    ("fb", "expected"),
    [
        # Plenty: everything at its configured bitrate.
        (feedback(10_000_000), [1500, 500, 150, 400, 32]),
        (feedback(None), [1500, 500, 150, 400, 32]),
        # 2 Mbit/s: 0.85 * 2000 - 32 = 1668 kbps shared in proportion (of 2550).
        (feedback(2_000_000), [981, 327, 98, 262, 32]),
        # Nobody watches the top layer: its share goes to the others, capped at config.
        (feedback(1_000_000, ("teacher_camera", "h")), [None, 390, 117, 312, 32]),
        # Starved: every wanted layer at its floor (the SFU drops layers, not us).
        (feedback(100_000), [300, 100, 30, 80, 32]),
    ],
)
def test_the_estimate_is_split_over_the_wanted_layers(fb: Feedback, expected: list) -> None:
    targets = plan(MASTER, fb)
    assert [targets[(layer.source, layer.layer)] for layer in MASTER] == expected


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"bitrate_bps": -5}, "bitrate_bps must be a positive integer"),
        ({"bitrate_bps": "fast"}, "bitrate_bps must be a positive integer"),
        ({"bitrate_bps": True}, "bitrate_bps must be a positive integer"),
        ({"idle": "teacher_camera"}, "idle must be a list"),
        ({"idle": [{"source": "teacher_camera", "layer": "x"}]}, "bad idle entry"),
        ({"idle": [["teacher_camera", "h"]]}, "bad idle entry"),
    ],
)
def test_malformed_feedback_is_refused(message: dict, error: str) -> None:
    with pytest.raises(FeedbackError, match=error):
        parse_feedback({"type": "publish_feedback", **message})


def small_agent() -> ClassroomAgent:
    def video(name: str, layers: list[str], kbps: int) -> SourceConfig:
        return SourceConfig(
            name=name,
            type="synthetic",
            codec="h264",
            width=320,
            height=180,
            fps=15,
            bitrate_kbps=kbps,
            layers=layers,
        )

    config = AgentConfig(
        token=issue_token("s" * 32, room="r1", classroom="c1", role="master"),
        sources=[
            video("teacher_camera", ["h", "m", "l"], 600),
            video("courseware", ["h"], 300),
            SourceConfig(name="classroom_mic", kind="audio", codec="opus", bitrate_kbps=32),
        ],
    )
    agent = ClassroomAgent(config, record=False)
    agent.tracks = build_tracks(config)
    return agent


async def test_the_agent_follows_a_feedback_message_from_the_server() -> None:
    agent = small_agent()
    by_layer = {(p.source, p.layer): p.track for p in agent.tracks}
    try:
        agent._on_message(
            {
                "type": "publish_feedback",
                "bitrate_bps": 500_000,
                "idle": [{"source": "teacher_camera", "layer": "h"}],
            }
        )
        assert by_layer[("teacher_camera", "h")].idle
        assert not by_layer[("teacher_camera", "m")].idle
        # 0.85 * 500 - 32 = 393 kbps over m (450) + l (120) + courseware (300).
        expected = {
            ("teacher_camera", "m"): 203,
            ("teacher_camera", "l"): 54,
            ("courseware", "h"): 136,
        }
        await wait_for(
            lambda: all(by_layer[k].bitrate_kbps == v for k, v in expected.items()),
            what="encoder bitrates",
        )
        assert agent.status.uplink_estimate_bps == 500_000
        # Garbage from the network changes nothing.
        agent._on_message({"type": "publish_feedback", "bitrate_bps": 0, "idle": []})
        assert by_layer[("teacher_camera", "h")].idle
        # The top layer is wanted again; the estimate grew.
        agent._on_message({"type": "publish_feedback", "bitrate_bps": 5_000_000, "idle": []})
        assert not by_layer[("teacher_camera", "h")].idle
        await wait_for(
            lambda: by_layer[("teacher_camera", "h")].bitrate_kbps == 600, what="top layer bitrate"
        )
    finally:
        for p in agent.tracks:
            p.track.stop()


async def test_an_idle_layer_is_not_encoded_and_resumes_on_a_keyframe() -> None:
    source = SyntheticVideo(160, 90, 30, "Teacher camera", seed=2)
    top = EncodedVideoTrack(source, "h264", 300, keyframe_interval_s=60, layer="h")
    low = EncodedVideoTrack(source, "h264", 100, keyframe_interval_s=60, layer="l")
    try:
        await within(low.recv())
        first = await within(top.recv())
        assert first.is_keyframe
        top.set_idle(True)
        waiting = asyncio.ensure_future(top.recv())
        encoded_before = top.stats()["frames"]
        for _ in range(20):
            await within(low.recv())  # the shared source keeps running
        assert not waiting.done() and top.stats()["frames"] == encoded_before
        top.set_idle(False)
        resumed = await within(waiting)
        assert resumed.is_keyframe
    finally:
        top.stop()
        low.stop()


async def test_an_idle_layer_with_a_safety_copy_is_encoded_for_it_but_not_sent() -> None:
    source = SyntheticVideo(160, 90, 30, "Teacher camera", seed=3)
    top = EncodedVideoTrack(source, "h264", 300, keyframe_interval_s=60, layer="h")
    recorded: list = []
    top.add_sink(recorded.append)
    try:
        await within(top.recv())
        top.set_idle(True)
        waiting = asyncio.ensure_future(top.recv())
        await wait_for(lambda: len(recorded) >= 15, what="safety-copy packets")
        assert not waiting.done()
        top.set_idle(False)
        resumed = await within(waiting)
        assert resumed.is_keyframe
        # The safety copy saw every packet, the resumed keyframe included, once each.
        assert recorded[-1] is resumed and len({id(p) for p in recorded}) == len(recorded)
    finally:
        top.stop()
