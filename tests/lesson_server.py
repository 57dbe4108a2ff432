"""A real Tongke server in its own process, for tests and benchmarks.

Its own process so that what we assert about the server (no decoder, no encoder, tasks
and sockets cleaned up) is about the server alone, not about the clients in the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tongke.tokens import Role, issue_token

ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET = "tongke-test-secret-0123456789abcdef"


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    url: str
    secret: str
    data_dir: Path

    def token(self, room: str, classroom: str, role: str | Role, **kw: Any) -> str:
        return issue_token(self.secret, room=room, classroom=classroom, role=role, **kw)

    @property
    def admin_token(self) -> str:
        return issue_token(self.secret, room="*", classroom="ops", role=Role.ADMIN)

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def open_room(self, room: str, title: str = "") -> dict[str, Any]:
        return self.api("POST", "/api/rooms", {"room": room, "title": title or room})

    def stats(self) -> dict[str, Any]:
        return self.api("GET", "/api/stats")

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate a child process, and kill it if it has not gone within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_server_process(
    data_dir: Path,
    *,
    port: int = 0,
    extra: list[str] | None = None,
    cpu: int | None = None,
    recording: bool = True,
    stderr: Path | None = None,
    prefix: list[str] | None = None,
    root: Path = ROOT,
) -> ServerProcess:
    """`recording=False`: the server does not record its lessons (`server_recording`).
    `stderr`: a file for the server's log (benchmarks count its tracebacks).
    `prefix` runs the server under another command, e.g. `ip netns exec NAME`.
    `root`: the source tree the server runs from (a benchmark's baseline commit)."""
    env = {**os.environ, "TONGKE_SECRET": TEST_SECRET, "PYTHONPATH": str(root)}
    if not recording:
        env["TONGKE_SERVER_RECORDING"] = "false"
    cmd = [
        sys.executable,
        "-m",
        "tongke",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--ice-address",
        "127.0.0.1",
        *(extra or []),
    ]
    if "--workers" not in cmd and "--workers" in (root / "media_server" / "cli.py").read_text():
        # The suite tests the one-process server; tests/test_workers.py the workers. (A
        # benchmark's baseline commit may predate the option, and then has one process.)
        cmd += ["--workers", "1"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    cmd = [*(prefix or []), *cmd]
    err = open(stderr, "a") if stderr is not None else None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=root)
    if err is not None:
        err.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return ServerProcess(proc=proc, url=match.group(1), secret=TEST_SECRET, data_dir=data_dir)
