"""`clipstack eval` (a model on evaluation sets, CLIP_benchmark JSON out) and `clipstack eval-table`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TASK_CHOICES = ("auto", "zeroshot_classification", "zeroshot_retrieval", "linear_probe")
LAYOUT_CHOICES = ("clip_benchmark_wds", "retrieval_table", "image_folder", "shards")  # datasets.LAYOUTS


def default_cache_dir() -> str:
    base = os.environ.get("CLIPSTACK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "clipstack")
    return os.path.join(base, "eval_embeddings")


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model: zero-shot classification, retrieval or linear probe",
                       description="Evaluate a model on evaluation sets; writes CLIP_benchmark-format JSON "
                                   "(dataset, model, pretrained, task, metrics, language) and PNGs beside it.")
    p.add_argument("--model", required=True, help="model config name, config JSON, or model folder")
    p.add_argument("--pretrained", default=None, help="weights (file, folder or hf-hub:) to load into --model")
    p.add_argument("--dataset", required=True, nargs="+",
                   help="evaluation set path(s), or a folder of sets (e.g. the eval/ folder clipstack synth writes)")
    p.add_argument("--task", nargs="+", default=["auto"], choices=TASK_CHOICES, metavar="TASK",
                   help=f"task(s): {', '.join(TASK_CHOICES)}; auto: the set's index.json suggestion, else "
                        "retrieval sets -> zeroshot_retrieval, others -> zeroshot_classification")
    p.add_argument("--output", default="{dataset}_{model}_{task}.json",
                   help="output path template; fields {dataset} {model} {pretrained} {task} {language}")
    p.add_argument("--layout", default=None, choices=LAYOUT_CHOICES,
                   help="dataset layout (default: detected)")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="threads decoding and preprocessing images (0: in the main thread)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "amp", "amp_bf16"))
    p.add_argument("--templates", default=None,
                   help="template set name (openai_imagenet, simple, classname) or file; default: the set's own")
    p.add_argument("--prompt-weighting", default="mean", choices=("mean", "zpe"))
    p.add_argument("--zpe-tau", type=float, default=1.0, help="softmax temperature for ZPE template weights")
    p.add_argument("--zpe-reference", default=None,
                   help="images from the pretraining distribution for ZPE's bias correction (any dataset "
                        "layout, e.g. pool shards); default: the test images themselves")
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--fewshot-k", type=int, default=-1, help="linear probe: examples per class (-1: all)")
    p.add_argument("--fewshot-epochs", type=int, default=10)
    p.add_argument("--fewshot-lr", type=float, default=0.1)
    p.add_argument("--probe-batch-size", type=int, default=64, help="linear probe: minibatch size")
    p.add_argument("--val-proportion", type=float, default=0.2,
                   help="linear probe: share of train held out for the weight-decay search when no val split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--language", default="en")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default $CLIPSTACK_CACHE or ~/.cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.set_defaults(func=handle_eval)

    t = sub.add_parser("eval-table", help="combine eval result JSONs into one CSV or Markdown table")
    t.add_argument("results", nargs="+", help="result JSON files or folders of them")
    t.add_argument("--out", required=True, help="table.csv or table.md")
    t.set_defaults(func=handle_table)


def _report_skipped(label: str, err: Exception) -> None:
    print(f"clipstack: error: skipping {label}: {err}", file=sys.stderr, flush=True)


def handle_eval(args: argparse.Namespace) -> int:
    import torch

    from clipstack.evaluate.suite import check_output_template, evaluate_suite
    from clipstack.models import create_model_from_pretrained, get_tokenizer, pack_for_inference
    from clipstack.models.device import check_device

    check_output_template(args.output)  # before loading anything: a typo here would surface only at the end
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    torch.manual_seed(args.seed)  # a randomly initialised model (no weights) is then the same every run
    model, preprocess = create_model_from_pretrained(args.model, pretrained=args.pretrained, device=device)
    if device == "cpu" and args.precision == "fp32":
        pack_for_inference(model)  # oneDNN linears; weights (and the embedding cache key) unchanged
    tokenizer = get_tokenizer(args.model)
    model_path = Path(args.model)
    results = evaluate_suite(
        model, tokenizer, preprocess, args.dataset, args.task, output=args.output, plots=not args.no_plots,
        layout=args.layout, model_name=model_path.name if model_path.exists() else args.model,
        pretrained=args.pretrained or (args.model if model_path.exists() else ""), language=args.language,
        split=args.split, batch_size=args.batch_size, workers=args.workers, device=device,
        precision=args.precision, templates=args.templates, prompt_weighting=args.prompt_weighting,
        zpe_tau=args.zpe_tau, zpe_reference=args.zpe_reference, recall_k=args.recall_k,
        fewshot_k=args.fewshot_k, epochs=args.fewshot_epochs, lr=args.fewshot_lr, seed=args.seed,
        probe_batch_size=args.probe_batch_size, val_proportion=args.val_proportion,
        cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()), on_error=_report_skipped)
    for result, out in results:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in result["metrics"].items())
        print(f"{result['dataset']} {result['task']}: {shown}")
        print(f"wrote {out}")
    return 0


def handle_table(args: argparse.Namespace) -> int:
    from clipstack.evaluate.table import load_results, write_table

    results = load_results(args.results)
    text = write_table(results, args.out)
    if args.out.endswith(".md"):
        print(text, end="")
    print(f"wrote {args.out} ({len(results)} results)")
    return 0
