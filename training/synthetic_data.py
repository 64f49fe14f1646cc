"""A generated video-text set whose texts can only be matched by watching the video in order.

Each clip shows one coloured shape on a grey background doing one thing: moving left, right, up or down,
appearing or disappearing half-way, or turning from one colour into another. Every clip gets two texts, the
two text sources of OCL (SPEC §4):

- `text` (source S), like a subtitle: informal, partly noisy, sometimes missing the colour or the shape;
- `caption` (source C), what an image captioning model would say about the middle frame alone ("a red
  circle near the left edge"): no motion. It stands in for `clip-vip caption` with a real captioning model.

Every event played backwards is another event (left and right, up and down, appears and disappears, red to
blue and blue to red), so a clip and its time-reversed twin hold the same frames and only their order tells
the two texts apart. The test split is made of such pairs (`twin` in the manifest is the row of the other
clip): mean pooling of frame features scores both clips of a pair alike (up to video compression). The moves
are the motion-dependent queries (`motion_dependent` in the manifest). Everything is seeded and deterministic.
Videos are real H.264 mp4 files; the manifests are JSON lines.
"""

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .video_fixtures import write_video

COLORS = {
    "red": (230, 50, 40),
    "green": (40, 200, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "white": (235, 235, 235),
    "purple": (160, 60, 200),
}
SHAPES = ("circle", "square", "triangle")
MOVES = ("left", "right", "up", "down")
EVENTS = MOVES + ("appears", "disappears", "changes")
REVERSED_EVENTS = {"left": "right", "right": "left", "up": "down", "down": "up", "appears": "disappears",
                   "disappears": "appears", "changes": "changes"}
# CLIP's normalisation mean, so background patches embed to almost nothing and the position embeddings tell
# where the shape is. On a dark background the background patches drown the small initial position embeddings
# after layer norm: a model trained from random weights then never learns which way a shape moves (measured:
# a supervised left/right/up/down probe stayed at 50% within the axis after 600 steps; on grey, 98% at 200).
BACKGROUND = (123, 117, 104)


@dataclass
class ClipSpec:
    """What happens in one clip; `color_to` is the final colour of a `changes` event."""

    name: str
    shape: str
    color: str
    event: str
    x: float
    y: float
    color_to: str | None = None

    @property
    def motion_dependent(self) -> bool:
        """Only the order of the frames tells the direction of a move: any single frame shows a still shape."""
        return self.event in MOVES

    def reversed(self) -> "ClipSpec":
        """The clip played backwards: with an even frame count `n`, its frame `i` is this one's frame `n - 1 - i`."""
        if self.event == "changes":
            return replace(self, name=f"{self.name}r", color=self.color_to, color_to=self.color)
        return replace(self, name=f"{self.name}r", event=REVERSED_EVENTS[self.event])

    def state_at(self, progress: float) -> tuple[bool, str]:
        """Whether the shape is visible at `progress` in [0, 1], and its colour then."""
        visible = not ((self.event == "appears" and progress < 0.5) or (self.event == "disappears" and progress > 0.5))
        color = self.color_to if self.event == "changes" and progress > 0.5 else self.color
        return visible, color


def _shape_mask(shape: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= radius * 0.85) & (np.abs(dy) <= radius * 0.85)
    return (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)


def render_clip(spec: ClipSpec, size: int = 64, num_frames: int = 16) -> np.ndarray:
    """The clip's frames `(num_frames, size, size, 3)` uint8."""
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    radius = size * 0.14
    travel = size * 0.5
    for index in range(num_frames):
        progress = index / max(num_frames - 1, 1)
        cx, cy = spec.x * size, spec.y * size
        step = (progress - 0.5) * travel
        cx += {"left": -step, "right": step}.get(spec.event, 0.0)
        cy += {"up": -step, "down": step}.get(spec.event, 0.0)
        visible, color = spec.state_at(progress)
        frame = np.empty((size, size, 3), dtype=np.uint8)
        frame[:] = BACKGROUND
        if visible:
            frame[_shape_mask(spec.shape, size, cx, cy, radius)] = COLORS[color]
        frames[index] = frame
    return frames


def _position_words(x: float, y: float) -> str:
    horizontal = "left" if x < 0.4 else "right" if x > 0.6 else "middle"
    vertical = "top" if y < 0.4 else "bottom" if y > 0.6 else "centre"
    if horizontal == "middle" and vertical == "centre":
        return "in the centre"
    if horizontal == "middle":
        return f"near the {vertical}"
    if vertical == "centre":
        return f"on the {horizontal}"
    return f"in the {vertical} {horizontal}"


def middle_frame_caption(spec: ClipSpec, num_frames: int) -> str:
    """What a captioning model would say about the middle frame: colour, shape, place; never the motion."""
    visible, color = spec.state_at((num_frames // 2) / max(num_frames - 1, 1))
    if not visible:
        return "an empty grey frame"
    return f"a {color} {spec.shape} {_position_words(spec.x, spec.y)} of a grey frame"


def original_text(spec: ClipSpec, rng: np.random.Generator, noise: float = 0.3) -> str:
    """A subtitle-like text: the event always, colour and shape sometimes dropped, filler words sometimes added."""
    color = "" if rng.random() < noise / 2 else spec.color
    thing = " ".join(word for word in (color, spec.shape) if word)
    action = {
        "left": rng.choice(["moves left", "goes to the left", "slides left"]),
        "right": rng.choice(["moves right", "goes to the right", "slides right"]),
        "up": rng.choice(["moves up", "goes up", "rises"]),
        "down": rng.choice(["moves down", "goes down", "falls"]),
        "appears": rng.choice(["appears", "shows up", "pops in"]),
        "disappears": rng.choice(["disappears", "vanishes", "goes away"]),
        "changes": f"turns {spec.color_to}",
    }[spec.event]
    text = f"the {thing} {action}"
    if rng.random() < noise:
        text = f"{rng.choice(['ok so', 'look', 'um', 'and now', 'see'])} {text}"
    if rng.random() < noise:
        text = f"{text} {rng.choice(['i think', 'there', 'again', 'lol', 'right'])}"
    return text


def sample_specs(num_clips: int, rng: np.random.Generator, prefix: str) -> list[ClipSpec]:
    """`num_clips` clips cycling through every (shape, colour, event), each at a random place."""
    combos = [(s, c, e) for s in SHAPES for c in COLORS for e in EVENTS]
    order = rng.permutation(len(combos))
    specs = []
    for index in range(num_clips):
        shape, color, event = combos[order[index % len(combos)]]
        color_to = None
        if event == "changes":
            color_to = str(rng.choice([c for c in COLORS if c != color]))
        x, y = (float(v) for v in rng.uniform(0.3, 0.7, size=2))
        specs.append(ClipSpec(f"{prefix}{index:05d}", shape, color, event, x, y, color_to))
    return specs


def with_reversed_twins(specs: list[ClipSpec]) -> list[ClipSpec]:
    """Each clip followed by its time-reversed twin."""
    return [clip for spec in specs for clip in (spec, spec.reversed())]


def write_split(
    specs: list[ClipSpec], out_dir: str | os.PathLike, split: str, rng: np.random.Generator,
    size: int, num_frames: int, noise: float, paired: bool = False,
) -> Path:
    """Write the clips of one split as mp4 files plus `<split>.jsonl`; returns the manifest's path.

    `paired`: the specs come as (clip, time-reversed twin) pairs; each record's `twin` is the other's row.
    """
    out_dir = Path(out_dir)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    manifest = out_dir / f"{split}.jsonl"
    with open(manifest, "w") as handle:
        for row, spec in enumerate(specs):
            frames = render_clip(spec, size, num_frames)
            video = Path(split) / f"{spec.name}.mp4"
            write_video(out_dir / video, num_frames, size=(size, size), fps=8, frame_fn=frames.__getitem__,
                        options={"crf": "18"})
            record = {
                "video": str(video),
                "text": original_text(spec, rng, noise),
                "caption": middle_frame_caption(spec, num_frames),
                "event": spec.event,
                "motion_dependent": spec.motion_dependent,
                "twin": row ^ 1 if paired else None,
                "spec": asdict(spec),
            }
            handle.write(json.dumps(record) + "\n")
    return manifest


def generate_moving_shapes(
    out_dir: str | os.PathLike,
    num_train: int = 504,
    num_test: int = 126,
    size: int = 64,
    num_frames: int = 16,
    noise: float = 0.3,
    seed: int = 0,
) -> dict[str, Path]:
    """Generate train and test splits; returns `{"train": manifest, "test": manifest}`.

    The test split is `num_test // 2` clips, each followed by its time-reversed twin, with clean texts (no
    noise, nothing dropped), one per clip, as a benchmark's queries.
    """
    if num_test % 2:
        raise ValueError(f"num_test must be even (clips and their time-reversed twins), got {num_test}")
    rng = np.random.default_rng(seed)
    train_specs = sample_specs(num_train, rng, "train")
    test_specs = with_reversed_twins(sample_specs(num_test // 2, rng, "test"))
    return {
        "train": write_split(train_specs, out_dir, "train", rng, size, num_frames, noise),
        "test": write_split(test_specs, out_dir, "test", rng, size, num_frames, 0.0, paired=True),
    }
