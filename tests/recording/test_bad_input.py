"""Bad input gets a clear error and damages nothing already packaged or uploaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from recording.catalog import signed_base
from recording.errors import RecordingError
from recording.package import PackageResult, build_replay

from .conftest import LESSON, SECRET, make_app


@pytest.fixture
def replays_with_one(packaged: PackageResult, tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "replays"
    root.mkdir()
    shutil.copytree(packaged.directory, root / LESSON)
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _package_fails(recording: Path, replays: Path, code: str) -> str:
    before = _snapshot(replays)
    with pytest.raises(RecordingError) as exc:
        build_replay(recording, replays, force=True)
    assert exc.value.code == code
    # The replay that was already there is byte-for-byte the same, and no debris is left.
    assert _snapshot(replays) == before
    return exc.value.message


def test_truncated_track_file(recording_copy: Path, replays_with_one: Path) -> None:
    track = recording_copy / "tracks" / "courseware.ts"
    track.write_bytes(track.read_bytes()[: track.stat().st_size // 2])
    message = _package_fails(recording_copy, replays_with_one, "truncated_track")
    assert "courseware" in message and "truncated" in message


def test_missing_track_file(recording_copy: Path, replays_with_one: Path) -> None:
    (recording_copy / "tracks" / "microphone.ts").unlink()
    message = _package_fails(recording_copy, replays_with_one, "missing_track")
    assert "tracks/microphone.ts is missing" in message


def test_corrupt_timeline_line(recording_copy: Path, replays_with_one: Path) -> None:
    path = recording_copy / "timeline.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(2, '{"t": 3.0, "kind": "chat", "text": "unterminated')
    path.write_text("\n".join(lines) + "\n")
    message = _package_fails(recording_copy, replays_with_one, "bad_timeline")
    assert "line 3" in message


def test_manifest_that_lies_about_a_track(recording_copy: Path, replays_with_one: Path) -> None:
    path = recording_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    cam = next(t for t in manifest["tracks"] if t["id"] == "teacher_camera")
    cam["codec"] = "vp8"
    path.write_text(json.dumps(manifest))
    message = _package_fails(recording_copy, replays_with_one, "manifest_mismatch")
    assert "says video vp8" in message and "holds video h264" in message


async def test_path_traversal_in_a_replay_url(published_replay: Path) -> None:
    async with TestClient(TestServer(make_app(published_replay))) as client:
        base, _ = signed_base(SECRET, LESSON)
        ok = await client.get(base + "replay.json")
        assert ok.status == 200
        secret_file = published_replay / "secret.key"
        secret_file.write_text("do not serve")
        for evil in (
            "../../secret.key",
            "..%2F..%2Fsecret.key",
            "views/../../x",
            "%2e%2e/%2e%2e/secret.key",
            ".fingerprint",
        ):
            # Sent exactly as typed: no client-side normalisation of the dots.
            url = client.make_url(base + evil).with_path(base + evil, encoded=True)
            resp = await client.session.get(URL(str(url), encoded=True))
            assert resp.status in (400, 404), evil
            body = await resp.json()
            assert body["error"]["code"] in ("bad_path", "not_found"), evil
            assert "do not serve" not in json.dumps(body)
        # Another lesson's signature does not open this lesson.
        other, _ = signed_base(SECRET, "other-lesson")
        forged = other.replace("other-lesson", LESSON)
        resp = await client.get(forged + "replay.json")
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "bad_signature"


async def test_upload_chunk_with_wrong_checksum(
    recording_copy: Path, tmp_path: Path, agent_token: str
) -> None:
    from recording.upload import recording_files, upload_recording

    data = tmp_path / "server"
    async with TestClient(TestServer(make_app(data))) as client:
        specs = [
            {
                "path": p.relative_to(recording_copy).as_posix(),
                "size": p.stat().st_size,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
            for p in recording_files(recording_copy)
        ]
        headers = {"Authorization": f"Bearer {agent_token}"}
        url = f"/api/recordings/{LESSON}/uploads"
        state = await (await client.post(url, json={"files": specs}, headers=headers)).json()
        chunk = (recording_copy / "manifest.json").read_bytes()[:100]
        good = hashlib.sha256(chunk).hexdigest()
        put = f"{url}/{state['upload_id']}/files/manifest.json"
        resp = await client.put(
            put,
            params={"offset": 0},
            data=chunk[:99] + b"X",
            headers={**headers, "X-Chunk-SHA256": good},
        )
        assert resp.status == 400
        err = (await resp.json())["error"]
        assert err["code"] == "checksum_mismatch" and err["received"] == 0
        assert "nothing was stored" in err["message"]
        status = await (await client.get(f"{url}/{state['upload_id']}", headers=headers)).json()
        assert status["received"]["manifest.json"] == 0
        # The real upload still goes through afterwards and lands intact.
        done = await upload_recording(recording_copy, str(client.make_url("/")), agent_token)
        published = data / "recordings" / done["recording"]
        assert (published / "manifest.json").read_bytes() == (
            recording_copy / "manifest.json"
        ).read_bytes()
