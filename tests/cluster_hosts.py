"""Tongke nodes as separate hosts: network namespaces on one bridge, their own Redis.

Each node runs `tongke serve --redis-url ...` inside its own namespace (`cl-<tag>-nN`)
with its own address, data directory and ICE candidates; the root namespace holds the
bridge, a redis-server of our own (so that a test may stop and restart it) and the
clients. Needs root (`ip netns`); `tests.impair.netns_available()` says whether it can.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.lesson_server import ROOT, TEST_SECRET, ServerProcess, stop_process


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Hosts:
    """A bridge 10.<subnet>.0.1/24 in the root namespace and N namespaces on it."""

    tag: str
    count: int
    subnet: int = 231
    namespaces: list[str] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None
    redis_port: int = 0

    @property
    def bridge(self) -> str:
        return f"cl{self.tag}br"[:15]

    @property
    def gateway(self) -> str:
        return f"10.{self.subnet}.0.1"

    def address(self, i: int) -> str:
        return f"10.{self.subnet}.0.{10 + i}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.gateway}:{self.redis_port}/0"

    def start(self) -> Hosts:
        self.close()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(1, self.count + 1):
            ns, veth = f"cl-{self.tag}-n{i}", f"cl{self.tag}v{i}"[:15]
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", self.gateway)
        self.start_redis()
        return self

    def start_redis(self) -> None:
        if not self.redis_port:
            self.redis_port = free_port()
        self.redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                self.gateway,
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.gateway, self.redis_port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop_redis(self) -> None:
        if self.redis is not None:
            self.redis.send_signal(signal.SIGKILL)
            self.redis.wait()
            self.redis = None

    def serve(self, i: int, data_dir: Path, *extra: str) -> ServerProcess:
        """`tongke serve` on host i, one process that is this host's media node."""
        env = {**os.environ, "TONGKE_SECRET": TEST_SECRET, "PYTHONPATH": str(ROOT)}
        cmd = [
            "ip",
            "netns",
            "exec",
            f"cl-{self.tag}-n{i}",
            sys.executable,
            "-m",
            "tongke",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--ice-address",
            self.address(i),
            "--redis-url",
            self.redis_url,
            "--node-id",
            f"host{i}",
            "--workers",
            "1",
            *extra,
        ]
        env["TONGKE_HEARTBEAT_TTL_S"] = "2"
        env["TONGKE_CLUSTER_NAME"] = f"cl-{self.tag}"
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on http://\S+:(\d+)", line)
        if not match:
            proc.kill()
            raise RuntimeError(f"node {i} did not start: {line!r}")
        url = f"http://{self.address(i)}:{match.group(1)}"
        return ServerProcess(proc=proc, url=url, secret=TEST_SECRET, data_dir=data_dir)

    def close(self) -> None:
        self.stop_redis()
        for i in range(1, self.count + 1):
            subprocess.run(["ip", "netns", "del", f"cl-{self.tag}-n{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self.namespaces.clear()


def kill(server: ServerProcess) -> None:
    """A node dies mid-lesson: no goodbye to Redis, no closing handshakes."""
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()


__all__ = ["Hosts", "kill", "stop_process"]
