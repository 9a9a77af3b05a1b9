"""Synthetic pool: byte-identical determinism, defect counts checked against the ground truth by
independent detectors, multi-caption samples, long tail, and the `clipstack synth` command."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from _synthetic_util import HIGH_RATES, decode, mentions_shape, thumb

from clipstack.cli import main
from clipstack.data.shards import expand_urls, iter_shard, read_samples
from clipstack.data.synthetic import generate
from clipstack.data.synthetic.concepts import COLOR_NAMES, SHAPES, zipf_weights
from clipstack.data.synthetic.defects import TOO_SMALL_SIDE
from clipstack.data.synthetic.scenes import sample_scene, sample_size

N, SHARD = 240, 80


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    summary = generate(out, samples=N, seed=7, workers=2, shard_size=SHARD, rates=HIGH_RATES,
                       eval_scale=0.1, quiet=True)
    return out, summary


def _tars(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.tar"))}


def test_same_seed_byte_identical_any_worker_count(synth, tmp_path):
    out, summary = synth
    again = tmp_path / "b"
    generate(again, samples=N, seed=7, workers=1, shard_size=SHARD, rates=HIGH_RATES, eval_scale=0.1,
             quiet=True)
    first, second = _tars(out), _tars(again)
    assert len(first) == 3 + sum(len(v["splits"]) for v in summary["eval_sets"].values())
    assert first == second  # pool and eval tars, 1 worker vs 2
    assert (out / "ground_truth.parquet").read_bytes() == (again / "ground_truth.parquet").read_bytes()
    other = tmp_path / "c"
    generate(other, samples=N, seed=8, workers=1, shard_size=SHARD, rates=HIGH_RATES, evalsets=False,
             quiet=True)
    third = _tars(other)
    assert all(third[name] != first[name] for name in third)


def test_defect_counts_match_ground_truth(synth):
    out, summary = synth
    gt = {r["key"]: r for r in pq.read_table(out / "ground_truth.parquet").to_pylist()}
    raws = [raw for url in expand_urls(out / "pool") for raw in iter_shard(url)]
    assert [r["__key__"] for r in raws] == sorted(gt) and len(raws) == N
    assert Counter(r["defect"] for r in gt.values()) == Counter(summary["defect_counts"])
    assert all(summary["defect_counts"].get(d, 0) > 0 for d in HIGH_RATES)

    detected: dict[str, str] = {}
    images, sha = {}, {}
    for raw in raws:
        key, data = raw["__key__"], raw.get("jpg", raw.get("png"))
        img = decode(data)
        images[key] = img
        digest = hashlib.sha256(data).hexdigest()
        assert digest == gt[key]["image_sha256"]
        try:
            text = raw["txt"].decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if img is None:
            detected[key] = "broken_image"
        elif min(img.size) < TOO_SMALL_SIDE:
            detected[key] = "too_small"
        elif text is None:
            detected[key] = "non_utf8_caption"
        elif text == "":
            detected[key] = "empty_caption"
        elif len(text.split()) <= 2:
            detected[key] = "short_caption"
        elif digest in sha:
            detected[key] = "exact_duplicate"
            assert gt[key]["duplicate_of"] == sha[digest]
        sha.setdefault(digest, key)
    truth = {k: ("broken_image" if r["defect"] in ("corrupt_image", "truncated_image") else r["defect"])
             for k, r in gt.items()}
    checked = {"broken_image", "too_small", "non_utf8_caption", "empty_caption", "short_caption",
               "exact_duplicate"}
    assert detected == {k: d for k, d in truth.items() if d in checked}

    # Near duplicates: another file, but close to their original at 16x16; unrelated pairs are not.
    near = [k for k, d in truth.items() if d == "near_duplicate"]
    for key in near:
        orig = gt[key]["duplicate_of"]
        assert gt[orig]["defect"] == "clean" and gt[key]["image_sha256"] != gt[orig]["image_sha256"]
        assert np.abs(thumb(images[key]) - thumb(images[orig])).mean() < 16
    clean = [k for k, d in truth.items() if d == "clean"]
    diffs = [np.abs(thumb(images[a]) - thumb(images[b])).mean() for a, b in zip(clean, clean[1:])]
    assert np.median(diffs) > 25
    # Mismatched captions name a shape of another scene and none of the image's own shapes.
    for key, row in gt.items():
        if row["defect"] != "mismatched_caption":
            continue
        caption = next(r for r in raws if r["__key__"] == key)["txt"].decode("utf-8")
        assert not any(mentions_shape(caption, s) for s in row["shapes"]), caption
        assert any(mentions_shape(caption, s) for s in set(row["caption_concepts"]) & set(SHAPES)), caption


def test_captions_name_the_image_and_some_have_rewrites(synth):
    out, _ = synth
    gt = {r["key"]: r for r in pq.read_table(out / "ground_truth.parquet").to_pylist()}
    samples = [s for s in read_samples(out / "pool", on_error=lambda err: None)]
    clean = [s for s in samples if gt[s.key]["defect"] == "clean"]
    multi = [s for s in clean if len(s.captions) >= 2]
    assert 0.15 < len(multi) / len(clean) < 0.5
    for s in multi:
        assert all(len(c) > len(s.captions[0]) * 0.5 for c in s.captions[1:])
        assert gt[s.key]["n_captions"] == len(s.captions)
    for s in clean:
        assert len(s.caption.split()) >= 3
        # every caption names at least one of the image's shapes
        assert all(any(mentions_shape(c, sh) for sh in gt[s.key]["shapes"]) for c in s.captions), s.captions
        assert not any(k in s.meta for k in ("defect", "shapes", "concepts"))  # labels stay hidden
    assert len({s.caption for s in clean}) > 0.95 * len(clean)  # varied text


def test_image_sizes_and_aspect_ratios():
    rng = np.random.default_rng(0)
    sizes = np.array([sample_size(rng) for _ in range(3000)])
    assert sizes.min() >= 96 and sizes.max() <= 640
    ratio = sizes[:, 0] / sizes[:, 1]
    assert ratio.min() >= 1 / 3.05 and ratio.max() <= 3.05
    assert ratio.min() < 0.45 and ratio.max() > 2.2  # the tails are really there


@pytest.mark.parametrize("exponent", [0.0, 1.2])
def test_long_tail_is_tunable(exponent):
    rng = np.random.default_rng(1)
    shape_p, color_p = zipf_weights(len(SHAPES), exponent), zipf_weights(len(COLOR_NAMES), exponent)
    counts = Counter(sample_scene(rng, 100, 100, 1, shape_p, color_p).objects[0].color for _ in range(3000))
    head, tail = counts[COLOR_NAMES[0]], counts[COLOR_NAMES[-1]]
    assert (head / tail > 6) if exponent else (head / tail < 1.5)


def test_cli_runs_resumes_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synth", str(out), "--samples", "30", "--shard-size", "10", "--workers", "1", "--no-eval",
            "--defect-rate", "empty_caption=0.5", "--preview", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "pool: 30 samples in 3 shards" in printed and "empty_caption" in printed
    assert (out / "preview.png").stat().st_size > 10000 and (out / "pool/sizes.json").exists()
    tar = (out / "pool/00001.tar").read_bytes()
    (out / "pool/00001.tar").unlink()  # an interrupted run: the rerun writes only what is missing
    assert main(args) == 0
    assert (out / "pool/00001.tar").read_bytes() == tar
    assert main(["synth", str(out), "--samples", "30", "--seed", "1", "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "x"), "--defect-rate", "bogus=0.1", "--quiet"]) == 2
    assert "unknown defect 'bogus'" in capsys.readouterr().err
