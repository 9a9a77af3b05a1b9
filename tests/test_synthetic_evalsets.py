"""Eval sets: readable the way CLIP_benchmark's WebDataset loader reads them, balanced, held out."""

from __future__ import annotations

from collections import Counter

import pytest
import webdataset as wds

from clipstack.data.synthetic import write_eval_sets

IMAGE_EXTS = "webp;png;jpg;jpeg"


@pytest.fixture(scope="module")
def evalsets(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return out, write_eval_sets(out, seed=3, scale=0.1)


def _read(root, split, label):
    # As CLIP_benchmark's build_wds_dataset: nshards.txt, then {0..n-1}.tar decoded to PIL.
    nshards = int((root / split / "nshards.txt").read_text())
    urls = [str(root / split / f"{i}.tar") for i in range(nshards)]
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple(IMAGE_EXTS, label)
    return list(ds)


def test_classification_sets_layout(evalsets):
    out, index = evalsets
    zeroshot = [n for n, v in index.items() if v["task"] == "zeroshot_classification"]
    assert {"shapes", "colors", "patterns", "color_shape"} <= set(zeroshot)
    for name, info in index.items():
        if info["task"] == "zeroshot_retrieval":
            continue
        root = out / name
        classes = (root / "classnames.txt").read_text().splitlines()
        templates = (root / "zeroshot_classification_templates.txt").read_text().splitlines()
        assert len(classes) == info["classes"] and all("{c}" in t for t in templates)
        assert (root / "dataset_type.txt").read_text().strip() == "classification"
        for split, size in info["splits"].items():
            items = _read(root, split, "cls")
            assert len(items) == size
            labels = Counter(int(lbl) for _, lbl in items)
            assert set(labels) == set(range(len(classes))) and len(set(labels.values())) == 1
            assert all(img.size == (64, 64) for img, _ in items)
    assert set(index["probe_color"]["splits"]) == {"train", "test"}


def test_retrieval_set_has_several_captions_per_image(evalsets):
    out, index = evalsets
    root = out / "retrieval"
    assert (root / "dataset_type.txt").read_text().strip() == "retrieval"
    items = _read(root, "test", "txt")
    assert len(items) == index["retrieval"]["splits"]["test"]
    for _img, text in items:
        captions = text.splitlines()
        assert len(captions) == 3 and all(len(c.split()) >= 3 for c in captions)


def test_eval_seed_stream_is_separate_and_deterministic(evalsets, tmp_path):
    out, _ = evalsets
    write_eval_sets(tmp_path / "same", seed=3, scale=0.1)
    write_eval_sets(tmp_path / "other", seed=4, scale=0.1)
    a = (out / "shapes/test/0.tar").read_bytes()
    assert (tmp_path / "same/shapes/test/0.tar").read_bytes() == a
    assert (tmp_path / "other/shapes/test/0.tar").read_bytes() != a


def test_readable_by_clipstack_evaluate_loader(evalsets):
    datasets = pytest.importorskip("clipstack.evaluate.datasets")
    out, index = evalsets
    for name, info in index.items():
        ds = datasets.load_dataset(out / name)
        assert ds.layout == "clip_benchmark_wds"
        assert ds.kind == ("retrieval" if info["task"] == "zeroshot_retrieval" else "classification")
        for split, size in info["splits"].items():
            items = list(ds.split(split))
            assert len(items) == size and not ds.split(split).dropped
            if ds.kind == "retrieval":
                assert all(len(it.captions) == 3 for it in items)
            else:
                assert len(ds.classnames) == info["classes"] and ds.templates
                assert {it.label for it in items} == set(range(info["classes"]))
        assert items[0].load_image().size == (64, 64)
