"""Evaluation datasets: a table of layout loaders, each turning a path into an `EvalDataset`.

Layouts (tried in table order, or picked by name):
- `clip_benchmark_wds`: CLIP_benchmark's WebDataset layout, `{split}/nshards.txt`, `{split}/{i}.tar`
  (image + `.cls` int, `.npy` multi-hot for multilabel, or `.txt` captions one per line for retrieval),
  `classnames.txt`, `zeroshot_classification_templates.txt`, `dataset_type.txt`. The embedded eval
  sets that `clipstack synth` writes use this layout.
- `image_folder`: one subfolder per class (optionally under `train/`, `val/`, `test/`).
- `retrieval_table`: a CSV or parquet file with an image path column and one or more captions;
- `shards`: training-format WebDataset shards (a held-out slice of a pool), read as a retrieval set.
Items are streamed, so a large set is never held in memory; a sample that cannot be used is skipped and
counted on the split (`split.dropped`), never a crash mid-run.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipstack.errors import DataError
from clipstack.io import read_json, read_text

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
FILE_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class EvalItem:
    """One sample: how to get its image, and its label (int, or list of ints) or captions."""

    key: str
    load_image: Callable[[], Any]
    label: int | list[int] | None = None
    captions: list[str] | None = None


@dataclass
class EvalSplit:
    name: str
    iter_items: Callable[[], Iterator[EvalItem]]
    dropped: Counter = field(default_factory=Counter)  # reason -> count, filled while iterating

    def __iter__(self) -> Iterator[EvalItem]:
        return self.iter_items()


@dataclass
class EvalDataset:
    name: str
    root: Path
    layout: str
    kind: str  # "classification" | "multilabel" | "retrieval"
    splits: dict[str, EvalSplit]
    classnames: list[str] | None = None
    templates: list[str] | None = None

    def split(self, name: str) -> EvalSplit:
        if name not in self.splits:
            raise DataError(f"{self.root}: no split {name!r} (this {self.layout} set has: "
                            f"{', '.join(self.splits) or 'none'})")
        return self.splits[name]

    def fingerprint(self) -> str:
        """Changes when any data file changes (size, mtime), for the embedding cache key."""
        files = sorted(p for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else [self.root]
        return ";".join(f"{p.relative_to(self.root.parent)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                        for p in files)


@dataclass(frozen=True)
class Layout:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], EvalDataset]
    expects: str


def pil_from_bytes(data: bytes):
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    return img.convert("RGB")


def pil_from_path(path: Path):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


# --- CLIP_benchmark WebDataset layout ------------------------------------------------------------

def _is_wds(root: Path) -> bool:
    return bool(_wds_split_names(root))


def _wds_split_names(root: Path) -> list[str]:
    """Every subfolder with an `nshards.txt` is a split (CLIP_benchmark allows any split name)."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "nshards.txt").is_file())


def _read_lines(path: Path, what: str) -> list[str] | None:
    if not path.is_file():
        return None
    return [line.strip() for line in read_text(path, what).splitlines()]


def load_wds(root: Path) -> EvalDataset:
    dtype_lines = _read_lines(root / "dataset_type.txt", "dataset type file")
    dtype = (dtype_lines[0].lower() if dtype_lines else "") or "classification"
    kinds = {"classification": "classification", "multilabel": "multilabel", "retrieval": "retrieval"}
    if dtype not in kinds:
        raise DataError(f"{root / 'dataset_type.txt'}: unknown dataset type {dtype!r} "
                        f"(expected one of {', '.join(kinds)})")
    kind = kinds[dtype]
    classnames = templates = None
    if kind != "retrieval":
        classnames = _read_lines(root / "classnames.txt", "class names file")
        classnames = [c for c in classnames if c] if classnames is not None else None
        tmpl = _read_lines(root / "zeroshot_classification_templates.txt", "templates file")
        templates = [t for t in tmpl if t] if tmpl else None
    splits = {}
    for split in _wds_split_names(root):
        nshards_file = root / split / "nshards.txt"
        try:
            nshards = int(read_text(nshards_file, "shard count file").strip())
        except ValueError:
            raise DataError(f"{nshards_file}: must hold an integer shard count") from None
        tars = [root / split / f"{i}.tar" for i in range(nshards)]
        missing = [t.name for t in tars if not t.is_file()]
        if missing:
            raise DataError(f"{root / split}: nshards.txt says {nshards} shards but {', '.join(missing)} "
                            "is missing")
        splits[split] = _wds_split(split, tars, kind, len(classnames) if classnames else None)
    return EvalDataset(root.name, root, "clip_benchmark_wds", kind, splits, classnames, templates)


def _wds_split(split: str, tars: list[Path], kind: str, num_classes: int | None) -> EvalSplit:
    es = EvalSplit(split, lambda: iter(()))

    def items() -> Iterator[EvalItem]:
        es.dropped.clear()
        for tar in tars:
            for key, members in _tar_samples(tar):
                item = _wds_item(key, members, kind, num_classes, es.dropped)
                if item is not None:
                    yield item

    es.iter_items = items
    return es


def _tar_samples(tar: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members sharing a key form one sample, as webdataset groups them.

    A truncated or corrupt tar raises `DataError` naming it and the samples read: a metric over part of
    a test set would silently differ from everyone else's, so the set fails (the suite reports it and
    goes on to the other sets) rather than being scored on what was read.
    """
    from clipstack.data.shards import iter_shard

    for raw in iter_shard(tar):
        members = {k.lower(): v for k, v in raw.items() if not k.startswith("__")}
        yield raw["__key__"], members


def _wds_item(key: str, members: dict[str, bytes], kind: str, num_classes: int | None,
              dropped: Counter) -> EvalItem | None:
    """The sample as an item, or None after counting why it is unusable. A label that does not parse or
    names no class (`num_classes`, when the class names are known) is one bad sample, like a corrupt
    image: it is skipped and counted, and the set is still evaluated."""
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
        dropped["no_image"] += 1
        return None
    data = members[ext]
    load = lambda data=data: pil_from_bytes(data)  # noqa: E731
    if kind == "retrieval":
        if "txt" not in members:
            dropped["no_captions"] += 1
            return None
        caps = [c for c in members["txt"].decode("utf-8", "replace").splitlines() if c.strip()]
        if not caps:
            dropped["no_captions"] += 1
            return None
        return EvalItem(key, load, captions=caps)
    if kind == "multilabel":
        if "npy" not in members:
            dropped["no_label"] += 1
            return None
        import numpy as np

        try:
            vec = np.load(io.BytesIO(members["npy"]), allow_pickle=False)
            label = [int(i) for i in np.flatnonzero(vec)]
        except (ValueError, OSError, EOFError, TypeError):  # not a .npy, or not numbers
            dropped["bad_label"] += 1
            return None
        if num_classes is not None and (vec.ndim != 1 or any(c >= num_classes for c in label)):
            dropped["bad_label"] += 1
            return None
        return EvalItem(key, load, label=label)
    if "cls" not in members:
        dropped["no_label"] += 1
        return None
    try:
        label = int(members["cls"].decode().strip())
    except ValueError:  # not UTF-8, or not an integer
        dropped["bad_label"] += 1
        return None
    if label < 0 or (num_classes is not None and label >= num_classes):
        dropped["bad_label"] += 1
        return None
    return EvalItem(key, load, label=label)


# --- image folder: one subfolder per class --------------------------------------------------------

def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image_folder(root: Path) -> bool:
    if not root.is_dir():
        return False
    split_dirs = [root / s for s in SPLIT_NAMES if (root / s).is_dir()]
    base = split_dirs[0] if split_dirs else root
    # At least one class folder must hold images directly (a folder of datasets is not a class folder).
    return any(p.suffix.lower() in FILE_IMAGE_EXTS for d in _class_dirs(base) for p in d.iterdir())


def load_image_folder(root: Path) -> EvalDataset:
    split_dirs = {s: root / s for s in SPLIT_NAMES if (root / s).is_dir()}
    if not split_dirs:
        split_dirs = {"test": root}
    folder_names = None
    splits = {}
    for split, base in split_dirs.items():
        dirs = _class_dirs(base)
        names = [d.name for d in dirs]
        if folder_names is None:
            folder_names = names
        elif names != folder_names:
            raise DataError(f"{base}: class folders differ from {split_dirs[next(iter(split_dirs))]} "
                            f"({sorted(set(names) ^ set(folder_names))})")
        files: list[tuple[Path, int]] = []
        for label, d in enumerate(dirs):
            imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in FILE_IMAGE_EXTS)
            if not imgs:
                raise DataError(f"{d}: class {d.name!r} has no images ({', '.join(FILE_IMAGE_EXTS)})")
            files.extend((p, label) for p in imgs)
        splits[split] = _folder_split(split, files)
    classnames = _read_lines(root / "classnames.txt", "class names file")
    if classnames is not None:
        classnames = [c for c in classnames if c]
        if len(classnames) != len(folder_names):
            raise DataError(f"{root / 'classnames.txt'}: {len(classnames)} names for "
                            f"{len(folder_names)} class folders")
    else:
        classnames = [n.replace("_", " ") for n in folder_names]
    tmpl = _read_lines(root / "zeroshot_classification_templates.txt", "templates file")
    return EvalDataset(root.name, root, "image_folder", "classification", splits, classnames,
                       [t for t in tmpl if t] if tmpl else None)


def _folder_split(split: str, files: list[tuple[Path, int]]) -> EvalSplit:
    def items() -> Iterator[EvalItem]:
        for path, label in files:
            yield EvalItem(str(path.relative_to(path.parent.parent)),
                           lambda path=path: pil_from_path(path), label=label)

    return EvalSplit(split, items)


# --- CSV / parquet retrieval table -----------------------------------------------------------------

IMAGE_COLUMNS = ("image", "image_path", "filepath", "path", "file")
CAPTION_COLUMNS = ("captions", "caption", "text", "title")


def _table_file(root: Path) -> Path | None:
    if root.is_file() and root.suffix in (".csv", ".parquet"):
        return root
    if root.is_dir() and not _is_wds(root) and not any(root.glob("*.tar")):  # shard manifests are not tables
        tables = sorted(p for p in root.iterdir() if p.suffix in (".csv", ".parquet"))
        return tables[0] if len(tables) == 1 else None
    return None


def load_retrieval_table(root: Path) -> EvalDataset:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table_path = _table_file(root)
    try:
        table = pq.read_table(table_path) if table_path.suffix == ".parquet" else pacsv.read_csv(table_path)
    except Exception as err:  # pyarrow raises several types for a malformed file
        raise DataError(f"{table_path}: cannot read table ({err})") from None
    cols = table.column_names
    img_col = next((c for c in IMAGE_COLUMNS if c in cols), None)
    cap_col = next((c for c in CAPTION_COLUMNS if c in cols), None)
    if img_col is None or cap_col is None:
        raise DataError(f"{table_path}: a retrieval table needs an image column ({'/'.join(IMAGE_COLUMNS)}) "
                        f"and a caption column ({'/'.join(CAPTION_COLUMNS)}); found {cols}")
    grouped: dict[str, list[str]] = {}
    for img, cap in zip(table.column(img_col).to_pylist(), table.column(cap_col).to_pylist()):
        if img is None:
            continue
        caps = cap if isinstance(cap, list) else str(cap or "").splitlines()
        grouped.setdefault(str(img), []).extend(c.strip() for c in caps if c and c.strip())
    base = table_path.parent
    dropped_static = Counter()
    records = []
    for img, caps in grouped.items():
        if not caps:
            dropped_static["no_captions"] += 1
            continue
        records.append((img, caps))
    missing = [img for img, _ in records if not (base / img).is_file()]
    if missing:
        raise DataError(f"{table_path}: {len(missing)} image paths do not exist relative to {base} "
                        f"(first: {missing[0]!r})")

    es = EvalSplit("test", lambda: iter(()))

    def items() -> Iterator[EvalItem]:
        es.dropped.clear()
        es.dropped.update(dropped_static)
        for img, caps in records:
            yield EvalItem(img, lambda p=base / img: pil_from_path(p), captions=caps)

    es.iter_items = items
    name = table_path.stem if root.is_file() else root.name
    return EvalDataset(name, root, "retrieval_table", "retrieval", {"test": es})


# --- img2dataset / ingest shards as a retrieval set ---------------------------------------------------

def _is_shards(root: Path) -> bool:
    if root.is_file():
        return root.suffix == ".tar"
    return root.is_dir() and not _is_wds(root) and any(root.glob("*.tar"))


def load_shards(root: Path) -> EvalDataset:
    """Training-format shards (`{key}.jpg` + `{key}.txt`/`.json`), e.g. a held-out slice of the pool:
    each sample's captions (the alt-text plus any rewrites) are its positives."""
    from clipstack.data.shards import read_samples

    tars = [root] if root.is_file() else sorted(root.glob("*.tar"))
    es = EvalSplit("test", lambda: iter(()))

    def items() -> Iterator[EvalItem]:
        es.dropped.clear()

        def on_error(err: DataError) -> None:
            es.dropped[getattr(err, "reason", "unreadable_sample")] += 1

        for sample in read_samples([str(t) for t in tars], on_error=on_error):
            caps = [c for c in sample.captions if c and c.strip()]
            if not caps:
                es.dropped["no_captions"] += 1
                continue
            yield EvalItem(sample.key, lambda data=sample.image: pil_from_bytes(data), captions=caps)

    es.iter_items = items
    name = root.stem if root.is_file() else root.name
    return EvalDataset(name, root, "shards", "retrieval", {"test": es})


# --- the registry -----------------------------------------------------------------------------------

LAYOUTS: tuple[Layout, ...] = (
    Layout("clip_benchmark_wds", _is_wds, load_wds,
           "{split}/nshards.txt and {split}/0.tar..., with classnames.txt or dataset_type.txt"),
    Layout("retrieval_table", lambda p: _table_file(p) is not None, load_retrieval_table,
           "a .csv/.parquet file (or a folder with exactly one) with image and caption columns"),
    Layout("image_folder", _is_image_folder, load_image_folder,
           "one subfolder of images per class, optionally under train/ val/ test/"),
    Layout("shards", _is_shards, load_shards,
           "training-format shards ({key}.jpg + {key}.txt), read as a retrieval set"),
)


def expand_dataset_paths(paths: list[str | Path]) -> list[tuple[Path, str | None]]:
    """Each path, or for a folder of evaluation sets (like `clipstack synth`'s `OUT/eval/`) every set in
    it, with the task its `index.json` suggests (`{set: {"task": ...}}`), else None."""
    out: list[tuple[Path, str | None]] = []
    for raw in paths:
        root = Path(raw)
        if root.is_dir() and not any(lay.detect(root) for lay in LAYOUTS):
            hints = {}
            if (root / "index.json").is_file():
                index = read_json(root / "index.json", "eval set index")
                if isinstance(index, dict):
                    hints = {k: v.get("task") for k, v in index.items() if isinstance(v, dict)}
            subsets = [d for d in sorted(root.iterdir()) if d.is_dir() and any(lay.detect(d) for lay in LAYOUTS)]
            if subsets:
                out.extend((d, hints.get(d.name)) for d in subsets)
                continue
        hint = None
        index_file = root.parent / "index.json"
        if index_file.is_file():
            try:
                entry = read_json(index_file, "eval set index").get(root.name)
                hint = entry.get("task") if isinstance(entry, dict) else None
            except (DataError, AttributeError):  # a hint only: the set itself may be fine
                hint = None
        out.append((root, hint))
    return out


def load_dataset(path: str | Path, layout: str | None = None) -> EvalDataset:
    """Load an evaluation set from `path`, detecting its layout unless `layout` names one."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"dataset {root}: no such file or folder")
    by_name = {lay.name: lay for lay in LAYOUTS}
    if layout is not None:
        if layout not in by_name:
            raise DataError(f"unknown dataset layout {layout!r} (known: {', '.join(by_name)})")
        return by_name[layout].load(root)
    for lay in LAYOUTS:
        if lay.detect(root):
            return lay.load(root)
    expected = "; ".join(f"{lay.name}: {lay.expects}" for lay in LAYOUTS)
    raise DataError(f"dataset {root}: not a layout clipstack can read. Expected one of: {expected}")
