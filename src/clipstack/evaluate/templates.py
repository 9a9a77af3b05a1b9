"""Zero-shot prompt templates: named sets (CLIP's 80 ImageNet prompts) or a user file.

Templates use `{c}` for the class name (CLIP_benchmark's convention); a file written with `{}` works too.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipstack.errors import ConfigError
from clipstack.io import read_text

# The 80 prompts of CLIP's ImageNet zero-shot notebook, in its order.
OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {c}.", "a photo of many {c}.", "a sculpture of a {c}.",
    "a photo of the hard to see {c}.", "a low resolution photo of the {c}.", "a rendering of a {c}.",
    "graffiti of a {c}.", "a bad photo of the {c}.", "a cropped photo of the {c}.", "a tattoo of a {c}.",
    "the embroidered {c}.", "a photo of a hard to see {c}.", "a bright photo of a {c}.",
    "a photo of a clean {c}.", "a photo of a dirty {c}.", "a dark photo of the {c}.", "a drawing of a {c}.",
    "a photo of my {c}.", "the plastic {c}.", "a photo of the cool {c}.", "a close-up photo of a {c}.",
    "a black and white photo of the {c}.", "a painting of the {c}.", "a painting of a {c}.",
    "a pixelated photo of the {c}.", "a sculpture of the {c}.", "a bright photo of the {c}.",
    "a cropped photo of a {c}.", "a plastic {c}.", "a photo of the dirty {c}.", "a jpeg corrupted photo of a {c}.",
    "a blurry photo of the {c}.", "a photo of the {c}.", "a good photo of the {c}.", "a rendering of the {c}.",
    "a {c} in a video game.", "a photo of one {c}.", "a doodle of a {c}.", "a close-up photo of the {c}.",
    "a photo of a {c}.", "the origami {c}.", "the {c} in a video game.", "a sketch of a {c}.",
    "a doodle of the {c}.", "a origami {c}.", "a low resolution photo of a {c}.", "the toy {c}.",
    "a rendition of the {c}.", "a photo of the clean {c}.", "a photo of a large {c}.", "a rendition of a {c}.",
    "a photo of a nice {c}.", "a photo of a weird {c}.", "a blurry photo of a {c}.", "a cartoon {c}.",
    "art of a {c}.", "a sketch of the {c}.", "a embroidered {c}.", "a pixelated photo of a {c}.",
    "itap of the {c}.", "a jpeg corrupted photo of the {c}.", "a good photo of a {c}.", "a plushie {c}.",
    "a photo of the nice {c}.", "a photo of the small {c}.", "a photo of the weird {c}.", "the cartoon {c}.",
    "art of the {c}.", "a drawing of the {c}.", "a photo of the large {c}.",
    "a black and white photo of a {c}.", "the plushie {c}.", "a dark photo of a {c}.", "itap of a {c}.",
    "graffiti of the {c}.", "a toy {c}.", "itap of my {c}.", "a photo of a cool {c}.",
    "a photo of a small {c}.", "a tattoo of the {c}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai_imagenet": OPENAI_IMAGENET_TEMPLATES,
    "simple": ("a photo of a {c}.",),
    "classname": ("{c}",),
}


def load_templates(spec: str | Path) -> list[str]:
    """A named set (`openai_imagenet`, `simple`, `classname`) or a file: one template per line or a JSON list."""
    if isinstance(spec, str) and spec in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[spec])
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--templates {spec!s}: neither a named set ({', '.join(TEMPLATE_SETS)}) nor a file")
    text = read_text(path, "templates file")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exn:
            raise ConfigError(f"{path}: templates file is not valid JSON (line {exn.lineno}, column "
                              f"{exn.colno}: {exn.msg})") from None
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise ConfigError(f"{path}: a templates JSON file must hold a list of strings")
        templates = data
    else:
        templates = [line.strip() for line in text.splitlines() if line.strip()]
    return normalize_templates(templates, source=str(path))


def normalize_templates(templates: list[str], source: str = "templates") -> list[str]:
    """Turn `{}` placeholders into `{c}` and check each template names the class exactly once."""
    out = []
    for t in templates:
        t = t.replace("{}", "{c}")
        if t.count("{c}") != 1:
            raise ConfigError(f"{source}: template {t!r} must contain the class placeholder {{c}} once")
        out.append(t)
    if not out:
        raise ConfigError(f"{source}: no templates")
    return out


def fill(template: str, classname: str) -> str:
    # str.replace, not str.format: a template may hold other braces, a class name may hold "{".
    return template.replace("{c}", classname)
