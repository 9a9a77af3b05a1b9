"""The caption grammar: alt-text-like captions and longer descriptive rewrites of a `Scene`.

Variety comes from synonyms, attribute order, optional attributes, relations in both directions,
wrappers ("a photo of ...", "clip art: ..."), and alt-text noise (file names, stock phrases), so the
text side is as messy as a crawl while still naming what the image shows.
"""

from __future__ import annotations

import numpy as np

from clipstack.data.synthetic.concepts import (
    BACKGROUND_WORDS,
    COLOR_WORDS,
    PATTERN_WORDS,
    RELATION_WORDS,
    RELATIONS,
    SHAPE_PLURALS,
    SHAPE_WORDS,
    SIZE_WORDS,
)
from clipstack.data.synthetic.scenes import Obj, Scene

WRAPPERS = [
    "{s}", "{s}", "{s}", "a photo of {s}", "an image of {s}", "{s} on a {bg} background",
    "illustration of {s}", "clip art: {s}", "vector graphic of {s}", "picture showing {s}",
    "there is {s}", "{s}, simple drawing", "a rendering of {s}", "flat design icon of {s}",
    "{s} against a {bg} backdrop", "drawing with {s}",
]
STOCK = ["stock photo", "royalty free", "free download", "high quality", "wallpaper",
         "stock illustration", "vector art", "hd", "best seller", "image result", "#shapes #art",
         "4k", "printable", "clipart png"]
FILE_STEMS = ["IMG_{n:04d}", "DSC{n:05d}", "image{n}", "untitled-{m}", "photo_{n:04d}", "pic{m}",
              "Screenshot {n:04d}", "shapes_{n}"]
FILE_EXTS = [".jpg", ".JPG", ".png", ".jpeg", ""]


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[rng.integers(len(items))]


def article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def object_phrase(obj: Obj, rng: np.random.Generator, detail: float = 1.0) -> str:
    """A noun phrase for one object; each attribute is kept with probability `detail` (shape always)."""
    noun = _pick(rng, SHAPE_WORDS[obj.shape])
    color = _pick(rng, COLOR_WORDS[obj.color]) if rng.random() < max(detail, 0.8) else ""
    size = _pick(rng, SIZE_WORDS[obj.size]) if rng.random() < detail * 0.85 else ""
    pattern = _pick(rng, PATTERN_WORDS[obj.pattern]) if rng.random() < detail else ""
    if obj.pattern == "solid" and rng.random() < 0.6:
        pattern = ""
    if not (color or size or pattern):  # a bare "a circle" would read as a too-short caption
        color = _pick(rng, COLOR_WORDS[obj.color])
    form = rng.integers(6)
    if form == 1 and color and pattern:
        words = [size, pattern, color, noun]
    elif form == 2 and color:
        words = [size, pattern, noun, "in", color]
    elif form == 3 and color:
        words = [size, pattern, noun, "that is", color]
    elif form == 4 and pattern and obj.pattern != "solid":
        tail = {"striped": "with stripes", "dotted": "with dots", "checkered": "with a checkered pattern"}
        words = [size, color, noun, tail[obj.pattern]]
    else:
        words = [size, color, pattern, noun]
    return article(" ".join(w for w in words if w))


def background_phrase(scene: Scene) -> str:
    return BACKGROUND_WORDS[scene.bg_kind].format(c=scene.background)


def position_phrase(obj: Obj, rng: np.random.Generator) -> str:
    pos = obj.position
    if pos == "center":
        return _pick(rng, ["in the center", "in the middle", "at the center"])
    if " " in pos:
        return _pick(rng, [f"in the {pos} corner", f"at the {pos}"])
    return _pick(rng, [f"on the {pos}", f"at the {pos}", f"near the {pos} edge"])


def scene_phrase(scene: Scene, rng: np.random.Generator, detail: float = 1.0) -> str:
    """Describe all objects: position for one, a relation for two, an ordered list for three."""
    phrases = [object_phrase(o, rng, detail) for o in scene.objects]
    if len(phrases) == 1:
        if rng.random() < 0.5 * detail:
            return f"{phrases[0]} {position_phrase(scene.objects[0], rng)}"
        return phrases[0]
    rel = scene.relation or "left of"
    if len(phrases) == 2:
        roll = rng.random()
        if roll < 0.4:
            return f"{phrases[0]} {_pick(rng, RELATION_WORDS[rel])} {phrases[1]}"
        if roll < 0.8:
            return f"{phrases[1]} {_pick(rng, RELATION_WORDS[RELATIONS[rel]])} {phrases[0]}"
        return f"{phrases[0]} and {phrases[1]}"
    listed = f"{phrases[0]}, {phrases[1]} and {phrases[2]}"
    shapes = {o.shape for o in scene.objects}
    if len(shapes) == 1 and rng.random() < 0.5:
        where = "in a row" if scene.layout == "row" else "stacked vertically"
        return f"three {SHAPE_PLURALS[scene.objects[0].shape]} {where}"
    if rng.random() < 0.5:
        order = "from left to right" if scene.layout == "row" else "from top to bottom"
        return f"{listed} {order}"
    return listed


def file_name(rng: np.random.Generator) -> str:
    stem = _pick(rng, FILE_STEMS).format(n=int(rng.integers(10000)), m=int(rng.integers(1, 30)))
    return stem + _pick(rng, FILE_EXTS)


def alt_text(scene: Scene, rng: np.random.Generator, noise: float = 0.25) -> str:
    """A crawl-style caption: a wrapped scene phrase, sometimes with a file name or stock phrase."""
    detail = float(rng.choice([1.0, 0.7, 0.4], p=[0.5, 0.3, 0.2]))
    text = _pick(rng, WRAPPERS).format(s=scene_phrase(scene, rng, detail), bg=background_phrase(scene))
    if rng.random() < noise:
        roll = rng.random()
        if roll < 0.35:
            text = f"{file_name(rng)} {text}"
        elif roll < 0.7:
            text = f"{text} - {_pick(rng, STOCK)}"
        else:
            text = f"{_pick(rng, STOCK).title()} {text} | {file_name(rng)}"
    style = rng.random()
    if style < 0.3:
        text = text[:1].upper() + text[1:]
    elif style < 0.38:
        text = text.title()
    if rng.random() < 0.2:
        text += "."
    return text


def rewrite(scene: Scene, rng: np.random.Generator) -> str:
    """A longer descriptive caption naming every attribute (the LaCLIP/DreamLIP-style rewrite)."""
    s = scene_phrase(scene, rng, detail=1.0)
    bg = background_phrase(scene)
    n = len(scene.objects)
    count = {1: "one shape", 2: "two shapes", 3: "three shapes"}[n]
    form = rng.integers(3)
    if form == 0:
        text = f"The image shows {s} on a {bg} background."
    elif form == 1:
        text = f"A simple picture with {count}: {s}. The background is {bg}."
    else:
        text = f"On a {bg} background there is {s}."
    return text[:1].upper() + text[1:]


def captions_for(scene: Scene, rng: np.random.Generator, multi: float, noise: float) -> list[str]:
    """The alt-text first, then (with probability `multi`) one or two rewrites."""
    caps = [alt_text(scene, rng, noise)]
    if rng.random() < multi:
        for _ in range(1 + int(rng.random() < 0.3)):
            caps.append(rewrite(scene, rng))
    return caps


def clean_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A noise-free caption with every attribute (for the retrieval evaluation set)."""
    if rng.random() < 0.5:
        return rewrite(scene, rng)
    text = scene_phrase(scene, rng, detail=1.0)
    return text[:1].upper() + text[1:] + "."
