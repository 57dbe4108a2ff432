"""Lesson recordings and replays: on-disk layout, safety-copy writer, upload, packaging,
job queue, catalog.

The agent-facing API is re-exported here: `LessonRecorder`, `LessonMeta`, `TrackWriter`,
`upload_recording`.
"""

from recording.manifest import LessonMeta, Manifest, TrackInfo
from recording.writer import DiskBudgetExceeded, LessonRecorder, TrackWriter

__all__ = [
    "DiskBudgetExceeded",
    "LessonMeta",
    "LessonRecorder",
    "Manifest",
    "TrackInfo",
    "TrackWriter",
]
