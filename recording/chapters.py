"""Chapters: from the timeline (slides, call-ons, explicit chapters) and from slide
changes detected on the courseware track."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from recording.timeline import Event

# Mean absolute difference (0-255) between two 64x36 grey pictures above which the
# courseware shows a different slide. Camera noise and a moving pointer stay far below;
# a new slide (new title, new text blocks) lands far above.
SLIDE_THRESHOLD = 10.0
SAMPLE_EVERY_S = 0.25
# Changes closer together than this are one change (slide transitions, build animations).
MERGE_WINDOW_S = 3.0


class SlideDetector:
    def __init__(self, threshold: float = SLIDE_THRESHOLD) -> None:
        self.threshold = threshold
        self.changes: list[float] = []
        self._last: np.ndarray | None = None
        self._last_t = -1e9

    def feed(self, t: float, gray: np.ndarray) -> None:
        """`gray`: a small greyscale picture of the courseware at lesson time `t`."""
        if t - self._last_t < SAMPLE_EVERY_S:
            return
        self._last_t = t
        small = cv2.GaussianBlur(gray, (3, 3), 0).astype(np.int16)
        if self._last is not None:
            diff = float(np.mean(np.abs(small - self._last)))
            if diff > self.threshold and (
                not self.changes or t - self.changes[-1] > MERGE_WINDOW_S
            ):
                self.changes.append(round(t, 2))
        self._last = small


@dataclass
class Chapter:
    t: float
    title: str
    kind: str  # start | slide | call_on | chapter


def build_chapters(
    events: list[Event],
    detected_slides: list[float],
    duration_s: float,
    points: dict[str, str],
) -> list[Chapter]:
    chapters: list[Chapter] = [Chapter(0.0, "Start", "start")]
    slides: list[tuple[float, str]] = []
    for e in events:
        if e.kind == "slide":
            title = str(e.get("title") or (f"Slide {e.get('index')}" if e.get("index") else ""))
            slides.append((e.t, title))
        elif e.kind == "call_on":
            who = str(e.get("name") or points.get(str(e.get("classroom")), e.get("classroom")))
            chapters.append(Chapter(e.t, f"Question: {who}", "call_on"))
        elif e.kind == "chapter":
            chapters.append(Chapter(e.t, str(e.get("title") or "Chapter"), "chapter"))
    # A detected change close to an announced one is the same change; the announced one
    # has the better title.
    for t in detected_slides:
        if all(abs(t - s) > MERGE_WINDOW_S for s, _ in slides):
            slides.append((t, ""))
    slides.sort()
    for n, (t, title) in enumerate(slides, start=2):
        chapters.append(Chapter(t, title or f"Slide {n}", "slide"))
    chapters = [c for c in chapters if 0 <= c.t < max(duration_s, 0.001)]
    chapters.sort(key=lambda c: (c.t, c.kind != "start"))
    merged: list[Chapter] = []
    for c in chapters:
        if merged and c.t - merged[-1].t < 1.0:
            # Two markers within a second: keep the more informative one.
            if merged[-1].kind in ("start", "slide") and c.kind in ("call_on", "chapter"):
                merged[-1] = c
            continue
        merged.append(c)
    return merged


def chapters_json(chapters: list[Chapter]) -> list[dict[str, object]]:
    return [asdict(c) for c in chapters]
