"""A published source (teacher camera, classroom mic...) and its simulcast layers."""

from __future__ import annotations

from dataclasses import dataclass, field

from media_server.uptrack import UpTrack
from tongke.tokens import Role

LAYER_ORDER = ("h", "m", "l")  # best first

SOURCE_LABELS = {
    "teacher_camera": "Teacher camera",
    "board_camera": "Board camera",
    "courseware": "Courseware",
    "classroom_mic": "Classroom microphone",
    "point_camera": "Teaching point camera",
    "point_mic": "Teaching point microphone",
}


@dataclass(eq=False)  # identity: a source is one publisher's, not any equal-looking one
class MediaSource:
    participant: str
    classroom: str
    name: str  # display name of the participant
    source: str
    kind: str
    codec: str
    label: str
    layers: dict[str, UpTrack] = field(default_factory=dict)
    role: Role | None = None  # the publisher's role: the receive policy reads it

    @property
    def track_id(self) -> str:
        return f"{self.participant}/{self.source}"

    def best_layer(self, ceiling: str | None = None) -> UpTrack | None:
        """The highest layer at or below `ceiling` (or the lowest there is)."""
        order = LAYER_ORDER[LAYER_ORDER.index(ceiling) :] if ceiling in LAYER_ORDER else LAYER_ORDER
        for layer in order:
            if layer in self.layers:
                return self.layers[layer]
        for layer in reversed(LAYER_ORDER):
            if layer in self.layers:
                return self.layers[layer]
        return None

    def describe(self) -> dict[str, object]:
        return {
            "track": self.track_id,
            "participant": self.participant,
            "classroom": self.classroom,
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "codec": self.codec,
            "label": self.label,
            "layers": sorted(self.layers, key=LAYER_ORDER.index),
        }
