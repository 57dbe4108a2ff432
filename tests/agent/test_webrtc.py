"""Packets from the encoded tracks through a real aiortc PeerConnection pair on loopback."""

from __future__ import annotations

import asyncio

import aioice.ice
import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from classroom_agent import pixelclock
from classroom_agent.quality import TrackQuality
from classroom_agent.testcard import SyntheticAudio, SyntheticVideo
from classroom_agent.tracks import EncodedAudioTrack, EncodedVideoTrack, add_encoded_track

from .conftest import wait_for, within


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    # aioice leaves 127.0.0.1 out of host candidates; this machine may have nothing else.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_receiver_decodes_published_packets(loopback_ice: None, codec: str) -> None:
    video = EncodedVideoTrack(SyntheticVideo(640, 360, 30, "Teacher camera", seed=1), codec, 800)
    audio = EncodedAudioTrack(SyntheticAudio())
    config = RTCConfiguration(iceServers=[])  # no STUN: stay on loopback
    publisher, subscriber = RTCPeerConnection(config), RTCPeerConnection(config)
    received: dict[str, asyncio.Future] = {"video": asyncio.Future(), "audio": asyncio.Future()}
    subscriber.on("track", lambda track: received[track.kind].set_result(track))
    video_tx = add_encoded_track(publisher, video)
    add_encoded_track(publisher, audio)
    try:
        await publisher.setLocalDescription(await publisher.createOffer())
        await subscriber.setRemoteDescription(publisher.localDescription)
        await subscriber.setLocalDescription(await subscriber.createAnswer())
        await publisher.setRemoteDescription(subscriber.localDescription)
        assert f"{'H264' if codec == 'h264' else 'VP8'}/90000" in publisher.localDescription.sdp

        remote_video = await within(received["video"])
        meter = TrackQuality("video", "teacher_camera")
        frames = [await within(remote_video.recv()) for _ in range(15)]
        for frame in frames:
            meter.add_frame(frame)
        clocks = [pixelclock.read_frame(f) for f in frames]
        assert None not in clocks
        assert all(0 <= pixelclock.age_ms(c) < 5000 for c in clocks)
        receiver = next(r for r in subscriber.getReceivers() if r.track.kind == "video")
        await meter.poll_receiver(receiver)
        snap = meter.snapshot()
        assert snap["packets_received"] > 0 and snap["packets_lost"] == 0
        assert snap["loss_ratio"] == 0.0 and snap["clock_misses"] == 0
        assert 0 <= snap["latency_p50_ms"] <= snap["latency_p95_ms"] < 5000
        assert (frames[-1].width, frames[-1].height) == (640, 360)
        remote_audio = await within(received["audio"])
        sound = await within(remote_audio.recv())
        assert isinstance(sound, av.AudioFrame) and sound.sample_rate == 48000

        # A PLI from the far end (the SFU relaying a subscriber's) yields a keyframe.
        keyframes = video.stats()["keyframes"]
        sender = video_tx.sender
        await sender._handle_rtcp_packet(
            RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc)
        )
        await wait_for(lambda: video.stats()["keyframes"] > keyframes, what="keyframe after PLI")
    finally:
        await publisher.close()
        await subscriber.close()
        video.stop()
        audio.stop()
