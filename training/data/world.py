"""The procedural world: shapes (things) on textured bands (stuff), as images and videos.

Images: 1–4 *things* (circle, square, triangle, star, ...: one distinct colour per class) over
*stuff* bands (sky, grass, wall, ...: one colour + texture per class), with mild occlusion.
Videos: the same world with things that move, bounce, enter and leave the frame and pass in
front of each other, each keeping its track id.

The defaults are chosen so a tiny model learns the world at 64–128 px in minutes; every knob of
difficulty (classes, sizes, occlusion, rotation, noise, speed) is a `SceneConfig` field.
Every item is seeded on its own (``default_rng([seed, crc32(split), kind, index])``).
`training.data.synthetic` writes this world to disk in the real dataset formats.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from training.data.formats import DataError

__all__ = [
    "STUFF_STYLES",
    "THING_STYLES",
    "Scene",
    "SceneConfig",
    "SceneGenerator",
    "VideoScene",
]

# Class name -> RGB colour. Names are real words: they go through the CLIP text encoder.
THING_STYLES: dict[str, tuple[int, int, int]] = {
    "circle": (220, 50, 50),
    "square": (50, 90, 220),
    "triangle": (240, 200, 40),
    "star": (190, 60, 200),
    "hexagon": (245, 140, 30),
    "cross": (30, 190, 190),
    "diamond": (235, 235, 235),
}
# Class name -> base RGB colour; each also has its own texture (see `_stuff_texture`).
STUFF_STYLES: dict[str, tuple[int, int, int]] = {
    "sky": (135, 190, 240),
    "grass": (70, 150, 55),
    "wall": (150, 140, 130),
    "water": (40, 90, 160),
    "sand": (215, 195, 145),
    "road": (85, 85, 90),
}


@dataclass(frozen=True)
class SceneConfig:
    """Everything that sets the difficulty of the generated world (defaults: easy to learn)."""

    image_size: int = 128
    thing_classes: tuple[str, ...] = ("circle", "square", "triangle", "star")
    stuff_classes: tuple[str, ...] = ("sky", "grass", "wall")
    min_things: int = 1
    max_things: int = 4
    # Thing diameter as a fraction of the image side.
    thing_size: tuple[float, float] = (0.2, 0.38)
    # Largest fraction of a thing that things in front of it may hide (images).
    max_occlusion: float = 0.3
    max_rotation_deg: float = 15.0
    colour_jitter: int = 20
    noise_std: float = 4.0
    # Stuff bands per image: 1 .. max_stuff_regions (at most len(stuff_classes)).
    max_stuff_regions: int = 2
    # Video motion: speed in image sides per frame; chances a thing enters / leaves the frame.
    speed: tuple[float, float] = (0.02, 0.05)
    enter_prob: float = 0.25
    leave_prob: float = 0.25

    def __post_init__(self) -> None:
        for name in self.thing_classes:
            if name not in THING_STYLES:
                raise DataError(f"thing_classes: expected names from {list(THING_STYLES)}, "
                                f"got {name!r}")
        for name in self.stuff_classes:
            if name not in STUFF_STYLES:
                raise DataError(f"stuff_classes: expected names from {list(STUFF_STYLES)}, "
                                f"got {name!r}")
        if not self.thing_classes or not self.stuff_classes:
            raise DataError("thing_classes, stuff_classes: expected at least one class each, "
                            f"got {len(self.thing_classes)} and {len(self.stuff_classes)}")
        if len(set(self.thing_classes + self.stuff_classes)) != len(self.thing_classes) + len(
            self.stuff_classes
        ):
            raise DataError("thing_classes, stuff_classes: expected distinct names")
        if self.image_size < 16:
            raise DataError(f"image_size: expected >= 16, got {self.image_size}")
        if not 0 <= self.min_things <= self.max_things:
            raise DataError(f"min_things, max_things: expected 0 <= min <= max, got "
                            f"{self.min_things}, {self.max_things}")
        lo, hi = self.thing_size
        if not 0 < lo <= hi <= 1:
            raise DataError(f"thing_size: expected 0 < lo <= hi <= 1, got {self.thing_size}")
        if not 0 <= self.max_occlusion < 1:
            raise DataError(f"max_occlusion: expected [0, 1), got {self.max_occlusion}")
        if self.max_stuff_regions < 1:
            raise DataError(f"max_stuff_regions: expected >= 1, got {self.max_stuff_regions}")
        if not 0 < self.speed[0] <= self.speed[1]:
            raise DataError(f"speed: expected 0 < lo <= hi, got {self.speed}")
        if not (0 <= self.enter_prob and 0 <= self.leave_prob
                and self.enter_prob + self.leave_prob <= 1):
            raise DataError(f"enter_prob, leave_prob: expected non-negative with sum <= 1, got "
                            f"{self.enter_prob}, {self.leave_prob}")

    @property
    def num_things(self) -> int:
        return len(self.thing_classes)

    def categories(self) -> list[dict[str, Any]]:
        """The COCO ``categories`` list: things first, then stuff; ids 1.. in that order."""
        cats = []
        for i, name in enumerate(self.thing_classes + self.stuff_classes):
            is_thing = i < self.num_things
            colour = THING_STYLES[name] if is_thing else STUFF_STYLES[name]
            cats.append({"id": i + 1, "name": name, "supercategory": "shape" if is_thing
                         else "background", "isthing": int(is_thing), "color": list(colour)})
        return cats


@dataclass
class Scene:
    """One generated image and its panoptic ground truth.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        segment_map: (H, W) int32, the index of the segment owning each pixel (no void).
        labels: (N,) int64 contiguous classes; things (label < num_things) come first.
    """

    image: np.ndarray
    segment_map: np.ndarray
    labels: np.ndarray

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool."""
        return self.segment_map[None] == np.arange(len(self.labels))[:, None, None]


@dataclass
class VideoScene:
    """One generated video.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        masks: (N, T, H, W) bool, visible part of each track (empty where it is hidden/out).
        labels: (N,) int64 contiguous classes; thing tracks first, then stuff.
    """

    frames: np.ndarray
    masks: np.ndarray
    labels: np.ndarray


@dataclass
class _Thing:
    label: int
    radius: float
    angle: float
    colour: np.ndarray  # (3,) float32


class SceneGenerator:
    """Draws scenes and videos of the configured world.

    Item ``i`` depends only on (seed, split, i); ``split`` names an independent stream, so a
    held-out split made with the training seed still holds new scenes.
    """

    def __init__(self, seed: int = 0, *, config: SceneConfig | None = None,
                 split: str = "") -> None:
        if int(seed) < 0:
            raise DataError(f"seed: expected an int >= 0, got {seed}")
        self.seed = int(seed)
        self.config = config if config is not None else SceneConfig()
        self.split = split
        self._stream = zlib.crc32(split.encode())

    def image(self, index: int) -> Scene:
        """The ``index``-th image scene."""
        cfg, size = self.config, self.config.image_size
        rng = np.random.default_rng([self.seed, self._stream, 0, index])
        stuff_map, stuff_labels, canvas = self._background(rng)
        owner = np.full((size, size), -1, np.int32)  # thing index on top at each pixel
        full_areas: list[int] = []
        things: list[_Thing] = []
        for _ in range(rng.integers(cfg.min_things, cfg.max_things + 1)):
            for _attempt in range(30):
                thing = self._new_thing(rng)
                r = thing.radius
                centre = rng.uniform(r, size - r, size=2)
                shape = _draw_shape(cfg.thing_classes[thing.label], centre, r, thing.angle, size)
                area = int(shape.sum())
                if area < 16:
                    continue
                # Mild occlusion: every thing keeps >= (1 - max_occlusion) of its full area.
                left = [int(((owner == j) & ~shape).sum()) for j in range(len(things))]
                if all(a >= (1 - cfg.max_occlusion) * full for a, full in zip(left, full_areas,
                                                                                strict=True)):
                    owner[shape] = len(things)
                    things.append(thing)
                    full_areas.append(area)
                    canvas[shape] = self._thing_pixels(rng, thing, int(shape.sum()))
                    break
        segment_map = np.where(owner >= 0, owner, -1).astype(np.int32)
        labels = [t.label for t in things]
        for s, label in enumerate(stuff_labels):
            region = (stuff_map == s) & (owner < 0)
            if region.any():
                segment_map[region] = len(labels)
                labels.append(label)
        return Scene(_to_uint8(canvas), segment_map, np.asarray(labels, np.int64))

    def video(self, index: int, num_frames: int) -> VideoScene:
        """The ``index``-th video, ``num_frames`` long."""
        if num_frames < 1:
            raise DataError(f"num_frames: expected >= 1, got {num_frames}")
        cfg, size = self.config, self.config.image_size
        rng = np.random.default_rng([self.seed, self._stream, 1, index])
        stuff_map, stuff_labels, background = self._background(rng)
        n = max(1, int(rng.integers(cfg.min_things, cfg.max_things + 1)))
        things = [self._new_thing(rng) for _ in range(n)]
        roles = ["stay"] + list(rng.choice(["stay", "enter", "leave"], size=n - 1, p=[
            1 - cfg.enter_prob - cfg.leave_prob, cfg.enter_prob, cfg.leave_prob]))
        paths = [self._trajectory(rng, t.radius, role, num_frames)
                 for t, role in zip(things, roles, strict=True)]
        # Full shapes, then visibility by z-order (later things are in front).
        full = np.stack([
            np.stack([_draw_shape(cfg.thing_classes[t.label], path[f], t.radius, t.angle, size)
                      for f in range(num_frames)])
            for t, path in zip(things, paths, strict=True)
        ])  # (n, T, H, W)
        visible = full.copy()
        for k in range(n - 2, -1, -1):
            visible[k] &= ~full[k + 1 :].any(axis=0)
        frames = np.empty((num_frames, size, size, 3), np.uint8)
        for f in range(num_frames):
            canvas = background.copy()
            for k, thing in enumerate(things):
                shape = full[k, f]
                canvas[shape] = self._thing_pixels(rng, thing, int(shape.sum()))
            frames[f] = _to_uint8(canvas)
        keep = [k for k in range(n) if visible[k].any()]
        covered = full.any(axis=0)  # (T, H, W)
        stuff_masks = [(stuff_map == s)[None] & ~covered for s in range(len(stuff_labels))]
        keep_stuff = [s for s in range(len(stuff_labels)) if stuff_masks[s].any()]
        masks = np.concatenate([visible[keep], np.stack([stuff_masks[s] for s in keep_stuff])
                                if keep_stuff else np.zeros((0,) + covered.shape, bool)])
        labels = [things[k].label for k in keep] + [stuff_labels[s] for s in keep_stuff]
        return VideoScene(frames, masks, np.asarray(labels, np.int64))

    # -- parts -----------------------------------------------------------------------------

    def _new_thing(self, rng: np.random.Generator) -> _Thing:
        cfg = self.config
        label = int(rng.integers(cfg.num_things))
        radius = rng.uniform(*cfg.thing_size) * cfg.image_size / 2
        angle = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
        base = np.asarray(THING_STYLES[cfg.thing_classes[label]], np.float32)
        colour = base + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, size=3)
        return _Thing(label, float(radius), float(angle), colour.astype(np.float32))

    def _thing_pixels(self, rng: np.random.Generator, thing: _Thing, count: int) -> np.ndarray:
        noise = rng.normal(0.0, self.config.noise_std, size=(count, 1)).astype(np.float32)
        return thing.colour[None] + noise

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, list[int], np.ndarray]:
        """Stuff bands with wavy borders: (H, W) band index, band labels, (H, W, 3) float canvas."""
        cfg, size = self.config, self.config.image_size
        most = min(cfg.max_stuff_regions, len(cfg.stuff_classes))
        count = int(rng.integers(1, most + 1))
        chosen = rng.choice(len(cfg.stuff_classes), size=count, replace=False)
        labels = [cfg.num_things + int(c) for c in chosen]
        # Band borders at least 20% of the image apart, each a gentle sine wave.
        cuts = np.sort(rng.uniform(0.2, 0.8, size=count - 1)) if count > 1 else np.zeros(0)
        while count > 2 and np.diff(cuts).min() < 0.2:
            cuts = np.sort(rng.uniform(0.2, 0.8, size=count - 1))
        ys = np.arange(size, dtype=np.float32)[:, None]
        xs = np.arange(size, dtype=np.float32)[None, :]
        band = np.zeros((size, size), np.int32)
        for cut in cuts:
            amp = rng.uniform(0.0, 0.06) * size
            period = rng.uniform(0.5, 1.5) * size
            border = cut * size + amp * np.sin(2 * np.pi * xs / period + rng.uniform(0, 2 * np.pi))
            band += (ys >= border).astype(np.int32)
        canvas = np.zeros((size, size, 3), np.float32)
        for s, label in enumerate(labels):
            name = cfg.stuff_classes[label - cfg.num_things]
            texture = _stuff_texture(name, rng, size, cfg.noise_std)
            canvas[band == s] = texture[band == s]
        return band, labels, canvas

    def _trajectory(self, rng: np.random.Generator, radius: float, role: str,
                    num_frames: int) -> np.ndarray:
        """(T, 2) xy centres: "stay" bounces inside; "enter" comes in from an edge after frame 0;
        "leave" is an entering path played backwards, so it is gone before the last frame."""
        size = self.config.image_size
        speed = rng.uniform(*self.config.speed) * size
        if role == "stay":
            pos = rng.uniform(radius, size - radius, size=2)
            heading = rng.uniform(0, 2 * np.pi)
            vel = speed * np.array([np.cos(heading), np.sin(heading)])
            path = np.empty((num_frames, 2))
            for f in range(num_frames):
                path[f] = pos
                pos = pos + vel
                for axis in range(2):  # reflect off the borders
                    if not radius <= pos[axis] <= size - radius:
                        vel[axis] = -vel[axis]
                        pos[axis] = np.clip(pos[axis], radius, size - radius)
            return path
        # Entering: the frame it first shows (1 .. T//2), the edge, then a straight path inward.
        first = int(rng.integers(1, max(2, num_frames // 2 + 1)))
        edge = int(rng.integers(4))
        inward = speed * np.array([[1, 0], [-1, 0], [0, 1], [0, -1]][edge], np.float64)
        along = rng.uniform(radius, size - radius)
        depth = -radius + rng.uniform(0.2, 0.9) * speed  # normal coordinate at frame `first`
        start = {0: (depth, along), 1: (size - depth, along), 2: (along, depth),
                 3: (along, size - depth)}[edge]
        tangent = np.abs(inward[::-1]) / speed  # unit vector along the edge
        drift = rng.uniform(-0.3, 0.3) * speed * tangent
        times = np.arange(num_frames, dtype=np.float64)[:, None] - first
        path = np.asarray(start)[None] + times * (inward + drift)[None]
        return path[::-1].copy() if role == "leave" else path


def _stuff_texture(name: str, rng: np.random.Generator, size: int, noise_std: float) -> np.ndarray:
    """(S, S, 3) float32 texture of a stuff class: its base colour plus a class-specific pattern."""
    base = np.asarray(STUFF_STYLES[name], np.float32)
    ys = np.arange(size, dtype=np.float32)[:, None, None]
    xs = np.arange(size, dtype=np.float32)[None, :, None]
    tex = np.broadcast_to(base, (size, size, 3)).copy()
    if name == "sky":  # lighter towards the horizon
        tex += (ys / size - 0.5) * np.array([40, 30, 15], np.float32)
    elif name == "grass":  # vertical blades
        blades = rng.normal(0, 1, size=(1, size, 1)).astype(np.float32)
        tex += 16 * blades * np.array([0.6, 1.0, 0.4], np.float32)
    elif name == "wall":  # stone blocks with dark mortar lines
        bh = max(4, size // 12)
        row = (ys // bh).astype(np.int64)
        offset = (row % 2) * bh
        mortar = ((ys % bh) == 0) | (((xs + offset) % (2 * bh)) == 0)
        tex = np.where(mortar, np.float32(0.6) * base, tex)
    elif name == "water":  # horizontal ripples
        tex += 18 * np.sin(2 * np.pi * ys / max(4, size // 10) + rng.uniform(0, 6.3))
    elif name == "sand":  # coarse speckle
        tex += rng.normal(0, 12, size=(size, size, 1)).astype(np.float32)
    elif name == "road":  # fine grain
        tex += rng.normal(0, 8, size=(size, size, 1)).astype(np.float32)
    tex += rng.normal(0, noise_std, size=(size, size, 1)).astype(np.float32)
    return tex.astype(np.float32)


def _draw_shape(name: str, centre: np.ndarray, radius: float, angle_deg: float,
                size: int) -> np.ndarray:
    """(S, S) bool mask of a shape, rasterised without anti-aliasing so image and mask agree."""
    canvas = np.zeros((size, size), np.uint8)
    scale = 16  # cv2 `shift=4`: sub-pixel vertex positions
    cx, cy = float(centre[0]), float(centre[1])
    # Keep far-away shapes (videos) from overflowing cv2's int coordinates.
    if not (-4 * size < cx < 5 * size and -4 * size < cy < 5 * size):
        return canvas.astype(bool)
    if name == "circle":
        cv2.circle(canvas, (round(cx * scale), round(cy * scale)), round(radius * scale), 1,
                   thickness=-1, lineType=cv2.LINE_8, shift=4)
        return canvas.astype(bool)
    polygon = _POLYGONS[name]  # unit-radius vertices, y pointing down
    theta = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = polygon @ rot.T * radius + np.array([cx, cy])
    cv2.fillPoly(canvas, [np.round(pts * scale).astype(np.int32)], 1, lineType=cv2.LINE_8,
                 shift=4)
    return canvas.astype(bool)


def _regular(n: int, start_deg: float, radii: tuple[float, ...] = (1.0,)) -> np.ndarray:
    angles = np.deg2rad(start_deg + np.arange(n * len(radii)) * 360.0 / (n * len(radii)))
    r = np.tile(np.asarray(radii), n)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


_ARM = 0.34
_POLYGONS: dict[str, np.ndarray] = {
    "square": _regular(4, 45.0) * 0.95,
    "triangle": _regular(3, -90.0),
    "star": _regular(5, -90.0, (1.0, 0.45)),
    "hexagon": _regular(6, 0.0),
    "cross": np.array([[-_ARM, -1], [_ARM, -1], [_ARM, -_ARM], [1, -_ARM], [1, _ARM], [_ARM, _ARM],
                       [_ARM, 1], [-_ARM, 1], [-_ARM, _ARM], [-1, _ARM], [-1, -_ARM],
                       [-_ARM, -_ARM]], np.float64),
    "diamond": np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]], np.float64),
}


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
