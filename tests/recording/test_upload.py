"""Resumable upload from the agent's safety copy to the server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from recording.upload import UploadError, upload_recording
from tongke.tokens import Role

from .conftest import make_app, token


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Interrupt(Exception):
    pass


async def test_interrupted_upload_resumes_and_publishes_only_when_complete(
    recording_copy: Path, tmp_path: Path, agent_token: str
) -> None:
    data = tmp_path / "server"
    async with TestClient(TestServer(make_app(data))) as client:
        base = str(client.make_url("/"))
        total_seen: list[int] = []

        def cut_off(done: int, total: int) -> None:
            total_seen.append(done)
            if done > total // 2:
                raise Interrupt  # the link drops halfway through

        with pytest.raises(Interrupt):
            await upload_recording(
                recording_copy, base, agent_token, progress=cut_off, chunk_size=64 * 1024
            )
        # Half an upload is never a recording.
        assert list((data / "recordings").iterdir()) == []
        assert not (recording_copy / ".uploaded").exists()

        resumed_from: list[int] = []
        state = await upload_recording(
            recording_copy,
            base,
            agent_token,
            chunk_size=64 * 1024,
            progress=lambda done, total: resumed_from.append(done),
        )
        # It picked up where it stopped instead of sending everything again.
        assert resumed_from[0] > 0 and resumed_from[0] >= total_seen[-2]
        assert state["complete"]
        published = data / "recordings" / state["recording"]
        for f in [
            "manifest.json",
            "timeline.jsonl",
            "tracks/teacher_camera.ts",
            "tracks/microphone.ts",
        ]:
            assert _digest(published / f) == _digest(recording_copy / f)
        assert (recording_copy / ".uploaded").exists()
        # Uploading again is a no-op that reports the same recording.
        again = await upload_recording(recording_copy, base, agent_token)
        assert again["recording"] == state["recording"]


async def test_upload_needs_an_agent_or_recorder_token_for_that_lesson(
    recording_copy: Path, client: TestClient
) -> None:
    base = str(client.make_url("/"))
    with pytest.raises(UploadError) as exc:
        await upload_recording(recording_copy, base, token(Role.STUDENT, classroom="s-yizhong"))
    assert exc.value.code == "token_role"
    with pytest.raises(UploadError) as exc:
        await upload_recording(recording_copy, base, token(Role.AGENT, room="another-lesson"))
    assert exc.value.code == "token_wrong_room"
    from recording.api import STORAGE

    assert list(client.server.app[STORAGE].recordings.iterdir()) == []
