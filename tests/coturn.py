"""coturn (Debian's ``coturn`` package) on this machine, for the TURN tests.

Listens on the given addresses over TCP and TLS (a self-signed certificate made here),
with the TURN REST shared secret the server's ``turn_secret`` uses. Loopback peers are
allowed because the media server under test lives on this machine too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
SECRET = "tongke-turn-test-secret"
REALM = "tongke.test"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Coturn:
    proc: subprocess.Popen[bytes]
    address: str
    tcp_port: int
    tls_port: int
    secret: str
    log: Path

    @property
    def urls(self) -> list[str]:
        return [
            f"turn:{self.address}:{self.tcp_port}?transport=tcp",
            f"turns:{self.address}:{self.tls_port}?transport=tcp",
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def self_signed_cert(directory: Path, name: str = "turn.tongke.test") -> tuple[Path, Path]:
    cert, key = directory / "turn-cert.pem", directory / "turn-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def start_coturn(directory: Path, address: str = "127.0.0.1") -> Coturn:
    if not Path(TURNSERVER).exists():
        pytest.skip("coturn is not installed (apt-get install -y coturn)")
    cert, key = self_signed_cert(directory)
    tcp_port, tls_port = free_port(address), free_port(address)
    log = directory / "turnserver.log"
    cmd = [
        TURNSERVER,
        "-n",  # no configuration file
        f"--listening-ip={address}",
        f"--relay-ip={address}",
        f"--listening-port={tcp_port}",
        f"--tls-listening-port={tls_port}",
        f"--cert={cert}",
        f"--pkey={key}",
        "--use-auth-secret",
        f"--static-auth-secret={SECRET}",
        f"--realm={REALM}",
        "--allow-loopback-peers",
        "--no-cli",
        "--no-dtls",
        "--fingerprint",
        f"--log-file={log}",
        "--simple-log",
        "--min-port=49152",
        "--max-port=65535",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"turnserver exited: {log.read_text() if log.exists() else ''}")
        try:
            with (
                socket.create_connection((address, tcp_port), timeout=0.2),
                socket.create_connection((address, tls_port), timeout=0.2),
            ):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("turnserver did not open its TCP and TLS ports")
    return Coturn(proc, address, tcp_port, tls_port, SECRET, log)
