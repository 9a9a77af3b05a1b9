"""The synthetic crawl: one sample per global index, generated independently, written shard by shard.

Every random choice for sample `i` comes from a generator seeded by `(seed, stream, i)`, so any
sample can be regenerated anywhere (a duplicate regenerates its original instead of remembering it),
shards can be written by any number of worker processes in any order, and the same seed always gives
byte-identical shards. Ground-truth rows are written per shard and merged at the end, so memory stays
bounded for any `samples`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from clipstack.data.shards import Sample
from clipstack.data.synthetic import defects as D
from clipstack.data.synthetic.captions import alt_text, captions_for, file_name
from clipstack.data.synthetic.concepts import COLOR_NAMES, COLOR_WORDS, SHAPE_WORDS, SHAPES, zipf_weights
from clipstack.data.synthetic.scenes import Scene, render, sample_scene, sample_size
from clipstack.errors import ConfigError

POOL_STREAM, DEFECT_STREAM = 1, 2
N_OBJECTS_P = [0.6, 0.28, 0.12]  # one, two or three objects
MAX_SHARDS = 100_000  # shard numbers in keys have 5 digits
DUPLICATE_WINDOW = 5000  # a duplicate copies one of the previous 5000 samples
DOMAINS = ["img.example.com", "cdn.shapes.test", "static.pics.example", "media.clipart.test",
           "images.stock.example"]


@dataclass
class PoolConfig:
    """What defines the pool's content (the worker count and paths do not change a byte)."""

    samples: int = 20000
    seed: int = 0
    shard_size: int = 1000
    zipf: float = 1.0
    multi_caption: float = 0.3
    caption_noise: float = 0.25
    png_fraction: float = 0.05
    rates: dict[str, float] = field(default_factory=lambda: dict(D.DEFAULT_RATES))

    def validate(self) -> None:
        if self.seed < 0:  # numpy's SeedSequence refuses negative entropy, deep inside a worker
            raise ConfigError(f"seed: must be >= 0, got {self.seed}")
        if not 1 <= self.shard_size <= 10000:
            raise ConfigError(f"shard_size: must be in 1..10000 (keys are 5-digit shard + 4-digit index), "
                              f"got {self.shard_size}")
        # Keys hold a 5-digit shard number, so more shards than that cannot be named (and would take
        # days to write); refused here, before synth.json says "running".
        limit = MAX_SHARDS * self.shard_size
        if not 1 <= self.samples <= limit:
            raise ConfigError(f"samples: must be in 1..{limit} (at most {MAX_SHARDS} shards of shard_size "
                              f"{self.shard_size}: keys hold a 5-digit shard number), got {self.samples}")
        if not 0 <= self.zipf < math.inf:  # also refuses nan, which would make every weight nan
            raise ConfigError(f"zipf: exponent must be a finite number >= 0, got {self.zipf}")
        unknown = sorted(set(self.rates) - set(D.DEFECTS))
        if unknown:
            raise ConfigError(f"rates: unknown defect {unknown[0]!r} (known: {', '.join(D.DEFECTS)})")
        bad = [k for k, v in self.rates.items() if not 0 <= v <= 1]
        if bad or sum(self.rates.values()) > 1:
            raise ConfigError(f"rates: each must be in [0, 1] and their sum <= 1, got {self.rates}")
        for name in ("multi_caption", "caption_noise", "png_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}: must be in [0, 1], got {getattr(self, name)}")

    @property
    def num_shards(self) -> int:
        return -(-self.samples // self.shard_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Content:
    """A clean sample before any defect: its scene, image and captions."""

    scene: Scene
    image: bytes
    ext: str
    captions: list[str]
    url: str


class PoolGenerator:
    """Makes sample `i` (and its ground-truth row) from the config alone."""

    def __init__(self, cfg: PoolConfig):
        self.cfg = cfg
        self.shape_p = zipf_weights(len(SHAPES), cfg.zipf)
        self.color_p = zipf_weights(len(COLOR_NAMES), cfg.zipf)

    def key(self, index: int) -> str:
        shard, k = divmod(index, self.cfg.shard_size)
        return f"{shard:05d}{k:04d}"

    def _rng(self, stream: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, stream, index])

    def defect_of(self, index: int) -> str:
        return D.pick_defect(self._rng(POOL_STREAM, index).random(), self.cfg.rates)

    def content(self, index: int) -> Content:
        rng = self._rng(POOL_STREAM, index)
        rng.random()  # the defect draw (see defect_of)
        w, h = sample_size(rng)
        n = int(rng.choice([1, 2, 3], p=N_OBJECTS_P))
        scene = sample_scene(rng, w, h, n, self.shape_p, self.color_p)
        ext = "png" if rng.random() < self.cfg.png_fraction else "jpg"
        image = D.encode(render(scene), ext, int(rng.integers(72, 96)))
        captions = captions_for(scene, rng, self.cfg.multi_caption, self.cfg.caption_noise)
        return Content(scene, image, ext, captions, self._url(rng))

    def _url(self, rng: np.random.Generator) -> str:
        domain = DOMAINS[rng.integers(len(DOMAINS))]
        return f"https://{domain}/{int(rng.integers(1, 999)):03d}/{file_name(rng).replace(' ', '_')}"

    def _earlier_clean(self, index: int, rng: np.random.Generator) -> int | None:
        for _ in range(20):
            if index == 0:
                return None
            j = index - 1 - int(rng.integers(min(index, DUPLICATE_WINDOW)))
            if self.defect_of(j) == "clean":
                return j
        return None

    def make(self, index: int) -> tuple[Sample, dict[str, Any]]:
        """The sample as stored, and its hidden ground-truth row."""
        defect = self.defect_of(index)
        rng = self._rng(DEFECT_STREAM, index)
        detail, dup_of, txt, caption_scene = None, None, None, None
        source = index
        if defect in ("exact_duplicate", "near_duplicate"):
            j = self._earlier_clean(index, rng)
            if j is None:
                defect = "clean"
            else:
                source, dup_of = j, self.key(j)
        c = self.content(source)
        image, ext, captions, scene = c.image, c.ext, c.captions, c.scene
        url = c.url if source == index else self._url(rng)
        width, height = scene.width, scene.height  # for broken files: the size the crawler reported
        if defect == "near_duplicate":
            image, detail, width, height = D.near_duplicate(image, rng)
            ext = "jpg"
            if rng.random() < 0.5:  # the same picture re-posted with its own alt-text
                captions = [alt_text(scene, rng, self.cfg.caption_noise)]
        elif defect == "mismatched_caption":
            caption_scene = self._other_scene(scene, rng)
            captions = captions_for(caption_scene, rng, self.cfg.multi_caption, self.cfg.caption_noise)
        elif defect == "empty_caption":
            captions = [""]
        elif defect == "short_caption":
            obj = scene.objects[0]
            captions = [D.short_caption(rng, SHAPE_WORDS[obj.shape][0], COLOR_WORDS[obj.color][0])]
        elif defect == "non_utf8_caption":
            txt, captions = D.non_utf8(captions[0], rng), []
        elif defect == "corrupt_image":
            image, detail = D.corrupt(image, rng), "garbage"
        elif defect == "truncated_image":
            image, detail = D.truncate(image, rng), "truncated"
        elif defect == "too_small":
            image, width, height = D.too_small(image, rng)
            ext = "jpg"
        key = self.key(index)
        meta = {"url": url, "width": width, "height": height, "original_width": width,
                "original_height": height}
        sample = Sample(key=key, image=image, captions=captions, ext=ext, meta=meta, txt=txt)
        row = _gt_row(key, index, self.cfg.shard_size, defect, detail, dup_of, scene, caption_scene,
                      image, ext, width, height, len(captions))
        return sample, row

    def _other_scene(self, scene: Scene, rng: np.random.Generator) -> Scene:
        """A scene sharing no shape with `scene` and with another first color: a wrong caption's scene."""
        shapes = {o.shape for o in scene.objects}
        other = scene
        for _ in range(50):
            n = int(rng.choice([1, 2, 3], p=N_OBJECTS_P))
            other = sample_scene(rng, scene.width, scene.height, n, self.shape_p, self.color_p)
            if not shapes & {o.shape for o in other.objects} and \
                    other.objects[0].color != scene.objects[0].color:
                break
        return other


def _gt_row(key: str, index: int, shard_size: int, defect: str, detail: str | None, dup_of: str | None,
            scene: Scene, caption_scene: Scene | None, image: bytes, ext: str, width: int, height: int,
            n_captions: int) -> dict[str, Any]:
    objs = scene.objects
    return {
        "key": key, "shard": index // shard_size, "index": index, "defect": defect, "detail": detail,
        "duplicate_of": dup_of, "n_objects": len(objs), "shapes": [o.shape for o in objs],
        "colors": [o.color for o in objs], "patterns": [o.pattern for o in objs],
        "sizes": [o.size for o in objs], "positions": [o.position for o in objs],
        "relation": scene.relation, "background": scene.background, "background_kind": scene.bg_kind,
        "concepts": scene.concepts(),
        "caption_concepts": caption_scene.concepts() if caption_scene else scene.concepts(),
        "width": width, "height": height, "ext": ext, "n_captions": n_captions,
        "image_sha256": hashlib.sha256(image).hexdigest(),
    }


GT_FIELDS = [
    ("key", "string"), ("shard", "int64"), ("index", "int64"), ("defect", "string"), ("detail", "string"),
    ("duplicate_of", "string"), ("n_objects", "int64"), ("shapes", "list<string>"),
    ("colors", "list<string>"), ("patterns", "list<string>"), ("sizes", "list<string>"),
    ("positions", "list<string>"), ("relation", "string"), ("background", "string"),
    ("background_kind", "string"), ("concepts", "list<string>"), ("caption_concepts", "list<string>"),
    ("width", "int64"), ("height", "int64"), ("ext", "string"), ("n_captions", "int64"),
    ("image_sha256", "string"),
]


def gt_schema():
    import pyarrow as pa

    def kind(name: str):
        return pa.list_(pa.string()) if name == "list<string>" else getattr(pa, name)()

    return pa.schema([(n, kind(k)) for n, k in GT_FIELDS])
