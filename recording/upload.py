"""Resumable, checksum-verified upload of a recording directory to the server.

The server keeps what it received per file; the client asks, then sends each file from
that offset in chunks, each with its SHA-256. Interrupted anywhere (network, client or
server restart), calling `upload_recording` again continues where it stopped. The server
publishes the recording only after every file matches its whole-file SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from recording.manifest import MANIFEST_NAME, TIMELINE_NAME, TRACKS_DIR
from recording.writer import UPLOADED_MARKER

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
Progress = Callable[[int, int], None]  # (bytes the server has, total bytes)


class UploadError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def recording_files(directory: Path) -> list[Path]:
    files = [directory / MANIFEST_NAME]
    if (directory / TIMELINE_NAME).exists():
        files.append(directory / TIMELINE_NAME)
    files += sorted(p for p in (directory / TRACKS_DIR).iterdir() if p.is_file())
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


async def upload_recording(
    directory: Path | str,
    base_url: str,
    token: str,
    *,
    progress: Progress | None = None,
    chunk_size: int = CHUNK,
    retries: int = 8,
    session: aiohttp.ClientSession | None = None,
) -> dict[str, Any]:
    """Upload (or resume uploading) one recording; returns the server's final status.

    Retries network errors with backoff up to `retries` times in a row; raises
    UploadError when the server refuses (bad token, broken recording) or keeps failing.
    On success the directory gets an `.uploaded` marker, which makes it eligible for
    retention.
    """
    directory = Path(directory)
    if not (directory / MANIFEST_NAME).is_file():
        raise UploadError("no_manifest", f"{directory} is not a recording (no {MANIFEST_NAME})")
    lesson = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))["lesson"]
    files = recording_files(directory)
    specs = []
    for p in files:
        specs.append(
            {
                "path": p.relative_to(directory).as_posix(),
                "size": p.stat().st_size,
                "sha256": await asyncio.to_thread(_sha256, p),
            }
        )
    total = sum(s["size"] for s in specs)
    base = f"{base_url.rstrip('/')}/api/recordings/{lesson}/uploads"
    headers = {"Authorization": f"Bearer {token}"}
    own = session is None
    session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
    failures = 0

    async def call(method: str, url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        nonlocal failures
        while True:
            try:
                async with session.request(
                    method, url, headers={**headers, **kw.pop("extra_headers", {})}, **kw
                ) as resp:
                    try:
                        body = await resp.json()
                    except (aiohttp.ContentTypeError, ValueError):
                        body = {
                            "error": {"code": f"http_{resp.status}", "message": await resp.text()}
                        }
                    if resp.status >= 500:
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                    failures = 0
                    return resp.status, body
            except (TimeoutError, aiohttp.ClientError) as exc:
                failures += 1
                if failures > retries:
                    raise UploadError(
                        "network",
                        f"upload stopped after {retries} retries: {exc}; run it again to resume",
                    ) from None
                delay = min(30.0, 0.2 * 2**failures)
                log.warning("upload: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    def refused(body: dict[str, Any]) -> UploadError:
        err = body.get("error", {})
        return UploadError(err.get("code", "refused"), err.get("message", str(body)))

    try:
        for _attempt in range(3):
            status, state = await call("POST", base, json={"files": specs})
            if status != 200:
                raise refused(state)
            upload_id = state["upload_id"]
            received: dict[str, int] = state["received"]
            chunk_size = min(chunk_size, int(state.get("max_chunk", chunk_size)))
            if progress:
                progress(sum(received.values()), total)
            if not state["complete"]:
                for spec in specs:
                    path, size = spec["path"], spec["size"]
                    offset = received.get(path, 0)
                    while offset < size:
                        data = await asyncio.to_thread(
                            _read, directory / path, offset, min(chunk_size, size - offset)
                        )
                        status, body = await call(
                            "PUT",
                            f"{base}/{upload_id}/files/{path}",
                            params={"offset": offset},
                            data=data,
                            extra_headers={"X-Chunk-SHA256": hashlib.sha256(data).hexdigest()},
                        )
                        if status == 200:
                            offset = body["received"]
                        elif status in (400, 409) and "received" in body.get("error", {}):
                            # Damaged in transit, or the server has more/less than we think.
                            offset = body["error"]["received"]
                        else:
                            raise refused(body)
                        received[path] = offset
                        if progress:
                            progress(sum(received.values()), total)
                status, state = await call("POST", f"{base}/{upload_id}/complete")
                if status == 422 and state.get("error", {}).get("code") == "checksum_mismatch":
                    continue  # the server discarded the damaged file: send it again
                if status == 409:
                    continue
                if status != 200:
                    raise refused(state)
            (directory / UPLOADED_MARKER).write_text(json.dumps(state, ensure_ascii=False))
            return state
        raise UploadError("checksum_mismatch", "the upload kept arriving damaged; giving up")
    finally:
        if own:
            await session.close()


def upload_recording_sync(
    directory: Path | str, base_url: str, token: str, progress: Progress | None = None, **kw: Any
) -> dict[str, Any]:
    """Blocking wrapper for scripts and the CLI."""
    return asyncio.run(upload_recording(directory, base_url, token, progress=progress, **kw))
