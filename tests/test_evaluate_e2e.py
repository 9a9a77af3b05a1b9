"""End-to-end evaluation with the random-init `clip-tiny` model on tiny real sets: the CLI, the JSON
keys, the pictures, the embedding cache, the bad-input errors, and parity with CLIP_benchmark's own
evaluation code run on the same model and data."""

from __future__ import annotations

import json

import pytest
import torch
from _evaluate_util import write_retrieval_csv, write_wds_classification, write_wds_retrieval

from clipstack.cli import main
from clipstack.errors import ClipstackError
from clipstack.evaluate import evaluate, load_dataset, load_templates

CB_KEYS = ["dataset", "model", "pretrained", "task", "metrics", "language"]


@pytest.fixture(scope="module")
def tiny():
    from clipstack.models import create_model_from_pretrained, get_tokenizer

    torch.manual_seed(0)
    model, preprocess = create_model_from_pretrained("clip-tiny")
    return model, get_tokenizer("clip-tiny"), preprocess


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalsets")
    return {
        "cls": write_wds_classification(root / "colors", n_classes=5, per_class=3, splits=("train", "test"),
                                        nshards=2),
        "ret": write_wds_retrieval(root / "captions", n_images=5, caps=2),
        "csv": write_retrieval_csv(root / "table", n_images=3),
    }


def test_cli_eval_writes_clip_benchmark_json_and_pictures(tmp_path, sets, capsys):
    out = tmp_path / "res" / "{dataset}_{model}_{task}.json"
    rc = main(["eval", "--model", "clip-tiny", "--dataset", str(sets["cls"]), str(sets["ret"]),
               "--task", "auto", "--output", str(out), "--cache-dir", str(tmp_path / "cache"), "--recall-k", "1", "5"])
    assert rc == 0
    cls = json.loads((tmp_path / "res" / "colors_clip-tiny_zeroshot_classification.json").read_text())
    ret = json.loads((tmp_path / "res" / "captions_clip-tiny_zeroshot_retrieval.json").read_text())
    for r in (cls, ret):
        assert list(r) == CB_KEYS
        assert r["model"] == "clip-tiny" and r["language"] == "en"
        assert r["metrics"]["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip init
        assert 0 <= r["metrics"]["modality_gap"] <= 2
    assert cls["task"] == "zeroshot_classification"
    assert {"acc1", "acc5", "mean_per_class_recall"} <= set(cls["metrics"])
    assert set(ret["metrics"]) >= {"image_retrieval_recall@1", "image_retrieval_recall@5",
                                   "text_retrieval_recall@1", "text_retrieval_recall@5",
                                   "image_retrieval_median_rank", "text_retrieval_mean_rank"}
    assert ret["metrics"]["image_retrieval_recall@5"] == 1.0  # only 5 images
    for png in ("colors_clip-tiny_zeroshot_classification_confusion.png",
                "captions_clip-tiny_zeroshot_retrieval_recall_at_k.png",
                "captions_clip-tiny_zeroshot_retrieval_examples.png"):
        assert (tmp_path / "res" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out
    # the two results combine into one table
    assert main(["eval-table", str(tmp_path / "res"), "--out", str(tmp_path / "t.csv")]) == 0
    header, *rows = (tmp_path / "t.csv").read_text().splitlines()
    assert header.startswith("dataset,model,pretrained,task,language,acc1,acc5,mean_per_class_recall")
    assert len(rows) == 2
    assert main(["eval-table", str(tmp_path / "res"), "--out", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "t.md").read_text().startswith("| dataset | model |")


def test_linear_probe_and_fewshot_via_api(tiny, sets):
    model, tok, pre = tiny
    r = evaluate(model, tok, pre, sets["cls"], "linear_probe", fewshot_k=1, epochs=5, seed=1)
    assert list(r) == CB_KEYS
    m = r["metrics"]
    assert set(m) >= {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "weight_decay", "epochs", "seed",
                      "fewshot_k", "normalized"}
    assert m["fewshot_k"] == 1 and m["epochs"] == 5 and 1e-6 <= m["weight_decay"] <= 100
    with pytest.raises(ClipstackError, match="class 'red' has only 3 training examples"):
        evaluate(model, tok, pre, sets["cls"], "linear_probe", fewshot_k=4, val_proportion=0)


def test_zpe_weighting_and_templates_option(tiny, sets):
    model, tok, pre = tiny
    templates = load_templates("openai_imagenet")[:10]
    mean = evaluate(model, tok, pre, sets["cls"], "zeroshot_classification", templates=templates)
    zpe = evaluate(model, tok, pre, sets["cls"], "zeroshot_classification", templates=templates,
                   prompt_weighting="zpe")
    assert 0 < zpe["metrics"]["zpe_max_template_weight"] <= 1
    # the test set as an explicit reference is the default; another image set is a different reference
    same = evaluate(model, tok, pre, sets["cls"], "zeroshot_classification", templates=templates,
                    prompt_weighting="zpe", zpe_reference=str(sets["cls"]))
    assert same["metrics"] == zpe["metrics"]
    other = evaluate(model, tok, pre, sets["cls"], "zeroshot_classification", templates=templates,
                     prompt_weighting="zpe", zpe_reference=sets["ret"])
    assert other["metrics"]["zpe_max_template_weight"] != zpe["metrics"]["zpe_max_template_weight"]
    assert mean["metrics"]["modality_gap"] == pytest.approx(zpe["metrics"]["modality_gap"])


def test_retrieval_on_csv_table(tiny, sets):
    model, tok, pre = tiny
    r = evaluate(model, tok, pre, sets["csv"], "zeroshot_retrieval", recall_k=(1, 3, 6))
    assert r["dataset"] == "table"
    # 3 images, 6 captions: every caption finds its image within 3, every image its captions within 6
    assert r["metrics"]["image_retrieval_recall@3"] == 1.0 and r["metrics"]["text_retrieval_recall@6"] == 1.0


def test_second_task_reads_cached_embeddings(tmp_path, sets):
    from clipstack.models import create_model_from_pretrained, get_tokenizer

    model, pre = create_model_from_pretrained("clip-tiny")
    calls = []
    real = model.encode_image
    model.encode_image = lambda x, *a, **k: calls.append(len(x)) or real(x, *a, **k)
    kw = {"cache_dir": tmp_path / "cache"}
    first = evaluate(model, get_tokenizer("clip-tiny"), pre, sets["cls"], "zeroshot_classification", **kw)
    n_first = sum(calls)
    assert n_first == 15  # the test split, once
    second = evaluate(model, get_tokenizer("clip-tiny"), pre, sets["cls"], "zeroshot_classification", **kw)
    assert sum(calls) == n_first and second["metrics"] == first["metrics"]
    evaluate(model, get_tokenizer("clip-tiny"), pre, sets["cls"], "linear_probe", epochs=2, **kw)
    assert sum(calls) == n_first + 15  # only the train split is new
    # a rewritten shard (new mtime) is a different dataset: encoded again, not read stale
    tar = sets["cls"] / "test" / "0.tar"
    tar.write_bytes(tar.read_bytes())
    import os

    os.utime(tar, ns=(tar.stat().st_atime_ns, tar.stat().st_mtime_ns + 10**9))
    evaluate(model, get_tokenizer("clip-tiny"), pre, sets["cls"], "zeroshot_classification", **kw)
    assert sum(calls) == n_first + 30
    # a damaged cache entry is a miss, not a crash
    for npz in (tmp_path / "cache").glob("*.npz"):
        npz.write_bytes(b"garbage")
    again = evaluate(model, get_tokenizer("clip-tiny"), pre, sets["cls"], "zeroshot_classification", **kw)
    assert sum(calls) == n_first + 45 and again["metrics"] == first["metrics"]


def test_siglip_model_reports_logit_bias(sets):
    from clipstack.models import create_model_from_pretrained, get_tokenizer

    model, pre = create_model_from_pretrained("siglip-tiny")
    m = evaluate(model, get_tokenizer("siglip-tiny"), pre, sets["ret"], "zeroshot_retrieval")["metrics"]
    assert m["logit_bias"] == pytest.approx(-10.0) and m["logit_scale"] == pytest.approx(10.0, rel=1e-5)


def test_bad_input_gives_one_clear_error(tmp_path, sets, capsys, tiny):
    model, tok, pre = tiny
    nocls = write_wds_classification(tmp_path / "nocls", classnames=False)
    with pytest.raises(ClipstackError, match="no class names"):
        evaluate(model, tok, pre, nocls, "zeroshot_classification")
    with pytest.raises(ClipstackError, match="retrieval set .* cannot be used for linear_probe"):
        evaluate(model, tok, pre, sets["ret"], "linear_probe")
    with pytest.raises(ClipstackError, match="needs captions per image"):
        evaluate(model, tok, pre, sets["cls"], "zeroshot_retrieval")
    onlytest = write_wds_classification(tmp_path / "onlytest")
    with pytest.raises(ClipstackError, match="needs a 'train' split"):
        evaluate(model, tok, pre, onlytest, "linear_probe")
    # a label naming no class is one bad sample: skipped and counted, like a corrupt image
    bad_label = write_wds_classification(tmp_path / "badlabel", n_classes=3)
    (bad_label / "classnames.txt").write_text("red\ngreen\n")
    assert evaluate(model, tok, pre, bad_label, "zeroshot_classification")["metrics"]["dropped_samples"] == 4
    # a checkpoint that does not fit the config, through the CLI: exit 2 and one line naming it
    state = {k: v for k, v in model.state_dict().items() if k != "text_projection"}
    ckpt = tmp_path / "broken.pt"
    torch.save({"state_dict": state}, ckpt)
    capsys.readouterr()
    rc = main(["eval", "--model", "clip-tiny", "--pretrained", str(ckpt), "--dataset", str(sets["cls"]),
               "--no-cache", "--no-plots", "--output", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "broken.pt" in err and "text_projection" in err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a dataset")
    rc = main(["eval", "--model", "clip-tiny", "--dataset", str(junk), "--no-cache"])
    assert rc == 2 and "not a layout clipstack can read" in capsys.readouterr().err


# --- parity with CLIP_benchmark's evaluation code on the same model and data ----------------------

def _cb_loader(root, preprocess, retrieval=False):
    builder = pytest.importorskip("clip_benchmark.datasets.builder")
    ds = builder.build_wds_dataset(root.name, transform=preprocess, split="test", data_dir=str(root))
    collate = (lambda b: (torch.stack([x for x, _ in b]), [t for _, t in b])) if retrieval else None
    return ds, torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)


def test_zeroshot_classification_parity_with_clip_benchmark(tiny, sets):
    zc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    sk = pytest.importorskip("sklearn.metrics")
    model, tok, pre = tiny
    ds, loader = _cb_loader(sets["cls"], pre)
    templates = load_templates("openai_imagenet")[:8]
    classifier = zc.zero_shot_classifier(model, tok, ds.classes, templates, "cpu", amp=False)
    ref_logits, ref_target = zc.run_classification(model, classifier, loader, "cpu", amp=False)
    ours = evaluate(model, tok, pre, sets["cls"], "zeroshot_classification", templates=templates)["metrics"]
    # CLIP_benchmark's `accuracy` helper fails on NumPy 2 (float() of a 1-element array): score its logits
    # with scikit-learn, which defines the same quantities.
    labels = list(range(len(ds.classes)))
    assert ours["acc1"] == pytest.approx(sk.top_k_accuracy_score(ref_target, ref_logits, k=1, labels=labels))
    assert ours["acc5"] == pytest.approx(sk.top_k_accuracy_score(ref_target, ref_logits, k=5, labels=labels))
    assert ours["mean_per_class_recall"] == pytest.approx(
        sk.balanced_accuracy_score(ref_target, ref_logits.argmax(1)))
    # and the classifier itself matches
    from clipstack.evaluate.zeroshot import class_prompt_embeddings, ensemble

    mine = ensemble(class_prompt_embeddings(model, tok, ds.classes, templates))
    assert torch.allclose(mine.T, classifier, atol=1e-5)


def test_zeroshot_retrieval_parity_with_clip_benchmark(tiny, sets):
    zr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
    model, tok, pre = tiny
    _, loader = _cb_loader(sets["ret"], pre, retrieval=True)
    ref = zr.evaluate(model, loader, tok, "cpu", amp=False, recall_k_list=[1, 2, 5])
    ours = evaluate(model, tok, pre, sets["ret"], "zeroshot_retrieval", recall_k=(1, 2, 5))["metrics"]
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v), k


def test_corrupt_image_is_skipped_and_counted(tmp_path, tiny):
    from _evaluate_util import png, write_tars

    from clipstack.evaluate.embed_cache import encode_split

    model, tok, pre = tiny
    root = tmp_path / "withbad"
    samples = [{"png": png((200, 0, 0), seed=i), "cls": b"0"} for i in range(3)]
    samples.insert(1, {"png": b"\x89PNG not really", "cls": b"0"})
    write_tars(root / "test", samples)
    (root / "classnames.txt").write_text("red\n")
    split = load_dataset(root).split("test")
    for workers in (0, 2):
        emb = encode_split(model, pre, split, batch_size=2, workers=workers)
        assert emb.image_emb.shape[0] == 3 and emb.dropped == {"undecodable_image": 1}
        assert emb.keys == ["s0000000", "s0000002", "s0000003"]
    result = evaluate(model, tok, pre, root, "zeroshot_classification")
    assert result["metrics"]["dropped_samples"] == 1 and result["metrics"]["acc1"] == 1.0  # one class


def test_eval_table_orders_columns_and_rejects_non_results(tmp_path, capsys):
    from clipstack.evaluate.table import results_table

    a = {"dataset": "d", "model": "m", "pretrained": "", "task": "zeroshot_retrieval", "language": "en",
         "metrics": {"text_retrieval_recall@10": 0.9, "image_retrieval_recall@5": 0.5, "modality_gap": 0.8,
                     "image_retrieval_recall@10": 0.7}}
    b = {"dataset": "d", "model": "m", "pretrained": "", "task": "zeroshot_classification", "language": "en",
         "metrics": {"acc5": float("nan"), "acc1": 0.25, "mean_per_class_recall": 0.3}}
    columns, rows = results_table([a, b])
    assert columns[5:] == ["acc1", "acc5", "mean_per_class_recall", "image_retrieval_recall@5",
                           "image_retrieval_recall@10", "text_retrieval_recall@10", "modality_gap"]
    assert rows[0][5] == "" and rows[1][5] == 0.25
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["eval-table", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "t.md")]) == 0
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[3].endswith("| 0.2500 | nan | 0.3000 |  |  |  |  |")
    (tmp_path / "bad.json").write_text('{"metrics": {}}')
    capsys.readouterr()
    assert main(["eval-table", str(tmp_path / "bad.json"), "--out", str(tmp_path / "t.csv")]) == 2
    assert "not a CLIP_benchmark result (missing dataset, model, pretrained, task, language)" in capsys.readouterr().err


def test_cli_eval_of_a_saved_model_folder(tmp_path, tiny, sets):
    from clipstack.models import save_pretrained

    model, tok, pre = tiny
    folder = save_pretrained(model, tmp_path / "my-model")
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(folder), "--dataset", str(sets["cls"]), "--no-cache", "--no-plots",
                 "--output", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["model"], r["pretrained"]) == ("my-model", str(folder))
    # the same weights through the Python API give the same numbers
    assert r["metrics"] == evaluate(model, tok, pre, sets["cls"], "zeroshot_classification")["metrics"]


def test_evaluate_suite_on_a_folder_of_sets(tmp_path, tiny):
    from clipstack.evaluate import evaluate_suite

    model, tok, pre = tiny
    evals = tmp_path / "eval"
    write_wds_classification(evals / "probe", n_classes=3, per_class=4, splits=("train", "test"))
    write_wds_retrieval(evals / "ret", n_images=3)
    (evals / "index.json").write_text('{"probe": {"task": "linear_probe"}, "ret": {"task": "zeroshot_retrieval"}}')
    runs = list(evaluate_suite(model, tok, pre, [evals], output=None, epochs=2, model_name="tiny"))
    assert [(r["dataset"], r["task"], path) for r, path in runs] == [
        ("probe", "linear_probe", None), ("ret", "zeroshot_retrieval", None)]
    assert not list(tmp_path.glob("*.json"))
    runs = list(evaluate_suite(model, tok, pre, [evals / "probe"], ["zeroshot_classification"],
                               output=tmp_path / "o" / "{dataset}-{task}.json", plots=False))
    assert runs[0][1] == tmp_path / "o" / "probe-zeroshot_classification.json" and runs[0][1].is_file()
