"""What a classroom's device says about itself: capture devices, encoders, uplink, CPU,
safety copy. The agent sends `agent_state` every few seconds (docs/protocol.md); the
master console shows it on the point's tile and the supervisor view per classroom.

The report comes from outside: only known fields of the right type and size are kept,
strings pass the display-text guard, and anything else is refused with a reason before
it is stored. A report older than `STALE_S` is shown as stale, never as current.
"""

from __future__ import annotations

import math
import time
from typing import Any

from media_server.publisher import SignallingError
from tongke.untrusted import display_text

MAX_DEVICES = 12
MAX_ENCODERS = 16
STALE_S = 20.0

_SOURCE_STATES = ("ok", "no_signal", "starting", "stopped")
_SAFETY_STATES = ("recording", "stopped", "off")


def _number(value: object, what: str, *, low: float = 0, high: float = 1e12) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SignallingError("bad_request", f"agent_state: {what} must be a number")
    if not low <= value <= high:
        raise SignallingError("bad_request", f"agent_state: {what} is out of range")
    return round(float(value), 2)


def _text(value: object, what: str, *, max_chars: int = 64) -> str:
    if value is None or value == "":
        return ""
    return display_text(value, f"agent_state.{what}", max_chars=max_chars)


def _choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SignallingError("bad_request", f"agent_state: {what} must be one of {choices}")
    return str(value)


def _list(value: object, what: str, limit: int) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise SignallingError("bad_request", f"agent_state: {what} must be a list of <= {limit}")
    if not all(isinstance(v, dict) for v in value):
        raise SignallingError("bad_request", f"agent_state: each of {what} must be an object")
    return value


def clean(message: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The stored form of one report; raises SignallingError (nothing stored) when bad."""
    devices = [
        {
            "source": _text(d.get("source"), "devices.source"),
            "kind": _choice(d.get("kind"), "devices.kind", ("video", "audio")),
            "type": _text(d.get("type"), "devices.type", max_chars=24),
            "state": _choice(d.get("state", "ok"), "devices.state", _SOURCE_STATES),
            "reason": _text(d.get("reason"), "devices.reason", max_chars=160),
        }
        for d in _list(message.get("devices"), "devices", MAX_DEVICES)
    ]
    encoders = [
        {
            "source": _text(e.get("source"), "encoders.source"),
            "layer": _choice(e.get("layer", "h"), "encoders.layer", ("h", "m", "l")),
            "codec": _choice(e.get("codec"), "encoders.codec", ("h264", "vp8", "opus")),
            "width": _number(e.get("width"), "encoders.width", high=8192),
            "height": _number(e.get("height"), "encoders.height", high=8192),
            "target_kbps": _number(e.get("target_kbps"), "encoders.target_kbps", high=100_000),
            "sent_kbps": _number(e.get("sent_kbps"), "encoders.sent_kbps", high=100_000),
            "idle": bool(e.get("idle", False)),
        }
        for e in _list(message.get("encoders"), "encoders", MAX_ENCODERS)
    ]
    cpu = message.get("cpu") or {}
    safety = message.get("safety_copy") or {}
    if not isinstance(cpu, dict) or not isinstance(safety, dict):
        raise SignallingError("bad_request", "agent_state: cpu and safety_copy must be objects")
    return {
        "at": now if now is not None else time.time(),
        "version": _text(message.get("version"), "version", max_chars=32),
        "devices": devices,
        "encoders": encoders,
        "uplink_estimate_bps": _number(message.get("uplink_estimate_bps"), "uplink", high=1e10),
        "cpu": {
            "process_pct": _number(cpu.get("process_pct"), "cpu.process_pct", high=10_000),
            "load1": _number(cpu.get("load1"), "cpu.load1", high=10_000),
            "cores": _number(cpu.get("cores"), "cpu.cores", high=4096),
        },
        "safety_copy": {
            "state": _choice(safety.get("state", "off"), "safety_copy.state", _SAFETY_STATES),
            "bytes": _number(safety.get("bytes"), "safety_copy.bytes", high=1e14),
            "free_bytes": _number(safety.get("free_bytes"), "safety_copy.free_bytes", high=1e16),
            "reason": _text(safety.get("reason"), "safety_copy.reason", max_chars=160),
        },
        "reconnects": _number(message.get("reconnects"), "reconnects", high=1e6),
    }


def summary(state: dict[str, Any] | None, now: float) -> dict[str, Any] | None:
    """A stored report as the consoles show it: with its age and what needs a look."""
    if state is None:
        return None
    # Structured, so that each console says it in its own language.
    problems: list[dict[str, Any]] = [
        {"kind": d["state"], "source": d["source"]} for d in state["devices"] if d["state"] != "ok"
    ]
    if state["safety_copy"]["state"] == "stopped":
        problems.append({"kind": "safety_copy_stopped", "reason": state["safety_copy"]["reason"]})
    cpu = state["cpu"]["process_pct"]
    cores = state["cpu"]["cores"] or 1
    if cpu is not None and cpu > 85 * cores:
        problems.append({"kind": "cpu_busy"})
    age = max(0.0, now - state["at"])
    return {**state, "age_s": round(age, 1), "stale": age > STALE_S, "problems": problems}
