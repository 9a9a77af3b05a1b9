"""Scenes of one to three objects: sample their attributes and layout, and render them with PIL.

A `Scene` is the ground truth of one image (what the captions talk about); `render` draws it at its
own width and height. Objects are big relative to their cell and colors saturated, so the concepts
stay visible after a 32 px resize; textures are proportional to object size for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from clipstack.data.synthetic.concepts import (
    BACKGROUND_KINDS,
    BACKGROUNDS,
    COLOR_NAMES,
    COLORS,
    PATTERNS,
    POSITIONS,
    SHAPES,
    SIZE_RANGES,
    SIZES,
    color_distance,
)

MIN_SIDE, MAX_SIDE = 96, 640


@dataclass
class Obj:
    shape: str
    color: str
    pattern: str
    size: str
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 in pixels
    rotation: float = 0.0
    position: str = "center"


@dataclass
class Scene:
    width: int
    height: int
    objects: list[Obj]
    background: str
    bg_kind: str
    layout: str  # "single", "row" or "column"
    texture_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def relation(self) -> str | None:
        """How object 0 relates to object 1 ("left of" in a row, "above" in a column)."""
        return {"row": "left of", "column": "above"}.get(self.layout)

    def concepts(self) -> list[str]:
        """Every canonical concept word of the scene (shapes, colors, patterns, sizes, background)."""
        words: list[str] = []
        for o in self.objects:
            words += [o.shape, o.color, o.pattern, o.size]
        words += [self.background, self.bg_kind]
        return sorted(set(words))


def sample_size(rng: np.random.Generator) -> tuple[int, int]:
    """Width and height in [96, 640] with aspect ratios from 1:3 to 3:1, most of them near square."""
    short = math.exp(rng.uniform(math.log(MIN_SIDE), math.log(360)))
    if rng.random() < 0.55:
        ratio = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    else:
        ratio = math.exp(rng.uniform(-math.log(3), math.log(3)))
    long_ratio = max(ratio, 1 / ratio)
    long = min(short * long_ratio, MAX_SIDE)
    short = max(MIN_SIDE, long / long_ratio)
    w, h = (long, short) if ratio >= 1 else (short, long)
    return int(round(w)), int(round(h))


def sample_scene(rng: np.random.Generator, width: int, height: int, n_objects: int,
                 shape_p: np.ndarray | None = None, color_p: np.ndarray | None = None,
                 force: dict[str, str] | None = None, sizes: list[str] | None = None) -> Scene:
    """Draw attributes (shapes and colors from the given, possibly long-tailed, distributions) and a layout.

    `force` fixes attributes of object 0 (`shape`, `color`, `pattern`, `size`, `position`), which the
    evaluation sets use to draw class-balanced images.
    """
    force = force or {}
    objects = []
    for i in range(n_objects):
        shape = SHAPES[rng.choice(len(SHAPES), p=shape_p)]
        color = COLOR_NAMES[rng.choice(len(COLOR_NAMES), p=color_p)]
        pattern = PATTERNS[rng.choice(len(PATTERNS), p=[0.7, 0.1, 0.1, 0.1])]
        size = (sizes or SIZES)[rng.integers(len(sizes or SIZES))]
        obj = Obj(shape, color, pattern, size, rotation=float(rng.uniform(-12, 12)))
        if i == 0:
            for key in ("shape", "color", "pattern", "size"):
                if key in force:
                    setattr(obj, key, force[key])
        objects.append(obj)
    background, bg_kind = _pick_background(rng, [o.color for o in objects])
    if n_objects == 1:
        layout = "single"
    elif width > 1.15 * height:
        layout = "row"
    elif height > 1.15 * width:
        layout = "column"
    else:
        layout = "row" if rng.random() < 0.5 else "column"
    scene = Scene(width, height, objects, background, bg_kind, layout,
                  texture_seed=int(rng.integers(2**31)))
    _place(scene, rng, force.get("position"))
    return scene


def _pick_background(rng: np.random.Generator, colors: list[str]) -> tuple[str, str]:
    names = list(BACKGROUNDS)
    # Keep only backgrounds that contrast with every object, so no object is invisible.
    ok = [n for n in names if all(color_distance(BACKGROUNDS[n], COLORS[c]) > 110 for c in colors)]
    name = (ok or names)[rng.integers(len(ok or names))]
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    return name, kind


def _place(scene: Scene, rng: np.random.Generator, position: str | None) -> None:
    w, h, n = scene.width, scene.height, len(scene.objects)
    if scene.layout == "single":
        obj = scene.objects[0]
        ext = int(min(w, h) * rng.uniform(*SIZE_RANGES[obj.size]))
        if position is None:
            position = "center" if obj.size == "large" else POSITIONS[rng.integers(len(POSITIONS))]
        obj.position = position
        fx = 0.5 + (-0.27 if "left" in position else 0.27 if "right" in position else 0.0)
        fy = 0.5 + (-0.27 if "top" in position else 0.27 if "bottom" in position else 0.0)
        cx = min(max(fx * w, ext / 2), w - ext / 2)
        cy = min(max(fy * h, ext / 2), h - ext / 2)
        obj.box = _box(cx, cy, ext)
        return
    row = scene.layout == "row"
    cell_w, cell_h = (w / n, h) if row else (w, h / n)
    for i, obj in enumerate(scene.objects):
        ext = int(min(cell_w, cell_h) * rng.uniform(*SIZE_RANGES[obj.size]))
        slack_x, slack_y = (cell_w - ext) / 2, (cell_h - ext) / 2
        cx = (i + 0.5) * cell_w if row else w / 2
        cy = h / 2 if row else (i + 0.5) * cell_h
        cx += rng.uniform(-0.6, 0.6) * slack_x
        cy += rng.uniform(-0.6, 0.6) * slack_y
        obj.position = ("left", "center", "right")[min(2, int(3 * cx / w))] if row else \
            ("top", "center", "bottom")[min(2, int(3 * cy / h))]
        obj.box = _box(cx, cy, ext)


def _box(cx: float, cy: float, ext: int) -> tuple[int, int, int, int]:
    x0, y0 = int(round(cx - ext / 2)), int(round(cy - ext / 2))
    return x0, y0, x0 + ext, y0 + ext


# ------------------------------------------------------------------------------------------- render


def render(scene: Scene) -> Image.Image:
    """Draw the scene as an RGB image of its own size."""
    rng = np.random.default_rng(scene.texture_seed)
    img = _background(scene, rng)
    for obj in scene.objects:
        _draw_object(img, obj, rng)
    return img


def _background(scene: Scene, rng: np.random.Generator) -> Image.Image:
    w, h = scene.width, scene.height
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    if scene.bg_kind == "gradient":
        t = np.linspace(-1, 1, h if rng.random() < 0.5 else w, dtype=np.float32)
        shade = base[None, :] + 28 * t[:, None]
        arr = shade[:, None, :].repeat(w, 1) if len(t) == h else shade[None, :, :].repeat(h, 0)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if scene.bg_kind == "noise":
        small = base + rng.normal(0, 18, size=(max(2, h // 8), max(2, w // 8), 1)).astype(np.float32)
        img = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8), "RGB")
        return img.resize((w, h), Image.BILINEAR)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in base))
    if scene.bg_kind == "grid":
        draw = ImageDraw.Draw(img)
        step = max(8, min(w, h) // 8)
        line = tuple(int(c * 0.8) for c in base)
        for x in range(step, w, step):
            draw.line([(x, 0), (x, h)], fill=line)
        for y in range(step, h, step):
            draw.line([(0, y), (w, y)], fill=line)
    return img


def shape_polygon(shape: str, ext: int, rotation: float) -> list[tuple[float, float]]:
    """The outline of `shape` inside an `ext` x `ext` box (box coordinates), rotated by degrees."""
    r = ext / 2
    if shape == "circle":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
    elif shape == "square":
        pts = [(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]
    elif shape == "triangle":
        pts = [(0, -1), (0.95, 0.8), (-0.95, 0.8)]
    elif shape == "diamond":
        pts = [(0, -1), (0.68, 0), (0, 1), (-0.68, 0)]
    elif shape == "hexagon":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        a = 0.32
        pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
               (-1, -a), (-a, -a)]
    elif shape == "heart":
        pts = []
        for t in np.linspace(0, 2 * math.pi, 40, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17, -y / 15 + 0.1))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return [(r + r * (x * c - y * s), r + r * (x * s + y * c)) for x, y in pts]


def _draw_object(img: Image.Image, obj: Obj, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = obj.box
    ext = max(2, x1 - x0)
    mask = Image.new("L", (ext, ext), 0)
    ImageDraw.Draw(mask).polygon(shape_polygon(obj.shape, ext, obj.rotation), fill=255)
    fill = _fill(obj, ext, rng)
    img.paste(fill, (x0, y0), mask)


def _fill(obj: Obj, ext: int, rng: np.random.Generator) -> Image.Image:
    color = COLORS[obj.color]
    if obj.pattern == "solid":
        return Image.new("RGB", (ext, ext), color)
    lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    second = (250, 250, 250) if lum < 150 else (35, 35, 35)
    period = max(4, ext // 5)
    yy, xx = np.ogrid[0:ext, 0:ext]  # broadcast grids: no ext x ext index arrays
    if obj.pattern == "striped":
        coord = (xx + yy) if rng.random() < 0.5 else (yy if rng.random() < 0.5 else xx)
        on = np.broadcast_to((coord // max(2, period // 2)) % 2 == 1, (ext, ext))
    elif obj.pattern == "checkered":
        on = ((xx // period) + (yy // period)) % 2 == 1
    else:  # dotted
        cx = (xx % period) - period / 2
        cy = (yy % period) - period / 2
        on = cx * cx + cy * cy < (period * 0.28) ** 2
    arr = np.where(on[..., None], np.array(second, np.uint8), np.array(color, np.uint8))
    return Image.fromarray(arr.astype(np.uint8), "RGB")
