"""Clean evaluation sets in CLIP_benchmark's WebDataset layout, from a seed stream the pool never uses.

Each set is a folder `<set>/` with `classnames.txt`, `zeroshot_classification_templates.txt`,
`dataset_type.txt`, and per split `<split>/nshards.txt` plus `<split>/{0..n-1}.tar`. A classification
sample is `{key}.png` + `{key}.cls` (the class index as text); a retrieval sample is `{key}.png` +
`{key}.txt` (one correct caption per line, as CLIP_benchmark splits it). Every sample also carries a
`{key}.json` with all its attribute labels. Images are small (64 px) so evaluation is quick on a CPU.
Classes are balanced, unlike the long-tailed pool.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipstack.data.synthetic.captions import clean_caption
from clipstack.data.synthetic.concepts import COLOR_NAMES, PATTERNS, SHAPES, SIZES
from clipstack.data.synthetic.scenes import Scene, render, sample_scene
from clipstack.io import atomic_path, write_json

EVAL_STREAM = 3
EVAL_SIDE = 64
SHAPE_TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}.", "an illustration of a {c}.",
                   "a {c} on a plain background.", "a picture of a {c}.", "clip art of a {c}."]
COLOR_TEMPLATES = ["a {c} shape.", "a photo of a {c} object.", "something {c}.",
                   "a drawing of a {c} shape.", "an illustration in {c}."]
PATTERN_TEMPLATES = ["a {c} shape.", "a drawing of a {c} object.", "a photo of a {c} shape.",
                     "an illustration of a {c} shape."]
GENERIC_TEMPLATES = ["a photo of a {c}.", "a picture of a {c}.", "a drawing of a {c}.", "{c}."]
PROBE_POSITIONS = ["left", "right", "top", "bottom", "center"]


@dataclass
class EvalSet:
    name: str
    classnames: list[str]
    templates: list[str]
    make: Callable[[np.random.Generator, int], Scene]  # (rng, class index) -> scene
    per_class: dict[str, int]  # split -> images per class
    task: str = "zeroshot_classification"
    labels: Callable[[Scene], dict[str, Any]] = field(default=lambda s: {})


def _single(force_key: str, values: list[str], sizes: list[str] | None = None):
    def make(rng: np.random.Generator, k: int) -> Scene:
        return sample_scene(rng, EVAL_SIDE, EVAL_SIDE, 1, force={force_key: values[k]},
                            sizes=sizes or ["medium", "large"])
    return make


def _color_shape(rng: np.random.Generator, k: int) -> Scene:
    color, shape = divmod(k, len(SHAPES))
    return sample_scene(rng, EVAL_SIDE, EVAL_SIDE, 1, force={"color": COLOR_NAMES[color],
                                                             "shape": SHAPES[shape]},
                        sizes=["medium", "large"])


def _count(rng: np.random.Generator, k: int) -> Scene:
    return sample_scene(rng, EVAL_SIDE, EVAL_SIDE, k + 1, sizes=["medium", "large"])


def _position(rng: np.random.Generator, k: int) -> Scene:
    return sample_scene(rng, EVAL_SIDE, EVAL_SIDE, 1, force={"position": PROBE_POSITIONS[k]},
                        sizes=["small"])


def _retrieval(rng: np.random.Generator, k: int) -> Scene:
    return sample_scene(rng, EVAL_SIDE, EVAL_SIDE, int(rng.integers(1, 3)), sizes=["medium", "large"])


def eval_set_specs(scale: float = 1.0) -> list[EvalSet]:
    """The sets and their sizes; `scale` multiplies every per-class count (at least 1)."""
    def n(count: int) -> int:
        return max(1, int(round(count * scale)))

    test = {"test": n(50)}
    probe = {"train": n(40), "test": n(20)}
    return [
        EvalSet("shapes", SHAPES, SHAPE_TEMPLATES, _single("shape", SHAPES), test),
        EvalSet("colors", COLOR_NAMES, COLOR_TEMPLATES, _single("color", COLOR_NAMES), {"test": n(40)}),
        EvalSet("patterns", PATTERNS, PATTERN_TEMPLATES, _single("pattern", PATTERNS), {"test": n(100)}),
        EvalSet("color_shape", [f"{c} {s}" for c in COLOR_NAMES for s in SHAPES], SHAPE_TEMPLATES,
                _color_shape, {"test": n(5)}),
        EvalSet("retrieval", [], [], _retrieval, {"test": n(200)}, task="zeroshot_retrieval"),
        EvalSet("probe_shape", SHAPES, SHAPE_TEMPLATES, _single("shape", SHAPES), probe,
                task="linear_probe"),
        EvalSet("probe_color", COLOR_NAMES, COLOR_TEMPLATES, _single("color", COLOR_NAMES), probe,
                task="linear_probe"),
        EvalSet("probe_pattern", PATTERNS, PATTERN_TEMPLATES, _single("pattern", PATTERNS), probe,
                task="linear_probe"),
        EvalSet("probe_size", [f"{s} shape" for s in SIZES], GENERIC_TEMPLATES,
                _single("size", SIZES, sizes=SIZES), probe, task="linear_probe"),
        EvalSet("probe_count", ["one shape", "two shapes", "three shapes"], ["a picture of {c}.", "{c}."],
                _count, probe, task="linear_probe"),
        EvalSet("probe_position", [f"shape on the {p}" if p != "center" else "shape in the center"
                                   for p in PROBE_POSITIONS], GENERIC_TEMPLATES, _position, probe,
                task="linear_probe"),
    ]


def _labels(scene: Scene) -> dict[str, Any]:
    o = scene.objects[0]
    return {"shape": o.shape, "color": o.color, "pattern": o.pattern, "size": o.size,
            "position": o.position, "count": len(scene.objects), "background": scene.background,
            "concepts": scene.concepts()}


def _png(scene: Scene) -> bytes:
    buf = io.BytesIO()
    render(scene).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def write_eval_sets(out_dir: str | os.PathLike, seed: int = 0, scale: float = 1.0) -> dict[str, Any]:
    """Write every set under `out_dir`; return {set: {task, classes, split sizes}} (also `index.json`)."""
    import webdataset as wds

    from clipstack.data.shards import TAR_MTIME

    out = Path(out_dir)
    index: dict[str, Any] = {}
    for set_id, spec in enumerate(eval_set_specs(scale)):
        root = out / spec.name
        root.mkdir(parents=True, exist_ok=True)
        retrieval = spec.task == "zeroshot_retrieval"
        _write_text(root / "dataset_type.txt", ["retrieval" if retrieval else "classification"])
        if not retrieval:
            _write_text(root / "classnames.txt", spec.classnames)
            _write_text(root / "zeroshot_classification_templates.txt", spec.templates)
        sizes = {}
        for split_id, (split, per_class) in enumerate(spec.per_class.items()):
            n_classes = max(1, len(spec.classnames))
            total = per_class * n_classes
            (root / split).mkdir(exist_ok=True)
            with atomic_path(root / split / "0.tar") as tmp:
                with open(tmp, "wb") as fh, wds.TarWriter(fh, encoder=False, mtime=TAR_MTIME) as tar:
                    for i in range(total):
                        rng = np.random.default_rng([seed, EVAL_STREAM, set_id, split_id, i])
                        k = i % n_classes  # interleaved, so any prefix stays balanced
                        scene = spec.make(rng, k)
                        record = {"__key__": f"s{i:07d}", "png": _png(scene)}
                        labels = _labels(scene)
                        if retrieval:
                            caps = [clean_caption(scene, rng) for _ in range(3)]
                            record["txt"] = "\n".join(caps).encode("utf-8")
                            labels["captions"] = caps
                        else:
                            record["cls"] = str(k).encode("ascii")
                            labels["label"] = k
                        record["json"] = json.dumps(labels, sort_keys=True).encode("utf-8")
                        tar.write(record)
            _write_text(root / split / "nshards.txt", ["1"])
            sizes[split] = total
        index[spec.name] = {"task": spec.task, "classes": len(spec.classnames), "splits": sizes}
    write_json(out / "index.json", index)
    return index


def _write_text(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
