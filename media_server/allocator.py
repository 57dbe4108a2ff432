"""Share one subscriber's downlink estimate among its sources. Pure: no I/O, no clock.

Order of need, from the lesson's point of view: audio always (a lesson without sound is
no lesson; a lesson without a picture still is); then the teacher camera and the
called-on classroom's camera (the lesson's focus), the courseware, the board camera,
then other classrooms' cameras. Layers are handed out one at a time in that order of
need, each only if it fits in what is left (`ladder`):

1. the courseware's lowest layer, then the lowest layers of the lesson's focus: on a
   link too thin for both, the slides are shown and the teacher is heard, and no other
   camera takes what is left (issue 8: at 256 kbit/s the courseware shows and every
   camera is paused);
2. the focus up to its middle layer (360p: a face and gestures one can follow);
3. the courseware's other layers (the slides at their full frame rate);
4. the lowest layers of the rest of the lesson's own sources (the board);
5. every source through the rest of its layers, by priority, other classrooms last.

So the teacher is sharp and the courseware and board still have a picture when the
link carries them, and a 1 Mbit/s point gets the teacher at 360p and the slides at
their full rate before the board at 180p. Near 1 Mbit/s the estimate saws up and down
by a tenth; with the board's 180p before the slides' full layer, the slides were the
layer that came and went, and each switch waited for a full-resolution keyframe: a
second without a new slide, up to five times a minute (bench/rural.py
1mbit-5pct-300ms, point agent: 3.4-8.6 % of seconds in 5 of 9 runs). A source that
gets no layer is paused for bandwidth, and the subscriber is told
so. Layers drop at once; they rise only when the caller says the estimate has been
stable long enough (`hold=False`), so the picture does not flap. And they drop only
when what is already being sent no longer fits in `keep_bps` (a little more than the
budget, when nothing says the link is congested): a layer's measured rate swells with
its keyframes and the estimate dips and recovers between loss-free seconds, and a cut
costs a keyframe and seconds of a lower picture before the next rise.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

LAYERS_LOW_TO_HIGH = ("l", "m", "h")
PRIORITY = {"teacher_camera": 0, "program": 0, "courseware": 1, "board_camera": 2}
OTHER_PRIORITY = 3
# The lesson's content: first on a link too thin for it and the teacher's face.
CONTENT = "courseware"
# A thin link gives the teacher's face back only when both lowest layers fit with this
# share to spare: an estimate that touches the line for a second (a probe) would
# otherwise resume the camera, spend a keyframe and pause it again a second later.
THIN_EXIT_HEADROOM = 0.15
# Repairs are not in a layer's measured rate: on a line that loses a share p of what it
# gets before our repairs, the faces' lowest layers cost 1 / (1 - p) of it there. Not
# counted, the teacher's 180p came in beside the courseware on a 256 kbit/s line with
# 10 % loss at 231-265 kbit/s readings and froze before the loss rule paused it again
# (bench/rural.py --condition 256kbit-10pct --receiver agent, main 8e860e4). At most
# this share is counted: a flood's losses at connect are not the line's.
MAX_REPAIR_SHARE = 0.3
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
    budget_bps: int,
    candidates: list[Candidate],
    *,
    hold: bool,
    keep_bps: int | None = None,
    line_loss: float = 0.0,
    held: Collection[str] = (),
) -> dict[str, Decision]:
    """`hold`: no source rises; `held`: these sources (keys) do not rise."""
    # Judged on the budget alone, so that keeping what is sent (below) cannot hold the
    # teacher's face on a link that the courseware should have.
    thin = too_thin_for_faces(budget_bps, candidates, line_loss)
    decisions = _allocate(budget_bps, candidates, hold=hold, thin=thin, held=held)
    lowered = [priority(c) for c in candidates if lowers(c, decisions[c.key])]
    if keep_bps is None or not lowered:
        return decisions
    if sum(current_cost(c) for c in candidates) > keep_bps:
        return decisions
    # A source lowered to let one the lesson needs more rise is a trade into the lesson's
    # order, not a dip to ride out: keeping would leave the board sharp and the teacher
    # blurred after the estimate recovers.
    if any(rises(c, decisions[c.key]) and priority(c) < max(lowered) for c in candidates):
        return decisions
    return _allocate(keep_bps, candidates, hold=True, thin=thin)


def rise_budgets(candidates: list[Candidate], line_loss: float = 0.0) -> list[int]:
    """The budgets, lowest first, at which the allocation gets better as the budget
    grows (what a retest of the link aims for); the last is what every source at its
    best allowed layer costs. Found by allocating at each next layer's cost: the
    ladder hands layers out greedily, so a small layer late in it (the courseware's full
    one) comes in before a large one earlier (the teacher's 720p)."""
    by_key = {c.key: c for c in candidates}

    def cost(budget: int) -> int:
        thin = too_thin_for_faces(budget, candidates, line_loss)
        decisions = _allocate(budget, candidates, hold=False, thin=thin)
        total = 0
        for key, d in decisions.items():
            c = by_key[key]
            if d.layer is not None and not c.user_paused:
                total += layer_bps(c, d.layer)
        return total

    budgets: list[int] = []
    used = cost(0)  # the audio
    # A rise adds a layer, or puts one in place of a lower one of the same source.
    extras = {
        layer_bps(c, x) - (layer_bps(c, lower) if lower is not None else 0)
        for c in candidates
        if c.kind != "audio"
        for i, x in enumerate(_usable(c))
        for lower in [None, *_usable(c)[:i]]
    }
    while True:
        # The next rise costs at most one more layer (or a layer in place of a lower one).
        steps = sorted({used + extra for extra in extras if extra > 0})
        better = next((b for b in steps if cost(b) > used), None)
        if better is None:
            return budgets
        used = cost(better)
        budgets.append(used)


def lowers(c: Candidate, d: Decision) -> bool:
    """Whether `d` takes a started video below the layer it had (or pauses it)."""
    if not c.started or c.kind == "audio" or c.current is None:
        return False
    return d.paused or (d.layer is not None and rank(d.layer) < rank(c.current))


def rises(c: Candidate, d: Decision) -> bool:
    """Whether `d` gives a started video a better layer than it had (or resumes it)."""
    if not c.started or c.kind == "audio" or d.paused or d.layer is None:
        return False
    return c.current is None or rank(d.layer) > rank(c.current)


def too_thin_for_faces(
    budget_bps: int, candidates: list[Candidate], line_loss: float = 0.0
) -> bool:
    """Whether what is left after audio cannot carry the lowest layers of the lesson's
    focus (teacher camera, called-on classroom) and of its courseware together, with
    the repairs the line's own loss (`line_loss`, before repairs) needs."""
    active = [c for c in candidates if not c.user_paused]
    audio = sum(current_cost(c) for c in active if c.kind == "audio")
    videos = [c for c in active if c.kind != "audio" and _usable(c)]
    if not any(c.source == CONTENT for c in videos):
        return False
    lowest = sum(
        layer_bps(c, _usable(c)[0]) for c in videos if priority(c) == 0 or c.source == CONTENT
    )
    left = budget_bps - audio
    if _thin_now(videos):
        left = int(left * (1 - THIN_EXIT_HEADROOM))
    return lowest > left * (1 - min(max(line_loss, 0.0), MAX_REPAIR_SHARE))


def _thin_now(videos: list[Candidate]) -> bool:
    """Whether the last allocation was thin: a face paused for bandwidth (with the
    courseware shown, or with nothing shown when the estimate touched its floor)."""
    return any(c.started and c.current is None for c in videos if priority(c) == 0)


def _allocate(
    budget_bps: int,
    candidates: list[Candidate],
    *,
    hold: bool,
    thin: bool,
    held: Collection[str] = (),
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
    given: dict[str, str] = {}
    # A face paused on a thin link stays paused until it fits with the exit's headroom,
    # even where the budget would just hold it without (256kbit-10pct: the teacher's
    # face came back three times a minute at 207-222 kbit/s and stood frozen under
    # "live" each time until the line paused it again).
    one_picture = thin and _thin_now(videos)
    for c, layer in ladder(videos, thin=thin):
        if one_picture and given:
            break
        holding = hold or c.key in held
        if holding and c.started and c.current is None and not (thin and c.source == CONTENT):
            # Paused for bandwidth: resumes only when the estimate is stable. Not the
            # courseware on a thin link: it goes before the cameras there, and resumes
            # only at a layer that fits.
            continue
        if holding and c.current is not None and rank(layer) > rank(c.current):
            continue
        before = given.get(c.key)
        if before is not None and rank(before) >= rank(layer):
            continue
        extra = layer_bps(c, layer) - (layer_bps(c, before) if before is not None else 0)
        if extra <= remaining:
            given[c.key] = layer
            remaining -= extra
    for c in videos:
        chosen = given.get(c.key)
        decisions[c.key] = Decision(layer=chosen, paused=chosen is None)
    return decisions


def ladder(videos: list[Candidate], *, thin: bool = False) -> list[tuple[Candidate, str]]:
    """The order in which layers are handed out (see the module's description); `videos`
    in priority order. On a `thin` link only the first step is climbed: one picture, the
    courseware's or (when even that does not fit) the focus's; a board camera that would
    fit where the teacher's face does not is no better use of the line than the
    courseware's repairs and keyframes."""
    usable = {c.key: _usable(c) for c in videos}
    videos = [c for c in videos if usable[c.key]]
    focus = [c for c in videos if priority(c) == 0]
    content = [c for c in videos if c.source == CONTENT and priority(c) != 0]
    first = {c.key for c in focus + content}
    own = [c for c in videos if priority(c) < OTHER_PRIORITY and c.key not in first]
    steps = [(c, usable[c.key][0]) for c in content + focus]
    if thin:
        return steps
    steps += [(c, x) for c in focus for x in usable[c.key][1:] if rank(x) <= rank("m")]
    steps += [(c, x) for c in content for x in usable[c.key][1:]]
    steps += [(c, usable[c.key][0]) for c in own]
    taken = {(c.key, x) for c, x in steps}
    steps += [(c, x) for c in videos for x in usable[c.key] if (c.key, x) not in taken]
    return steps
