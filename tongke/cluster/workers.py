"""Media worker processes on this host: started, watched, restarted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from tongke.cluster.auth import internal_headers
from tongke.cluster.node import config_to_json
from tongke.cluster.nodes import BadNode, NodeInfo
from tongke.config import Config

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0
LOAD_POLL_S = 1.0


def worker_config(config: Config, slot: int) -> Config:
    """Worker `slot`'s (1-based) configuration: each binds a relay UDP socket of its own,
    so a fixed `relay_port` is the first worker's and the others take the ports after it
    (a firewall opens relay_port .. relay_port + workers - 1); 0 stays any port."""
    if not config.relay_port:
        return config
    port = config.relay_port + slot - 1
    if port > 65535:
        raise ValueError(f"relay_port {config.relay_port} leaves no UDP port for worker {slot}")
    return replace(config, relay_port=port)


@dataclass
class Worker:
    slot: int
    node_id: str
    proc: asyncio.subprocess.Process | None = None
    info: NodeInfo | None = None
    # Set when the front could not reach it: not placed on until it answers again.
    suspect: bool = False
    restarts: int = 0


class WorkerPool:
    """N media nodes in child processes; a dead one is replaced and reported."""

    def __init__(
        self,
        config: Config,
        count: int,
        *,
        host_id: str,
        on_died: Callable[[NodeInfo], None] | None = None,
    ) -> None:
        # Workers share the host's data_dir and secret; the front owns access logs,
        # room facts and the HTTP port.
        self.config = replace(config, workers=1, port=0, access_log="-")
        self.workers = [Worker(slot=i + 1, node_id=f"{host_id}-w{i + 1}") for i in range(count)]
        worker_config(self.config, count)  # a relay_port too high for the last one: now
        self.on_died = on_died
        # Told after each round of load reports (placement's in-flight counts reset).
        self.on_loads: Callable[[], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False

    def live(self) -> list[NodeInfo]:
        return [w.info for w in self.workers if w.info is not None and not w.suspect]

    def find(self, node_id: str) -> Worker | None:
        return next((w for w in self.workers if w.node_id == node_id), None)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        self._tasks = [asyncio.ensure_future(self._watch(w)) for w in self.workers]
        self._tasks.append(asyncio.ensure_future(self._poll_loads()))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for w in self.workers:
            await self._terminate(w)
        if self._session is not None:
            await self._session.close()

    async def _spawn(self, worker: Worker) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tongke",
            "media-node",
            "--node-id",
            worker.node_id,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(config_to_json(worker_config(self.config, worker.slot)).encode() + b"\n")
        await proc.stdin.drain()
        worker.proc = proc
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
            text = line.decode(errors="replace").strip()
            if not text.startswith("node ready "):
                raise BadNode(f"unexpected first line {text[:120]!r}")
            worker.info = NodeInfo.from_json(text[len("node ready ") :])
        except (TimeoutError, BadNode) as exc:
            log.error("media worker %s did not start: %s", worker.node_id, exc)
            await self._terminate(worker)
            return
        worker.suspect = False
        log.info("media worker %s (pid %d) serves at %s", worker.node_id, proc.pid, worker.info.url)

    async def _terminate(self, worker: Worker) -> None:
        proc = worker.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _watch(self, worker: Worker) -> None:
        """Restart a worker that exits; its rooms are re-placed by whoever hears first."""
        while not self._stopping:
            if worker.proc is not None:
                assert worker.proc.stdout is not None
                # Drain its stdout (nothing more is expected) until it exits.
                while await worker.proc.stdout.read(4096):
                    pass
                code = await worker.proc.wait()
                if self._stopping:
                    return
                dead, worker.info = worker.info, None
                log.error(
                    "media worker %s (pid %d) exited with code %s; its rooms move to the "
                    "other workers and it is restarted",
                    worker.node_id,
                    worker.proc.pid,
                    code,
                )
                if dead is not None and self.on_died is not None:
                    self.on_died(dead)
            started = time.monotonic()
            await self._spawn(worker)
            worker.restarts += 1
            if worker.info is None:
                # Does not start: try again, but do not spin.
                await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - started)))

    async def _poll_loads(self) -> None:
        assert self._session is not None
        while True:
            await asyncio.sleep(LOAD_POLL_S)
            for w in self.workers:
                if w.info is None:
                    continue
                try:
                    async with self._session.get(
                        w.info.url + "/_cluster/node", headers=internal_headers(self.config.secret)
                    ) as resp:
                        data = await resp.json()
                    w.info.rooms = int(data["rooms"])
                    w.info.participants = int(data["participants"])
                    w.suspect = False
                except (aiohttp.ClientError, OSError, TimeoutError, KeyError, ValueError) as exc:
                    if not w.suspect:
                        log.warning("media worker %s does not answer: %s", w.node_id, exc)
                    w.suspect = True
            if self.on_loads is not None:
                self.on_loads()
