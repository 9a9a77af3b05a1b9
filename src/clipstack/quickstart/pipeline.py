"""The quickstart's stages as `clipstack` commands, run in order in one process, resumable.

A state file (`quickstart.json`) records the settings and each finished stage. A stage that did not
finish (a crash, Ctrl-C) is redone from scratch on the next run -- its partial output removed first --
except training, which continues from its newest checkpoint and so ends bitwise where an uninterrupted
run would. A workdir with other settings, or a non-empty folder that is not a quickstart, is refused;
every option is checked by its stage's own validation before the first stage runs (`checks`).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipstack.errors import ClipstackError, DataError
from clipstack.io import read_json, write_json
from clipstack.quickstart.checks import check_settings, check_workdir
from clipstack.quickstart.settings import QuickstartSettings

STATE_FILE = "quickstart.json"
DEFAULT_QUERIES = ("a red circle", "a blue striped square", "a small green triangle above a yellow star",
                   "a purple heart with dots")


@dataclass
class Stage:
    name: str
    title: str
    argv: list[str]
    outputs: list[str] = field(default_factory=list)  # removed before a stage is redone
    resumable: bool = False  # continues from its own partial output instead

    @property
    def command(self) -> str:
        return "clipstack " + shlex.join(self.argv)


class Layout:
    """Where each stage writes inside the workdir."""

    def __init__(self, workdir: Path):
        w = workdir
        self.workdir = w
        self.data, self.pool, self.eval_sets = w / "data", w / "data" / "pool", w / "data" / "eval"
        self.metadata = w / "data" / "metadata.json"
        self.curated = w / "curated"
        self.run = w / "run"
        self.model = w / "run" / "export"
        self.eval = w / "eval"
        self.embeddings, self.index = w / "embeddings", w / "index"
        self.queries, self.report = w / "queries.json", w / "report.html"


def plan(workdir: Path, s: QuickstartSettings) -> list[Stage]:
    """The stages, as the commands that run them (also what the report prints to reproduce them)."""
    p = Layout(workdir)
    return [
        Stage("synth", "generate the embedded pool and evaluation sets", [
            "synth", str(p.data), "--samples", str(s.samples), "--seed", str(s.seed),
            "--eval-scale", str(s.eval_scale), "--preview", "--quiet"], [str(p.data)]),
        Stage("metadata", "build a MetaCLIP metadata list (WordNet + pool unigrams and bigrams)", [
            "metadata", "build", str(p.metadata), "--corpus", str(p.pool), "--min-count", "20"],
            [str(p.metadata)]),
        Stage("curate", "text and size filters, exact/perceptual/caption dedup, MetaCLIP balancing", [
            "curate", str(p.pool), str(p.curated), "--steps", "text,basic,exact,phash,caption,balance",
            "--min-side", "64", "--phash-size", "16", "--phash-threshold", "16",
            "--metadata", str(p.metadata), "--t", str(s.t), "--seed", str(s.seed),
            "--report", "--ground-truth", str(p.data / "ground_truth.parquet")], [str(p.curated)]),
        Stage("train", f"train {s.model} on the curated shards", [
            "train", "--model.name", s.model, "--data.urls", str(p.curated / "shards"), "--run-dir", str(p.run),
            "--seed", str(s.seed), "--data.batch_size", str(s.batch_size), "--optim.lr", str(s.lr),
            "--schedule.warmup_steps", str(s.warmup_steps), "--schedule.epochs", "1000",
            "--schedule.max_steps", str(s.steps), "--schedule.time_budget_s", f"{s.budget_minutes * 60:g}",
            "--checkpoint.every_steps", "50", "--checkpoint.keep_last", "2", "--resume", "latest"],
            resumable=True),
        Stage("eval", "evaluate: zero-shot classification, retrieval and linear probes on every eval set", [
            "eval", "--model", str(p.model), "--dataset", str(p.eval_sets),
            "--output", str(p.eval / "{dataset}_{task}.json"), "--cache-dir", str(p.workdir / "cache"),
            "--seed", str(s.seed)], [str(p.eval), str(p.workdir / "cache")]),
        Stage("embed", "embed the retrieval set's images and captions", [
            "embed", str(p.model), str(p.eval_sets / "retrieval" / "test"), str(p.embeddings)],
            [str(p.embeddings)]),
        Stage("index", "build the FAISS index", ["index", str(p.embeddings), str(p.index)], [str(p.index)]),
    ]


def _load_state(workdir: Path, settings: QuickstartSettings) -> dict[str, Any]:
    path = workdir / STATE_FILE
    if not path.exists():
        if workdir.exists() and any(workdir.iterdir()):
            raise ClipstackError(f"{workdir}: folder is not empty and holds no {STATE_FILE}, so it is not a "
                                 "quickstart run; choose an empty or new --workdir")
        return {"settings": asdict(settings), "done": {}}
    try:
        state = read_json(path, "quickstart state")
        saved = state["settings"]
        if not isinstance(saved, dict) or not isinstance(state.get("done"), dict):
            raise TypeError("'settings' and 'done' must be objects")
    except DataError as err:
        raise ClipstackError(f"{err}; use another --workdir") from None
    except (AttributeError, KeyError, TypeError) as err:
        raise ClipstackError(f"{path}: unreadable quickstart state ({err}); use another --workdir") from None
    if saved != asdict(settings):
        diff = ", ".join(f"{k}: {saved.get(k)!r} then, {v!r} now" for k, v in asdict(settings).items()
                         if saved.get(k) != v)
        raise ClipstackError(f"{workdir} holds a quickstart run with other settings ({diff}); rerun with the "
                             "same settings to resume it, or choose another --workdir")
    return state


def _remove(paths: list[str]) -> None:
    for name in paths:
        target = Path(name)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def run_stages(workdir: Path, settings: QuickstartSettings, only: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the stage commands; returns the state with each stage's seconds and command."""
    from clipstack.cli import main as cli_main
    from clipstack.io import ensure_folder

    stages = plan(workdir, settings)
    # Every check before the first write: a bad option or workdir must not leave a half-run folder
    # that only the same (failing) settings may resume.
    check_settings(settings, {stage.name: stage.argv for stage in stages})
    check_workdir(workdir)
    state = _load_state(workdir, settings)
    ensure_folder(workdir, "the workdir")
    write_json(workdir / STATE_FILE, state)
    for i, stage in enumerate(stages, 1):
        if only and stage.name not in only:
            continue
        prefix = f"[{i}/{len(stages) + 2}] {stage.name}"
        if stage.name in state["done"]:
            print(f"{prefix}: finished earlier ({state['done'][stage.name]['seconds']:.1f} s), skipped", flush=True)
            continue
        if not stage.resumable:
            _remove(stage.outputs)
        print(f"{prefix}: {stage.title}\n  $ {stage.command}", flush=True)
        start = time.time()
        code = cli_main(stage.argv)
        if code == 130:
            raise KeyboardInterrupt
        if code:
            raise ClipstackError(f"quickstart stage '{stage.name}' failed (exit {code}); fix the cause above "
                                 f"and rerun the same quickstart command to resume")
        seconds = time.time() - start
        state["done"][stage.name] = {"seconds": round(seconds, 1), "command": stage.command}
        write_json(workdir / STATE_FILE, state)
        print(f"{prefix}: done in {seconds:.1f} s", flush=True)
    return state


def run_queries(workdir: Path, queries: list[str], k: int = 5) -> list[dict[str, Any]]:
    """Text -> image search on the built index with the trained model; also saved to queries.json."""
    import torch

    from clipstack.models import create_model_from_pretrained, get_tokenizer
    from clipstack.search import SearchIndex

    p = Layout(workdir)
    index = SearchIndex(p.index)
    model, _ = create_model_from_pretrained(str(p.model))
    model.eval()
    with torch.no_grad():
        vectors = model.encode_text(get_tokenizer(str(p.model))(list(queries)), normalize=True).numpy()
    scores, ids = index.search("image", vectors, k)
    results = []
    for query, row_scores, row_ids in zip(queries, scores, ids):
        hits = [{"id": int(i), "similarity": float(sc), **meta} for i, sc, meta in
                zip(row_ids, row_scores, index.lookup([int(i) for i in row_ids if i >= 0]))]
        results.append({"query": query, "hits": hits})
    write_json(p.queries, results)
    return results


def run_quickstart(workdir: str | Path, settings: QuickstartSettings | None = None,
                   queries: list[str] | None = None) -> dict[str, Any]:
    """Run every stage, the queries and the report; returns the state plus `queries` and `report`."""
    from clipstack.quickstart.report import eval_rows, write_report

    workdir = Path(workdir)
    settings = settings or QuickstartSettings()
    state = run_stages(workdir, settings)
    total = len(plan(workdir, settings)) + 2
    print(f"[{total - 1}/{total}] query: text -> image search on the index", flush=True)
    results = run_queries(workdir, list(queries or DEFAULT_QUERIES))
    for r in results:
        print(f"  {r['query']!r}:")
        for hit in r["hits"][:3]:
            print(f"    {hit['similarity']:.3f}  {hit.get('caption', '')}")
    print(f"[{total}/{total}] report", flush=True)
    report = write_report(workdir, settings, state, results)
    state["queries"], state["report"], state["eval"] = results, str(report), eval_rows(workdir)
    return state


def _print_summary(workdir: Path, state: dict[str, Any]) -> None:
    rows = state["eval"]
    print("\nResults (chance in brackets):")
    for row in rows:
        vs = f"[{row['chance']:.3f}]  {row['value'] / row['chance']:4.1f}x chance" if row["chance"] else ""
        print(f"  {row['dataset']:<15} {row['metric']:<25} {row['value']:.3f}  {vs}")
    seconds = sum(d["seconds"] for d in state["done"].values())
    print(f"\nAll stages done ({seconds / 60:.1f} min of stage time). Everything is in {workdir}/:")
    print(f"  report:  {state['report']}")
    model = Layout(workdir).model
    print(f"  model:   {model}  (clipstack.create_model('{model}'), open_clip.create_model('local-dir:{model}'))")
    print("Serve the index with its web page:")
    print(f"  clipstack serve --indices {Layout(workdir).index} --port 1234   # then open http://127.0.0.1:1234/")


def main(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    settings = QuickstartSettings.from_args(args)
    try:
        state = run_quickstart(workdir, settings, args.queries)
    except KeyboardInterrupt:
        print(f"\nquickstart interrupted; rerun the same command to resume: clipstack quickstart --workdir "
              f"{shlex.quote(str(workdir))} ...", file=sys.stderr)
        return 130
    _print_summary(workdir, state)
    return 0
