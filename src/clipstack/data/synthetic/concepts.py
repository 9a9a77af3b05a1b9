"""The vocabulary of the synthetic world: shapes, colors, patterns, sizes, backgrounds and their words.

Every visual attribute has one canonical name (used for class names and ground truth) and a few
synonyms (used by the caption grammar), so a model has to learn that "disk" and "circle" look alike.
Colors are saturated and backgrounds muted, so both survive downscaling to 32 px.
"""

from __future__ import annotations

import numpy as np

SHAPES = ["circle", "square", "triangle", "star", "cross", "heart", "diamond", "hexagon"]
SHAPE_WORDS = {
    "circle": ["circle", "circle", "disk", "round dot"],
    "square": ["square", "square", "box"],
    "triangle": ["triangle", "triangle", "triangular shape"],
    "star": ["star", "star", "five-pointed star"],
    "cross": ["cross", "cross", "plus sign"],
    "heart": ["heart", "heart", "heart shape"],
    "diamond": ["diamond", "diamond", "rhombus"],
    "hexagon": ["hexagon", "hexagon", "six-sided shape"],
}
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
                 "cross": "crosses", "heart": "hearts", "diamond": "diamonds", "hexagon": "hexagons"}

COLORS = {
    "red": (220, 30, 35), "orange": (245, 130, 20), "yellow": (250, 220, 20), "green": (40, 170, 50),
    "cyan": (20, 200, 220), "blue": (30, 70, 220), "purple": (130, 40, 190), "pink": (250, 110, 190),
    "white": (250, 250, 250), "black": (15, 15, 15),
}
COLOR_NAMES = list(COLORS)
COLOR_WORDS = {
    "red": ["red", "red", "bright red", "scarlet"], "orange": ["orange", "orange", "tangerine"],
    "yellow": ["yellow", "yellow", "golden yellow"], "green": ["green", "green", "grass-green"],
    "cyan": ["cyan", "cyan", "turquoise"], "blue": ["blue", "blue", "royal blue"],
    "purple": ["purple", "purple", "violet"], "pink": ["pink", "pink", "hot pink"],
    "white": ["white", "white", "snow-white"], "black": ["black", "black", "jet-black"],
}

PATTERNS = ["solid", "striped", "dotted", "checkered"]
PATTERN_WORDS = {
    "solid": ["solid", "plain", ""], "striped": ["striped", "striped", "stripy"],
    "dotted": ["dotted", "polka-dot", "spotted"], "checkered": ["checkered", "checkered", "checked"],
}

SIZES = ["small", "medium", "large"]
# Object extent as a fraction of its cell's shorter side.
SIZE_RANGES = {"small": (0.42, 0.52), "medium": (0.56, 0.68), "large": (0.74, 0.92)}
SIZE_WORDS = {"small": ["small", "small", "little", "tiny"], "medium": ["medium-sized", "mid-sized", ""],
              "large": ["large", "big", "huge"]}

# (name, RGB) for plain backgrounds; muted so that saturated objects stand out.
BACKGROUNDS = {
    "white": (245, 244, 240), "beige": (225, 210, 180), "light gray": (200, 200, 200),
    "dark gray": (70, 72, 76), "navy": (30, 36, 70), "pale blue": (190, 215, 235),
    "pale green": (200, 225, 195), "brown": (110, 80, 55),
}
BACKGROUND_KINDS = ["plain", "plain", "gradient", "noise", "grid"]
BACKGROUND_WORDS = {"plain": "{c}", "gradient": "{c} gradient", "noise": "textured {c}", "grid": "{c} grid"}

POSITIONS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
             "bottom right"]
RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
RELATION_WORDS = {
    "left of": ["left of", "to the left of", "next to and left of"],
    "right of": ["right of", "to the right of", "beside and right of"],
    "above": ["above", "over", "on top of"], "below": ["below", "under", "beneath"],
}


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    """Probabilities proportional to 1 / rank**exponent (exponent 0 is uniform)."""
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** float(exponent)
    return w / w.sum()


def color_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return float(np.sqrt(sum((int(x) - int(y)) ** 2 for x, y in zip(a, b))))
