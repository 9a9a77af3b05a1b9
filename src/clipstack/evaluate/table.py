"""`clipstack eval-table`: many CLIP_benchmark result JSONs -> one CSV or Markdown table.

One row per result (dataset, model, pretrained, task, language), one column per metric name seen in any
result (blank where a result lacks it), in a fixed order: headline metrics first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path

from clipstack.errors import DataError
from clipstack.io import atomic_open, read_json

RESULT_KEYS = ("dataset", "model", "pretrained", "task", "metrics", "language")
ID_COLUMNS = ["dataset", "model", "pretrained", "task", "language"]
_FIRST = ["acc1", "acc5", "mean_per_class_recall", "mean_average_precision", "lp_acc1", "lp_acc5",
          "lp_mean_per_class_recall"]


def load_results(paths: Iterable[str | Path]) -> list[dict]:
    """Read result files; a folder contributes every `*.json` in it.

    A file that is not a result (unreadable, not JSON, a field missing or of the wrong type) is a
    DataError naming it and the field; a metric whose value is not a number is left out, with a warning.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.glob("*.json")))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such result file or folder")
    results = [_check_result(f, read_json(f, "result file")) for f in files]
    if not results:
        raise DataError("eval-table: no result files given")
    return results


def _check_result(f: Path, data: object) -> dict:
    """`data` as a result row, or DataError naming `f` and the bad fields; non-number metrics dropped."""
    missing = [k for k in RESULT_KEYS if k not in data] if isinstance(data, dict) else list(RESULT_KEYS)
    if not isinstance(data, dict) or missing:
        raise DataError(f"{f}: not a CLIP_benchmark result (missing {', '.join(missing)})")
    # null is allowed for the id fields: a hand-written or older result may leave pretrained unset
    wrong = [f"{k} is {_kind(data[k])}, not a string" for k in ID_COLUMNS
             if data[k] is not None and not isinstance(data[k], str)]
    if not isinstance(data["metrics"], dict):
        wrong.append(f"metrics is {_kind(data['metrics'])}, not an object of name: number")
    if wrong:
        raise DataError(f"{f}: not a CLIP_benchmark result ({'; '.join(wrong)})")
    metrics, dropped = {}, []
    for name, value in data["metrics"].items():
        # null is how strict JSON stores an undefined metric (NaN): kept, and shown as nan
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            metrics[name] = value
        else:
            dropped.append(f"{name}={json.dumps(value)[:40]}")
    if dropped:
        print(f"clipstack: warning: {f}: metrics that are not numbers left out: {', '.join(dropped)}",
              file=sys.stderr)
    return {**data, "metrics": metrics}


def _kind(value: object) -> str:
    """A JSON value's type as the user wrote it: 'a list', 'a number', 'true'..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _metric_order(name: str) -> tuple:
    if name in _FIRST:
        return (0, _FIRST.index(name), 0, name)
    if "recall@" in name:
        direction, k = name.split("@", 1)
        return (1, direction, int(k) if k.isdigit() else 0, name)
    return (2, name, 0, name)


def results_table(results: list[dict]) -> tuple[list[str], list[list]]:
    metric_names = sorted({m for r in results for m in r["metrics"]}, key=_metric_order)
    columns = ID_COLUMNS + metric_names
    # A result file stores an undefined metric (acc5 with fewer than 5 classes) as null: show it as nan,
    # as CLIP_benchmark's NaN would be, and keep blank for a metric the result does not have.
    rows = [[r.get(c, "") for c in ID_COLUMNS]
            + [float("nan") if r["metrics"].get(m, "") is None else r["metrics"].get(m, "") for m in metric_names]
            for r in results]
    return columns, rows


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.1e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


def render_markdown(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_csv(columns: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


def write_table(results: list[dict], out: str | Path) -> str:
    """Write `out` (.csv or .md) and return the rendered text."""
    out = Path(out)
    columns, rows = results_table(results)
    if out.suffix == ".md":
        text = render_markdown(columns, rows)
    elif out.suffix == ".csv":
        text = render_csv(columns, rows)
    else:
        raise DataError(f"--out {out}: use a .csv or .md file name")
    with atomic_open(out, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return text
