"""Each evaluation-set layout loader on tiny real data (real tars, real image files), and bad input."""

from __future__ import annotations

import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _evaluate_util import (
    NAMES,
    write_image_folder,
    write_retrieval_csv,
    write_wds_classification,
    write_wds_multilabel,
    write_wds_retrieval,
)

from clipstack.errors import ClipstackError, DataError
from clipstack.evaluate.datasets import LAYOUTS, load_dataset
from clipstack.evaluate.templates import load_templates


def test_registry_is_a_table():
    assert [lay.name for lay in LAYOUTS] == ["clip_benchmark_wds", "retrieval_table", "image_folder", "shards"]


def test_wds_classification_two_shards_and_splits(tmp_path):
    root = write_wds_classification(tmp_path / "colors", n_classes=3, per_class=3, splits=("train", "test"),
                                    nshards=2)
    ds = load_dataset(root)
    assert (ds.layout, ds.kind, ds.name) == ("clip_benchmark_wds", "classification", "colors")
    assert ds.classnames == NAMES[:3]
    assert ds.templates == ["a photo of a {c}."]
    items = list(ds.split("test"))
    assert len(items) == 9
    assert sorted(i.label for i in items) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    img = items[0].load_image()
    assert img.size == (32, 32) and img.mode == "RGB"
    assert len(list(ds.split("train"))) == 9
    with pytest.raises(DataError, match="no split 'val'"):
        ds.split("val")
    # any split name works, as in CLIP_benchmark (--split)
    write_wds_classification(root, n_classes=3, per_class=1, splits=("holdout",))
    assert sorted(load_dataset(root).splits) == ["holdout", "test", "train"]


def test_wds_retrieval_captions_one_per_line(tmp_path):
    ds = load_dataset(write_wds_retrieval(tmp_path / "ret", n_images=3, caps=2))
    assert ds.kind == "retrieval" and ds.classnames is None
    items = list(ds.split("test"))
    assert [len(i.captions) for i in items] == [2, 2, 2]
    assert items[1].captions[0] == "a green square, take 0"


def test_wds_multilabel(tmp_path):
    ds = load_dataset(write_wds_multilabel(tmp_path / "ml", n_classes=3, n=4))
    items = list(ds.split("test"))
    assert ds.kind == "multilabel"
    assert [i.label for i in items] == [[0], [1, 2], [2], [0, 1]]


def test_wds_sample_without_label_is_skipped_and_counted(tmp_path):
    root = write_wds_classification(tmp_path / "c", n_classes=2, per_class=1)
    with tarfile.open(root / "test" / "0.tar", "a") as tf:
        info = tarfile.TarInfo("zz_nolabel.txt")
        info.size = 1
        import io

        tf.addfile(info, io.BytesIO(b"x"))
    split = load_dataset(root).split("test")
    assert len(list(split)) == 2
    assert dict(split.dropped) == {"no_image": 1}


def test_image_folder_with_and_without_splits(tmp_path):
    ds = load_dataset(write_image_folder(tmp_path / "flat", n_classes=3, per_class=2))
    assert ds.layout == "image_folder" and list(ds.splits) == ["test"]
    assert ds.classnames == ["blue", "gre en", "re d"]  # folder names, "_" read as a space, sorted
    assert [i.label for i in ds.split("test")] == [0, 0, 1, 1, 2, 2]
    ds2 = load_dataset(write_image_folder(tmp_path / "split", splits=["train", "test"]))
    assert set(ds2.splits) == {"train", "test"}
    assert len(list(ds2.split("train"))) == 6


def test_image_folder_class_with_no_images(tmp_path):
    root = write_image_folder(tmp_path / "f", n_classes=2)
    (root / "empty_class").mkdir()
    with pytest.raises(DataError, match="class 'empty_class' has no images"):
        load_dataset(root)


def test_retrieval_csv_and_parquet(tmp_path):
    root = write_retrieval_csv(tmp_path / "csvset", n_images=3)
    ds = load_dataset(root)
    assert ds.layout == "retrieval_table"
    items = list(ds.split("test"))
    assert [i.key for i in items] == ["img/0.jpg", "img/1.jpg", "img/2.jpg"]
    assert items[0].captions == ["a red square", "a square, red"]
    assert items[0].load_image().size == (32, 32)
    # parquet with a list column of captions
    table = pa.table({"image_path": ["img/0.jpg", "img/1.jpg"], "captions": [["one", "two"], ["three"]]})
    pq.write_table(table, root / "set.parquet")
    ds2 = load_dataset(root / "set.parquet")
    assert [i.captions for i in ds2.split("test")] == [["one", "two"], ["three"]]


def test_retrieval_table_bad_columns_and_missing_images(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    (root / "x.csv").write_text("url,caption\na.jpg,hello\n")
    with pytest.raises(DataError, match="needs an image column"):
        load_dataset(root)
    (root / "x.csv").write_text("image,caption\nmissing.jpg,hello\n")
    with pytest.raises(DataError, match="do not exist"):
        load_dataset(root)


@pytest.mark.parametrize("setup, message", [
    ("empty", "not a layout clipstack can read"),
    ("nshards", "nshards.txt says 2 shards but 1.tar is missing"),
    ("dtype", "unknown dataset type 'segmentation'"),
    ("missing", "no such file or folder"),
])
def test_wrong_layouts_name_the_problem(tmp_path, setup, message):
    root = tmp_path / "bad"
    root.mkdir()
    if setup == "empty":
        (root / "readme.md").write_text("nothing here")
    elif setup == "nshards":
        write_wds_classification(root)
        (root / "test" / "nshards.txt").write_text("2\n")
    elif setup == "dtype":
        write_wds_classification(root)
        (root / "dataset_type.txt").write_text("segmentation\n")
    elif setup == "missing":
        root = root / "nope"
    with pytest.raises(ClipstackError, match=message):
        load_dataset(root)


def test_templates_named_and_file(tmp_path):
    assert len(load_templates("openai_imagenet")) == 80
    f = tmp_path / "t.txt"
    f.write_text("a {} thing\nitap of {c}\n")
    assert load_templates(f) == ["a {c} thing", "itap of {c}"]
    f.write_text("no placeholder\n")
    with pytest.raises(ClipstackError, match="placeholder"):
        load_templates(f)
    with pytest.raises(ClipstackError, match="neither a named set"):
        load_templates("nonexistent_set")


def test_clip_benchmark_reads_our_wds_the_same(tmp_path):
    """CLIP_benchmark's own WDS reader sees the same classes, templates and labels in our test sets."""
    builder = pytest.importorskip("clip_benchmark.datasets.builder")
    root = write_wds_classification(tmp_path / "colors", n_classes=3, per_class=2, nshards=2)
    ref = builder.build_wds_dataset("colors", transform=None, split="test", data_dir=str(root))
    ours = load_dataset(root)
    assert ref.classes == ours.classnames and ref.templates == ours.templates
    assert [int(y) for _, y in ref] == [i.label for i in ours.split("test")]


def test_folder_of_sets_expands_with_task_hints(tmp_path):
    from clipstack.evaluate.datasets import expand_dataset_paths

    evals = tmp_path / "eval"
    write_wds_classification(evals / "probe", splits=("train", "test"))
    write_wds_retrieval(evals / "ret")
    (evals / "index.json").write_text('{"probe": {"task": "linear_probe"}, "ret": {"task": "zeroshot_retrieval"}}')
    assert expand_dataset_paths([evals]) == [(evals / "probe", "linear_probe"), (evals / "ret", "zeroshot_retrieval")]
    # one set named directly still finds its hint beside it; a set without an index has none
    assert expand_dataset_paths([evals / "probe"]) == [(evals / "probe", "linear_probe")]
    other = write_wds_retrieval(tmp_path / "solo")
    assert expand_dataset_paths([other]) == [(other, None)]


def test_training_shards_read_as_retrieval_set(tmp_path):
    from _evaluate_util import png

    from clipstack.data.shards import Sample, write_shard

    samples = [Sample(f"{i:09d}", png((40 * i, 100, 100), seed=i), [f"a picture {i}", f"rewrite {i}"], ext="png")
               for i in range(3)]
    samples.append(Sample("000000009", png((0, 0, 0)), [""], ext="png"))  # no usable caption
    write_shard(tmp_path / "heldout", 0, samples)
    ds = load_dataset(tmp_path / "heldout")
    assert (ds.layout, ds.kind) == ("shards", "retrieval")
    split = ds.split("test")
    items = list(split)
    assert [i.captions for i in items] == [[f"a picture {i}", f"rewrite {i}"] for i in range(3)]
    assert items[2].load_image().size == (32, 32)
    assert dict(split.dropped) == {"no_captions": 1}
    assert load_dataset(tmp_path / "heldout" / "00000.tar").name == "00000"


def test_cli_layout_choices_match_the_registry():
    from clipstack.evaluate.cli import LAYOUT_CHOICES

    assert LAYOUT_CHOICES == tuple(lay.name for lay in LAYOUTS)


def test_a_truncated_eval_tar_stops_with_its_name_and_count(tmp_path):
    """A metric over part of a test set would differ silently, so a damaged set is an error, not a skip."""
    from clipstack.evaluate.datasets import _tar_samples

    good = tmp_path / "0.tar"
    with tarfile.open(good, "w") as tf:
        for i in range(3):
            for ext, data in (("webp", b"x" * 700), ("cls", b"1")):
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    assert [k for k, _ in _tar_samples(good)] == ["s0000", "s0001", "s0002"]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:512 * 8])  # a member boundary: s0000 whole, then s0001 image only
    with pytest.raises(DataError, match=r"cut\.tar: unreadable tar after 2 samples"):
        list(_tar_samples(cut))
