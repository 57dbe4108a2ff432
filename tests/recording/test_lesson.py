"""One lesson, one replay: classrooms' copies join one lesson recording on one clock."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import time
from pathlib import Path

import av
from aiohttp.test_utils import TestClient, TestServer

from recording.lesson import LESSON_JSON
from recording.manifest import load_manifest
from recording.merge import TrackCopy, merge_track
from recording.upload import upload_recording
from recording.writer import open_track_file
from tongke.tokens import Role

from .conftest import FACTS, LESSON, make_app, token


def _packets(path: Path) -> list[tuple[float, bytes, bool]]:
    with av.open(str(path)) as c:
        s = c.streams[0]
        out, first = [], None
        for p in c.demux(s):
            if p.pts is None:
                continue
            first = p.dts if first is None else first
            out.append((float((p.pts - first) * s.time_base), bytes(p), bool(p.is_keyframe)))
    return out


def _cut(src: Path, dst: Path, info, start_s: float, end_s: float) -> float:  # type: ignore[no-untyped-def]
    """Write the packets of [start_s, end_s) of `src` (from a keyframe) to `dst`, as an
    agent that ran only then would have; returns the copy's offset on the lesson clock."""
    kept = [p for p in _packets(src) if start_s <= p[0] < end_s]
    while not kept[0][2]:
        kept.pop(0)
    container, stream = open_track_file(dst, info)
    tb = stream.time_base
    for t, data, key in kept:
        packet = av.Packet(data)
        packet.pts = packet.dts = round((t - kept[0][0]) / tb)
        packet.time_base = tb
        packet.is_keyframe = key
        packet.stream = stream
        container.mux(packet)
    container.close()
    return kept[0][0]


def test_copies_of_one_track_join_without_gaps_or_duplicates(
    master_recording: Path, tmp_path: Path
) -> None:
    info = load_manifest(master_recording).track("teacher_camera")
    original = _packets(master_recording / info.file)
    # An agent copy with a hole from 4 s to 8 s (its agent restarted), a second agent copy
    # from its restart on, and the server's copy, which overlaps both.
    spans = {"agent-1": (0, 4), "agent-2": (8, 99), "server": (2, 10)}
    copies = []
    for name, (a, b) in spans.items():
        path = tmp_path / f"{name}.ts"
        copies.append(TrackCopy(path, _cut(master_recording / info.file, path, info, a, b), info))
    result = merge_track(copies, tmp_path / "merged.ts")
    merged = _packets(tmp_path / "merged.ts")
    assert len(merged) == len(original) == result.packets
    # Every moment once, in order, and each packet is the original one.
    times = [t + result.info.offset_s for t, _, _ in merged]
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.1
    assert [d for _, d, _ in merged] == [d for _, d, _ in original]
    assert all(n > 0 for n in result.used)
    # The joined file decodes from start to end.
    with av.open(str(tmp_path / "merged.ts")) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert frames == len(original)


def _as_point_copy(recording: Path, dst: Path) -> Path:
    """The teaching point's own safety copy: only its camera, under its own name."""
    shutil.copytree(recording, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    keep = [t for t in manifest["tracks"] if t["source"] == "point:p-xiaohe"]
    for t in manifest["tracks"]:
        if t not in keep:
            (dst / t["file"]).unlink()
    keep[0]["source"] = "point_camera"
    manifest["tracks"] = keep
    (dst / "manifest.json").write_text(json.dumps(manifest))
    (dst / "timeline.jsonl").write_text("")
    return dst


def _as_master_copy(recording: Path, dst: Path) -> Path:
    """The master's copy, with a manifest that tries to set the replay's facts."""
    shutil.copytree(recording, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for t in [t for t in manifest["tracks"] if t["source"].startswith("point:")]:
        (dst / t["file"]).unlink()
        manifest["tracks"].remove(t)
    manifest.update(school="s-hacker", title="Wrong title", public=True, teacher="nobody")
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


async def _wait(predicate, what: str, timeout_s: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_master_and_point_uploads_make_one_replay_with_the_servers_facts(
    master_recording: Path, tmp_path: Path
) -> None:
    data = tmp_path / "server"
    master = _as_master_copy(master_recording, tmp_path / "master" / LESSON)
    point = _as_point_copy(master_recording, tmp_path / "point" / LESSON)
    app = make_app(data, run_worker=True)
    async with TestClient(TestServer(app)) as client:
        base = str(client.make_url("/"))
        first = await upload_recording(master, base, token(Role.MASTER, classroom="c-master"))
        # The lesson waits for its teaching point rather than packaging half of it.
        assert first["waiting_for"] == ["p-xiaohe"]
        await upload_recording(point, base, token(Role.POINT, classroom="p-xiaohe"))
        student = {"Authorization": "Bearer " + token(Role.STUDENT, "replays", "s-xiaohe")}

        async def listed() -> list[dict]:
            resp = await client.get("/api/replays", headers=student)
            return (await resp.json())["replays"]

        replays = await _wait(listed, "the lesson's replay")
    assert [r["lesson"] for r in replays] == [LESSON]
    entry = json.loads((data / "replays" / LESSON / "replay.json").read_text())
    # Facts from the server, never from an uploaded manifest.
    for key in ("title", "school", "school_name", "subject", "grade", "teacher", "date"):
        assert entry[key] == getattr(FACTS, key), key
    assert entry["public"] is False
    assert entry["schools"] == ["s-yizhong", "s-xiaohe"]
    # Both classrooms' tracks, each its own view; the point's camera under its name.
    views = {v["source"]: v for v in entry["views"]}
    assert {"teacher_camera", "courseware", "microphone", "point:p-xiaohe"} <= set(views)
    assert views["point:p-xiaohe"]["label"] == "小河教学点"
    lesson = json.loads((data / "recordings" / LESSON / LESSON_JSON).read_text())
    assert lesson["state"] == "packaged" and lesson["packaged_parts"] == 2


async def test_a_lesson_is_packaged_after_a_bounded_wait_for_missing_classrooms(
    master_recording: Path, tmp_path: Path
) -> None:
    data = tmp_path / "server"
    master = _as_master_copy(master_recording, tmp_path / "master" / LESSON)
    async with TestClient(TestServer(make_app(data, upload_wait_s=1))) as client:
        state = await upload_recording(
            master, str(client.make_url("/")), token(Role.MASTER, classroom="c-master")
        )
        assert state["waiting_for"] == ["p-xiaohe"]
        record = data / "recordings" / LESSON / LESSON_JSON

        async def queued() -> bool:
            return json.loads(record.read_text())["state"] == "queued"

        await _wait(queued, "the lesson to be queued without its point", 10)


async def test_uploads_for_unknown_lessons_or_from_other_classrooms_are_refused(
    recording_copy: Path, tmp_path: Path
) -> None:
    data = tmp_path / "server"
    async with TestClient(TestServer(make_app(data, lessons={}))) as client:
        base = str(client.make_url("/"))
        refused = await client.post(
            f"/api/recordings/{LESSON}/uploads/{'0' * 24}/complete",
            headers={"Authorization": "Bearer " + token(Role.AGENT)},
        )
        assert refused.status == 422
        assert (await refused.json())["error"]["code"] == "unknown_lesson"
    async with TestClient(TestServer(make_app(data))) as client:
        base = str(client.make_url("/"))
        stranger = token(Role.AGENT, classroom="c-elsewhere")
        try:
            await upload_recording(recording_copy, base, stranger)
            raise AssertionError("a classroom outside the lesson uploaded")
        except Exception as exc:  # the uploader's error names the refusal
            assert "forbidden" in str(getattr(exc, "code", exc)) or "not the master" in str(exc)
    assert not (data / "recordings" / LESSON).exists()
