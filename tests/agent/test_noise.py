"""The high-entropy synthetic source fills its bitrate like a camera; the test card does not."""

from __future__ import annotations

import av
import pytest

from classroom_agent import pixelclock
from classroom_agent.config import build_tracks, parse_config
from classroom_agent.encoding import VideoEncoder
from classroom_agent.noise import NoiseVideo
from classroom_agent.sources import MediaSource
from classroom_agent.testcard import SyntheticVideo

WIDTH, HEIGHT, FPS, KBPS = 640, 360, 30, 500


def encoded_kbps(source: MediaSource, seconds: int = 4) -> tuple[float, list[av.VideoFrame]]:
    """Bitrate of the last ``seconds - 1`` seconds (after the first keyframe settles)."""
    encoder = VideoEncoder("h264", WIDTH, HEIGHT, FPS, KBPS, keyframe_interval_s=2.0)
    decoder = av.CodecContext.create("h264", "r")
    measured = 0
    decoded: list[av.VideoFrame] = []
    for i in range(seconds * FPS):
        frame = source.render(i, 1_700_000_000 + i * 33)  # type: ignore[attr-defined]
        for packet in encoder.encode(frame, i * 3000):
            if i >= FPS:
                measured += packet.size
            decoded += decoder.decode(packet)
    return measured * 8 / (seconds - 1) / 1000, decoded


def test_noise_reaches_the_target_bitrate_where_the_test_card_does_not() -> None:
    noise_kbps, frames = encoded_kbps(NoiseVideo(WIDTH, HEIGHT, FPS, "Teacher camera", seed=1))
    card_kbps, _ = encoded_kbps(SyntheticVideo(WIDTH, HEIGHT, FPS, "Teacher camera", seed=1))
    assert noise_kbps >= 0.8 * KBPS, noise_kbps
    assert card_kbps <= 0.5 * KBPS, card_kbps
    # Latency stays measurable: the clock reads back from the decoded pictures.
    clocks = [pixelclock.read_frame(f) for f in frames[-10:]]
    assert clocks == [1_700_000_000 + i * 33 for i in range(len(frames) - 10, len(frames))]


def test_noise_is_deterministic_per_seed_and_moves() -> None:
    a = NoiseVideo(320, 180, 30, "A", seed=4).render(10, 0).to_ndarray()
    b = NoiseVideo(320, 180, 30, "A", seed=4).render(10, 0).to_ndarray()
    c = NoiseVideo(320, 180, 30, "A", seed=4)
    c.render(10, 0)
    assert (a == b).all()
    assert (c.render(11, 0).to_ndarray() != a).mean() > 0.5


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        ({"synthetic": True, "synthetic_pattern": "noise"}, NoiseVideo),
        ({"synthetic": True}, SyntheticVideo),
    ],
)
def test_the_pattern_is_chosen_in_the_config(agent: dict, expected: type) -> None:
    tracks = build_tracks(parse_config({"role": "master", **agent}))
    try:
        videos = {type(t.media_source) for t in tracks if t.kind == "video"}
    finally:
        for t in tracks:
            t.track.stop()
    assert videos == {expected}


def test_a_noise_source_table() -> None:
    cfg = parse_config({"source": [{"name": "cam", "type": "noise", "bitrate_kbps": 900}]})
    tracks = build_tracks(cfg)
    tracks[0].track.stop()
    assert isinstance(tracks[0].media_source, NoiseVideo)
