"""`report.html`: one self-contained page (images inlined) telling what each quickstart stage did.

It only reads what the stages wrote -- curation stats and plots, the run folder, CLIP_benchmark-style
result JSONs and their pictures, the index's thumbnails -- so it can be rebuilt at any time from a
workdir, and it lists the exact commands to reproduce each step.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clipstack.io import write_bytes
from clipstack.quickstart.settings import QuickstartSettings

_HEADLINE_METRIC = {"zeroshot_classification": ["acc1"], "linear_probe": ["lp_acc1"],
                    "zeroshot_retrieval": ["image_retrieval_recall@1", "text_retrieval_recall@1",
                                           "image_retrieval_recall@5", "text_retrieval_recall@5"]}
_TASK_ORDER = {"zeroshot_classification": 0, "zeroshot_retrieval": 1, "linear_probe": 2}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}td,th{border:1px solid #ddd;padding:.3em .6em;
text-align:left}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#137333;font-weight:600}.muted{color:#777}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0;flex:1 1 320px;max-width:520px}
.plots img{width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
pre{background:#f6f8fa;padding:.7em;overflow-x:auto;font-size:.85em;white-space:pre-wrap}
.hits{display:flex;gap:8px;margin-bottom:1em}.hit{width:150px;font-size:.78em}
.hit img{width:150px;height:150px;object-fit:contain;background:#f4f4f4;border:1px solid #ddd}
"""


def chance_levels(eval_sets: Path) -> dict[str, dict[str, float]]:
    """Chance of each headline metric, from the eval sets' index.json (1/classes; k/N for recall@k)."""
    index_file = eval_sets / "index.json"
    index = json.loads(index_file.read_text(encoding="utf-8")) if index_file.exists() else {}
    out: dict[str, dict[str, float]] = {}
    for name, entry in index.items():
        classes = entry.get("classes") or 0
        images = entry.get("splits", {}).get("test") or 0
        if entry.get("task") == "zeroshot_retrieval" and images:
            out[name] = {f"{d}_retrieval_recall@{k}": min(1.0, k / images) for d in ("image", "text")
                         for k in (1, 5, 10)}
        elif classes:
            out[name] = {"acc1": 1 / classes, "lp_acc1": 1 / classes}
    return out


def eval_rows(workdir: Path) -> list[dict[str, Any]]:
    """One row per (set, headline metric) of the eval stage, with its chance level."""
    chance = chance_levels(workdir / "data" / "eval")
    rows = []
    for path in sorted((workdir / "eval").glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        for metric in _HEADLINE_METRIC.get(result.get("task"), []):
            value = result["metrics"].get(metric)
            if value is None:
                continue
            rows.append({"dataset": result["dataset"], "task": result["task"], "metric": metric,
                         "value": float(value), "chance": chance.get(result["dataset"], {}).get(metric),
                         "json": path.name})
    rows.sort(key=lambda r: (_TASK_ORDER.get(r["task"], 9), r["dataset"]))
    return rows


def _img(path: Path, alt: str, mime: str = "image/png") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:{mime};base64,{data}" alt="{html.escape(alt)}">'


def _figures(paths: list[Path], caption=lambda p: p.stem.replace("_", " ")) -> str:
    figs = [f"<figure>{_img(p, caption(p))}<figcaption>{html.escape(caption(p))}</figcaption></figure>"
            for p in paths if p.is_file()]
    return f'<div class="plots">{"".join(figs)}</div>' if figs else '<p class="muted">(no plots found)</p>'


def _is_number(cell: Any) -> bool:
    text = re.sub(r"<[^>]+>", "", str(cell)).rstrip("x").replace(",", "")
    try:
        float(text)
    except ValueError:
        return False
    return True


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """Cells are HTML already; numbers are right-aligned."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{c}</td>' if _is_number(c) else f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _markdown_tables(text: str) -> str:
    """The curation summary's markdown (headings, pipe tables, paragraphs) as HTML."""
    out, table = [], []

    def flush() -> None:
        if table:
            cells = [[html.escape(c.strip()) for c in line.strip().strip("|").split("|")] for line in table
                     if not set(line.replace("|", "").strip()) <= set("-: ")]
            out.append(_table(cells[0], cells[1:]))
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = min(4, len(line) - len(line.lstrip("#")) + 2)
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def _section_curation(w: Path) -> str:
    stats_file, summary = w / "curated" / "_stats.json", w / "curated" / "report" / "summary.md"
    parts = []
    if stats_file.exists():
        stats = json.loads(stats_file.read_text(encoding="utf-8"))
        parts.append(f"<p><b>{stats['in']:,}</b> samples in, <b>{stats['kept']:,}</b> kept, "
                     f"<b>{stats['dropped']:,}</b> dropped, every drop with its reason in "
                     f"<code>curated/ledger.parquet</code>.</p>")
    if summary.exists():
        text = summary.read_text(encoding="utf-8").replace("# Curation report", "")
        parts.append(_markdown_tables(text))
    report = w / "curated" / "report"
    parts.append(_figures([report / "entry_counts.png", report / "top_entries.png", report / "sizes.png"]))
    return "".join(parts)


def _section_training(w: Path) -> str:
    run = w / "run"
    summary_file = run / "summary.json"
    if not summary_file.exists():
        return '<p class="muted">(no training summary)</p>'
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    last = summary.get("last_metrics") or {}
    note = ""
    if summary.get("stopped") == "time_budget":
        note = (' <b>Stopped by the time budget</b>: a faster or slower machine trains a different number '
                'of steps, so numbers differ from run to run; pass <code>--budget-minutes</code> higher to '
                'end on <code>--steps</code> instead.')
    rows = [["steps", summary.get("step")], ["epochs over the curated set", summary.get("epoch")],
            ["ended by", summary.get("stopped")], ["final loss", f"{last.get('loss', float('nan')):.4f}"],
            ["logit scale (1/temperature)", f"{last.get('logit_scale', float('nan')):.2f}"],
            ["throughput", f"{last.get('samples_per_s', 0):.0f} samples/s (last window)"]]
    return (f"<p>The model is exported in open_clip's format to <code>run/export</code>.{note}</p>"
            + _table(["", ""], rows)
            + _figures([run / "plots" / "loss.png", run / "plots" / "lr.png", run / "plots" / "temperature.png"]))


def _section_eval(w: Path, rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        chance = r["chance"]
        ratio = ""
        if chance:
            css = "good" if r["value"] >= 2 * chance else "muted"
            ratio = f'<span class="{css}">{r["value"] / chance:.1f}x</span>'
        body.append([html.escape(r["dataset"]), r["task"], r["metric"], f"{r['value']:.3f}",
                     f"{chance:.3f}" if chance else "", ratio])
    ev = w / "eval"
    plots = [ev / "retrieval_zeroshot_retrieval_recall_at_k.png", ev / "retrieval_zeroshot_retrieval_examples.png",
             ev / "shapes_zeroshot_classification_confusion.png", ev / "colors_zeroshot_classification_confusion.png"]
    return ("<p>CLIP_benchmark's metrics and JSON format (files in <code>eval/</code>); chance is 1/classes "
            "for classification and k/images for recall@k.</p>"
            + _table(["set", "task", "metric", "value", "chance", "vs chance"], body)
            + _figures(plots))


def _section_queries(w: Path, results: list[dict[str, Any]]) -> str:
    from clipstack.search import SearchIndex

    index = SearchIndex(w / "index")
    parts = ["<p>Text-to-image search with the trained model over the FAISS index of the retrieval set "
             "(the same search the server answers).</p>"]
    for r in results:
        cells = []
        for hit in r["hits"]:
            thumb = index.thumbnail(hit["id"])
            img = (f'<img src="data:image/jpeg;base64,{base64.b64encode(thumb).decode("ascii")}" alt="">'
                   if thumb else '<div class="muted">(no thumbnail)</div>')
            cells.append(f'<div class="hit">{img}<div>{hit["similarity"]:.3f}</div>'
                         f'<div>{html.escape(hit.get("caption", ""))}</div></div>')
        parts.append(f"<h3>“{html.escape(r['query'])}”</h3><div class=\"hits\">{''.join(cells)}</div>")
    return "".join(parts)


def write_report(workdir: Path, settings: QuickstartSettings, state: dict[str, Any],
                 queries: list[dict[str, Any]]) -> Path:
    """Write workdir/report.html atomically and return its path."""
    w = Path(workdir)
    rows = eval_rows(w)
    stage_rows = [[f"<code>{html.escape(name)}</code>", f"{done['seconds']:.1f}",
                   f"<code>{html.escape(done['command'])}</code>"] for name, done in state["done"].items()]
    total = sum(d["seconds"] for d in state["done"].values())
    settings_text = ", ".join(f"{k}={v}" for k, v in asdict(settings).items())
    preview = w / "data" / "preview.png"
    sections = [
        ("The data", "<p>A synthetic crawl stand-in with injected defects (duplicates, mismatched, empty "
                     "and non-UTF-8 captions, corrupt and tiny images), labelled in a hidden ground truth."
                     "</p>" + (_figures([preview], lambda p: "a sample of the pool") if preview.exists() else "")),
        ("Curation", _section_curation(w)),
        ("Training", _section_training(w)),
        ("Evaluation", _section_eval(w, rows)),
        ("Search", _section_queries(w, queries)),
        ("Reproduce", "<p>Each stage alone, as the quickstart ran it (from the folder it ran in):</p><pre>"
                      + html.escape("\n".join(d["command"] for d in state["done"].values()))
                      + "</pre><p>Serve the index with its web page:</p><pre>"
                      + html.escape(f"clipstack serve --indices {w / 'index'} --port 1234")
                      + "   # then open http://127.0.0.1:1234/</pre>"),
    ]
    page = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>clipstack quickstart</title>"
            f"<style>{_CSS}</style></head><body><h1>clipstack quickstart</h1>",
            f'<p class="muted">{time.strftime("%Y-%m-%d %H:%M")} &middot; {html.escape(settings_text)}</p>',
            _table(["stage", "seconds", "command"], stage_rows),
            f"<p>Total stage time: {total / 60:.1f} min.</p>"]
    page += [f"<h2>{title}</h2>{body}" for title, body in sections]
    page.append("</body></html>")
    path = w / "report.html"
    write_bytes(path, "\n".join(page).encode("utf-8"))
    return path
