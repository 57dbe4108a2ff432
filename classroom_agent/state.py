"""What the agent tells the server about itself (`agent_state`, docs/protocol.md).

Every few seconds, while connected: each capture device and whether it has a signal,
each encoder (codec, size, target and actual bitrate, idle when nobody receives it),
the server's estimate of our uplink, the agent's CPU use and the machine's load, and
the safety copy (recording, stopped and why, bytes written, disk space left). The master
console shows it on the classroom's tile; the county's supervisor view lists it.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from classroom_agent.config import AgentConfig, PublishedTrack
from recording.writer import LessonRecorder
from tongke import __version__


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total


class StateReporter:
    """Builds `agent_state` messages; keeps what it needs to turn counters into rates."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._bytes: dict[tuple[str, str], tuple[float, int]] = {}

    def cpu_pct(self) -> float:
        """This process's CPU since the last call, in percent of one core."""
        wall, cpu = time.monotonic(), time.process_time()
        last_wall, last_cpu = self._cpu_mark
        self._cpu_mark = (wall, cpu)
        return 100.0 * (cpu - last_cpu) / max(wall - last_wall, 1e-3)

    def _sent_kbps(self, published: PublishedTrack) -> float:
        key = (published.source, published.layer)
        now, sent = time.monotonic(), int(published.track.stats()["bytes"])
        last = self._bytes.get(key)
        self._bytes[key] = (now, sent)
        if last is None or now <= last[0]:
            return 0.0
        return (sent - last[1]) * 8 / (now - last[0]) / 1000

    def message(
        self,
        tracks: list[PublishedTrack],
        *,
        source_states: dict[str, str],
        uplink_bps: int | None,
        recorder: LessonRecorder | None,
        reconnects: int,
    ) -> dict[str, Any]:
        devices = []
        for cfg in self.config.sources:
            source = next((p.media_source for p in tracks if p.source == cfg.name), None)
            state = source_states.get(cfg.name) or (source.state if source else None) or "starting"
            devices.append(
                {
                    "source": cfg.name,
                    "kind": cfg.kind,
                    "type": cfg.type,
                    "state": state,
                    "reason": getattr(source, "reason", "") if state != "ok" else "",
                }
            )
        encoders = [
            {
                "source": p.source,
                "layer": p.layer,
                "codec": p.codec,
                "width": p.width or None,
                "height": p.height or None,
                "target_kbps": getattr(p.track, "bitrate_kbps", p.bitrate_kbps) or None,
                "sent_kbps": round(self._sent_kbps(p), 1),
                "idle": bool(getattr(p.track, "idle", False)),
            }
            for p in tracks
        ]
        safety: dict[str, Any] = {"state": "off"}
        if recorder is not None:
            safety = {
                "state": "stopped" if recorder.stopped else "recording",
                "reason": recorder.stopped or "",
                "bytes": _tree_bytes(recorder.directory),
                "free_bytes": shutil.disk_usage(recorder.directory).free,
            }
        return {
            "type": "agent_state",
            "version": __version__,
            "devices": devices,
            "encoders": encoders,
            "uplink_estimate_bps": uplink_bps,
            "cpu": {
                "process_pct": round(self.cpu_pct(), 1),
                "load1": round(os.getloadavg()[0], 2),
                "cores": os.cpu_count() or 1,
            },
            "safety_copy": safety,
            "reconnects": max(0, reconnects - 1),
        }
