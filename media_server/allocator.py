"""Share one subscriber's downlink estimate among its sources. Pure: no I/O, no clock.

Order of need, from the lesson's point of view: audio always (a lesson without sound is
no lesson; a lesson without a picture still is); then the teacher camera and the
called-on classroom's camera (the lesson's focus), the courseware, the board camera,
then other classrooms' cameras. Every video gets
the best layer that fits in that order, as long as the lowest layers of the lesson's
own sources further down stay affordable, so the teacher is sharp and the courseware
and board still have a picture. A source that does not fit even at its lowest layer is
paused for bandwidth, and the subscriber is told so. On a link too thin for the lowest
layers of both the teacher camera and the courseware, the courseware goes first: slides
are the lesson's content and a teacher can be followed by voice, a slide cannot (issue 8:
at 256 kbit/s the courseware shows and every camera is paused). Layers drop at once; they rise
only when the caller says the estimate has been stable long enough (`hold=False`), so
the picture does not flap. And they drop only when what is already being sent no
longer fits in `keep_bps` (a little more than the budget, when nothing says the link is
congested): a layer's measured rate swells with its keyframes and the estimate dips
and recovers between loss-free seconds, and a cut costs a keyframe and seconds of a
lower picture before the next rise.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYERS_LOW_TO_HIGH = ("l", "m", "h")
PRIORITY = {"teacher_camera": 0, "program": 0, "courseware": 1, "board_camera": 2}
OTHER_PRIORITY = 3
# The lesson's content: first on a link too thin for it and the teacher's face.
CONTENT = "courseware"
# What a layer costs before it has been measured (bits per second).
DEFAULT_BPS = {"h": 1_500_000, "m": 500_000, "l": 150_000}
DEFAULT_AUDIO_BPS = 48_000


@dataclass
class Candidate:
    key: str  # the source's track id
    kind: str
    source: str  # source name: teacher_camera, courseware...
    layers: dict[str, int]  # layer -> measured bits per second (0: not measured)
    pinned: str | None = None  # the subscriber's own ceiling
    user_paused: bool = False
    current: str | None = None  # the layer allocated last time (None: paused or new)
    started: bool = False  # allocated at least once
    # The lesson's focus (the called-on classroom's camera): it ranks with the teacher
    # camera, whatever its source name.
    focus: bool = False


@dataclass(frozen=True)
class Decision:
    layer: str | None  # the ceiling given; None when paused
    paused: bool  # paused for bandwidth (not by the subscriber)


def priority(c: Candidate) -> int:
    return 0 if c.focus else PRIORITY.get(c.source, OTHER_PRIORITY)


def rank(layer: str) -> int:
    return LAYERS_LOW_TO_HIGH.index(layer)


def layer_bps(c: Candidate, layer: str) -> int:
    measured = c.layers.get(layer, 0)
    if measured > 0:
        return measured
    return DEFAULT_AUDIO_BPS if c.kind == "audio" else DEFAULT_BPS.get(layer, 500_000)


def _usable(c: Candidate) -> list[str]:
    layers = sorted((x for x in c.layers if x in LAYERS_LOW_TO_HIGH), key=rank)
    if c.pinned in LAYERS_LOW_TO_HIGH:
        capped = [x for x in layers if rank(x) <= rank(c.pinned)]
        layers = capped or layers[:1]
    return layers


def current_cost(c: Candidate) -> int:
    """What a source costs at the layer it was given last (0 while paused)."""
    if c.user_paused:
        return 0
    if c.kind == "audio":
        layers = _usable(c)
        return layer_bps(c, layers[-1] if layers else "h")
    return layer_bps(c, c.current) if c.current is not None else 0


def allocate(
    budget_bps: int, candidates: list[Candidate], *, hold: bool, keep_bps: int | None = None
) -> dict[str, Decision]:
    # Judged on the budget alone, so that keeping what is sent (below) cannot hold the
    # teacher's face on a link that the courseware should have.
    thin = too_thin_for_faces(budget_bps, candidates)
    decisions = _allocate(budget_bps, candidates, hold=hold, thin=thin)
    if keep_bps is None or not any(_lowers(c, decisions[c.key]) for c in candidates):
        return decisions
    if sum(current_cost(c) for c in candidates) > keep_bps:
        return decisions
    return _allocate(keep_bps, candidates, hold=True, thin=thin)


def _lowers(c: Candidate, d: Decision) -> bool:
    if not c.started or c.kind == "audio" or c.current is None:
        return False
    return d.paused or (d.layer is not None and rank(d.layer) < rank(c.current))


def too_thin_for_faces(budget_bps: int, candidates: list[Candidate]) -> bool:
    """Whether what is left after audio cannot carry the lowest layers of the lesson's
    focus (teacher camera, called-on classroom) and of its courseware together."""
    active = [c for c in candidates if not c.user_paused]
    audio = sum(current_cost(c) for c in active if c.kind == "audio")
    videos = [c for c in active if c.kind != "audio" and _usable(c)]
    if not any(c.source == CONTENT for c in videos):
        return False
    lowest = sum(
        layer_bps(c, _usable(c)[0]) for c in videos if priority(c) == 0 or c.source == CONTENT
    )
    return lowest > budget_bps - audio


def _allocate(
    budget_bps: int, candidates: list[Candidate], *, hold: bool, thin: bool
) -> dict[str, Decision]:
    decisions: dict[str, Decision] = {}
    remaining = budget_bps
    videos: list[Candidate] = []
    for c in candidates:
        if c.user_paused:
            decisions[c.key] = Decision(layer=None, paused=False)
        elif c.kind == "audio":
            layers = _usable(c)
            top = layers[-1] if layers else "h"
            remaining -= layer_bps(c, top)
            decisions[c.key] = Decision(layer=top, paused=False)
        else:
            videos.append(c)
    videos.sort(key=lambda c: (priority(c), c.key))
    if thin:
        videos.sort(key=lambda c: c.source != CONTENT)  # stable: the rest keep their order

    # In priority order, each video takes the best layer that still leaves the lowest
    # layers of the lesson's own sources below it (teacher camera, courseware, board)
    # affordable; one that cannot, takes its lowest layer if that fits, or pauses.
    reserve = sum(
        layer_bps(c, _usable(c)[0]) for c in videos if _usable(c) and priority(c) < OTHER_PRIORITY
    )
    given: dict[str, str] = {}
    for c in videos:
        layers = _usable(c)
        if not layers:
            continue
        if priority(c) < OTHER_PRIORITY:
            reserve -= layer_bps(c, layers[0])
        if hold and c.started and c.current is None and not (thin and c.source == CONTENT):
            # Paused for bandwidth: resumes only when the estimate is stable. Not the
            # courseware on a thin link: it goes before the cameras there, and resumes
            # only at a layer that fits.
            continue
        if hold and c.current is not None:
            layers = [x for x in layers if rank(x) <= rank(c.current)] or layers[:1]
        choice = next((x for x in reversed(layers) if layer_bps(c, x) <= remaining - reserve), None)
        if choice is None and layer_bps(c, layers[0]) <= remaining:
            choice = layers[0]
        if choice is not None:
            given[c.key] = choice
            remaining -= layer_bps(c, choice)
    for c in videos:
        chosen = given.get(c.key)
        decisions[c.key] = Decision(layer=chosen, paused=chosen is None)
    return decisions
