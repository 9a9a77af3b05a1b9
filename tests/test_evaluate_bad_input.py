"""Bad input to `clipstack eval`: one clear line naming the file or option, checked before any image is
encoded where it would fail every set; a broken set is skipped and the others still evaluated; a bad
label is one skipped, counted sample; result files are strict JSON."""

from __future__ import annotations

import json
import math
import re
import tarfile

import pytest
import torch
from _evaluate_util import png, write_tars, write_wds_classification, write_wds_retrieval

from clipstack.cli import main
from clipstack.errors import ConfigError, DataError
from clipstack.evaluate import evaluate, load_dataset, load_templates


@pytest.fixture(scope="module")
def tiny():
    from clipstack.models import create_model_from_pretrained, get_tokenizer

    torch.manual_seed(0)
    model, preprocess = create_model_from_pretrained("clip-tiny")
    return model, get_tokenizer("clip-tiny"), preprocess


def _eval(tmp_path, *extra: str) -> int:
    return main(["eval", "--model", "clip-tiny", "--no-plots", "--workers", "0",
                 "--cache-dir", str(tmp_path / "cache"), *extra])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("clipstack: error: ") and err.count("\n") == 1, err
    return err


def test_non_utf8_classnames_and_templates_name_the_file(tmp_path, capsys, tiny):
    ds = write_wds_classification(tmp_path / "colors", n_classes=2, per_class=1)
    (ds / "classnames.txt").write_bytes(b"red\ngr\xfcn\n")
    with pytest.raises(DataError, match=r"colors/classnames\.txt: class names file is not UTF-8"):
        evaluate(*tiny, ds, "zeroshot_classification")
    assert _eval(tmp_path, "--dataset", str(ds), "--output", str(tmp_path / "r.json")) == 2
    assert "classnames.txt: class names file is not UTF-8" in _one_line(capsys)
    (ds / "classnames.txt").write_text("red\ngreen\n")
    for name, data, message in (("t.txt", b"a photo of a {c} \xe9t\xe9\n", r"t\.txt: templates file is not UTF-8"),
                                ("t.json", b'["a {c}",', r"t\.json: templates file is not valid JSON")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises((ConfigError, DataError), match=message):
            load_templates(tmp_path / name)
        assert _eval(tmp_path, "--dataset", str(ds), "--templates", str(tmp_path / name),
                     "--output", str(tmp_path / "r.json")) == 2
        assert name in _one_line(capsys)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "r.json").exists()  # refused before work


@pytest.mark.parametrize("template,message", [
    ("res/{nosuchfield}.json", r"unknown field \{nosuchfield\}; the fields are \{dataset\} \{model\}"),
    ("res/{}.json", r"unknown field \{\}"),
    ("res/{dataset.json", r"not a valid path template"),
    ("/proc/forbidden/{dataset}.json", r"cannot create folder /proc/forbidden"),
])
def test_bad_output_template_is_refused_before_any_work(tmp_path, capsys, template, message):
    ds = write_wds_classification(tmp_path / "colors", n_classes=2, per_class=1)
    out = template if template.startswith("/") else str(tmp_path / template)
    assert _eval(tmp_path, "--dataset", str(ds), "--output", out) == 2
    err = _one_line(capsys)
    assert re.search(message, err), err
    assert not (tmp_path / "cache").exists()  # nothing was encoded


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch")
def test_cuda_device_without_cuda_is_one_line(tmp_path, capsys):
    ds = write_wds_classification(tmp_path / "colors", n_classes=2, per_class=1)
    for device in ("cuda", "cuda:7"):
        assert _eval(tmp_path, "--dataset", str(ds), "--device", device) == 2
        assert f"--device {device}: torch sees no CUDA GPU" in _one_line(capsys)
    assert _eval(tmp_path, "--dataset", str(ds), "--device", "gpu0") == 2
    assert "--device 'gpu0': not a torch device" in _one_line(capsys)


def test_a_broken_set_is_skipped_and_the_others_written(tmp_path, capsys):
    evals = tmp_path / "eval"
    broken = write_wds_classification(evals / "a_broken", n_classes=3, per_class=3)
    tar = broken / "test" / "0.tar"
    with tarfile.open(tar) as tf:
        last = [m for m in tf.getmembers() if m.name.endswith(".png")][-2]
    tar.write_bytes(tar.read_bytes()[:last.offset_data + 100])  # cut inside a later sample's image
    write_wds_classification(evals / "b_colors", n_classes=3, per_class=2)
    write_wds_retrieval(evals / "c_captions", n_images=3)
    nocls = write_wds_classification(evals / "d_nocls", n_classes=2, per_class=1, classnames=False)
    (nocls / "dataset_type.txt").write_text("bogus\n")  # fails while loading, not while evaluating
    capsys.readouterr()
    rc = _eval(tmp_path, "--dataset", str(evals), "--output", str(tmp_path / "res" / "{dataset}_{task}.json"))
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith("clipstack: error: skipping d_nocls: ") and "dataset_type.txt" in lines[0]
    assert lines[1].startswith("clipstack: error: skipping a_broken zeroshot_classification: ")
    assert re.search(r"a_broken/test/0\.tar: unreadable tar after \d+ samples", lines[1])
    assert lines[2] == ("clipstack: error: 2 of 4 evaluations failed and were skipped: d_nocls, "
                        "a_broken zeroshot_classification; the other results were written")
    assert len(lines) == 3
    written = sorted(p.name for p in (tmp_path / "res").glob("*.json"))
    assert written == ["b_colors_zeroshot_classification.json", "c_captions_zeroshot_retrieval.json"]
    assert "b_colors zeroshot_classification" in captured.out and "c_captions" in captured.out


def test_bad_labels_are_skipped_and_counted(tmp_path, tiny):
    root = tmp_path / "labels"
    samples = [{"png": png((200, 0, 0), seed=i), "cls": b"0"} for i in range(3)]
    samples += [{"png": png((0, 200, 0), seed=9), "cls": b"1"},
                {"png": png((0, 200, 0), seed=10), "cls": b"one"},     # not an integer
                {"png": png((0, 200, 0), seed=11), "cls": b"\xff"},    # not UTF-8
                {"png": png((0, 200, 0), seed=12), "cls": b"7"},       # no such class
                {"png": png((0, 200, 0), seed=13), "cls": b"-1"},
                {"png": b"\x89PNG broken", "cls": b"0"}]               # undecodable image
    write_tars(root / "test", samples)
    (root / "classnames.txt").write_text("red\ngreen\n")
    result = evaluate(*tiny, root, "zeroshot_classification")
    assert result["metrics"]["dropped_samples"] == 5
    split = load_dataset(root).split("test")
    assert len(list(split)) == 5 and dict(split.dropped) == {"bad_label": 4}  # 9 in == 5 kept + 4 dropped
    multi = tmp_path / "multi"
    write_tars(multi / "test", [{"jpg": png((200, 0, 0)), "npy": b"not npy"},
                                {"jpg": png((0, 200, 0)), "npy": _npy([0, 1])}])
    (multi / "classnames.txt").write_text("red\ngreen\n")
    (multi / "dataset_type.txt").write_text("multilabel\n")
    m = evaluate(*tiny, multi, "zeroshot_classification")["metrics"]
    assert m["dropped_samples"] == 1 and "mean_average_precision" in m


def _npy(values) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.array(values))
    return buf.getvalue()


def test_undefined_metrics_are_null_in_strict_json_and_nan_in_tables(tmp_path, capsys):
    ds = write_wds_classification(tmp_path / "three", n_classes=3, per_class=1)
    out = tmp_path / "res" / "r.json"
    assert _eval(tmp_path, "--dataset", str(ds), "--output", str(out)) == 0
    assert "acc5=nan" in capsys.readouterr().out  # CLIP_benchmark's semantics: undefined below 5 classes

    def refuse(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    result = json.loads(out.read_text(), parse_constant=refuse)
    assert result["metrics"]["acc5"] is None and not math.isnan(result["metrics"]["acc1"])
    assert main(["eval-table", str(out), "--out", str(tmp_path / "t.md")]) == 0
    header, _, row = (tmp_path / "t.md").read_text().splitlines()
    cells = dict(zip(header.split(" | "), row.split(" | ")))
    assert cells["acc5"] == "nan"
    assert main(["eval-table", str(out), "--out", str(tmp_path / "t.csv")]) == 0
    assert ",nan," in (tmp_path / "t.csv").read_text().splitlines()[1]
