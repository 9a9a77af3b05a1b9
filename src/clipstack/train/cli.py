"""`clipstack train` and `clipstack plot`: the command line over `clipstack.train`.

Every config field is an option in dotted form (`--optim.lr 1e-3`, `--data.urls 'shards/{0..9}.tar'`),
applied over `--config FILE` (JSON or YAML) and the defaults. `torchrun --nproc-per-node N -m clipstack
train ...` runs the same command on N ranks.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

_SHORTCUTS = {"resume": "checkpoint.resume", "run_dir": "logging.run_dir", "fsdp": "distributed.fsdp",
              "model": "model.name", "data": "data.urls"}


def register(sub) -> None:
    from clipstack.train.config import field_paths

    p = sub.add_parser("train", help="train a CLIP/SigLIP dual encoder on WebDataset shards (DDP/FSDP via torchrun)",
                       description="Train on WebDataset shards. Options override --config; every config "
                                   "field is available as --section.field VALUE.")
    p.add_argument("--config", help="JSON or YAML config file")
    p.add_argument("--resume", dest="resume", default=argparse.SUPPRESS,
                   help="'latest' (the newest checkpoint of the run folder) or a checkpoint folder")
    p.add_argument("--run-dir", dest="run_dir", default=argparse.SUPPRESS, help="run folder (logging.run_dir)")
    p.add_argument("--fsdp", dest="fsdp", action="store_const", const="true", default=argparse.SUPPRESS,
                   help="shard the model with FSDP2 (distributed.fsdp)")
    p.add_argument("--model", dest="model", default=argparse.SUPPRESS, help="model name or path (model.name)")
    p.add_argument("--data", dest="data", default=argparse.SUPPRESS, help="training shards (data.urls)")
    group = p.add_argument_group("config fields")
    for dotted, hint in field_paths().items():
        is_bool = hint is bool
        group.add_argument(f"--{dotted}", dest=f"cfg:{dotted}", default=argparse.SUPPRESS, metavar="V",
                           nargs="?" if is_bool else None, const="true" if is_bool else None,
                           help=f"({_type_name(hint)})")
    p.set_defaults(func=_train)

    q = sub.add_parser("plot", help="draw loss / learning-rate / temperature PNGs for a training run folder")
    q.add_argument("run_dir", help="a run folder holding metrics.jsonl")
    q.add_argument("--out", help="output folder (default RUN_DIR/plots)")
    q.set_defaults(func=_plot)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def overrides_from_args(args: argparse.Namespace) -> dict[str, str]:
    out = {}
    for key, value in vars(args).items():
        if key.startswith("cfg:"):
            out[key[4:]] = value
        elif key in _SHORTCUTS:
            out[_SHORTCUTS[key]] = value
    return out


def _train(args: argparse.Namespace) -> int:
    from clipstack.train.config import load_config
    from clipstack.train.loop import train

    config = load_config(args.config, overrides_from_args(args))
    result = train(config)
    if os.environ.get("RANK", "0") == "0" and result.step and result.last_metrics:
        m = result.last_metrics
        print(f"trained {result.step} steps ({result.stopped}); loss {m.get('loss', float('nan')):.4f}; "
              f"run folder {result.run_dir}; export {result.export_path}")
        print(data_line(result.data_stats))
    return 0


# Counts that are not sample drops: labels of kept samples, and shard-level counts reported apart.
_LABELS = ("repeated", "hard_negative", "no_hard_negative")
_SHARDS = ("unreadable_shards", "unreadable_shard_reads")


def data_line(report: dict) -> str:
    """One line that adds up: read = used + each drop reason + still in the shuffle buffer at the end."""
    counts = report.get("counts", {})
    skip = ("seen", "kept", "unused_in_buffer", *_LABELS, *_SHARDS)
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k not in skip and v)
    line = f"data: {counts.get('seen', 0)} samples read = {counts.get('kept', 0)} used"
    line += f" + {counts.get('unused_in_buffer', 0)} unused (in the shuffle buffer at the end)"
    if dropped:
        line += f" + skipped ({dropped})"
    labels = ", ".join(f"{k} {counts[k]}" for k in _LABELS if counts.get(k))
    if labels:
        line += f"; of the used: {labels}"
    errors = report.get("shard_errors") or {}
    if counts.get("unreadable_shards") or errors:
        names = ", ".join(sorted(Path(u).name for u in errors)[:5]) + (" ..." if len(errors) > 5 else "")
        line += (f"; unreadable shards {counts.get('unreadable_shards', len(errors))} ({names}; "
                 f"{counts.get('unreadable_shard_reads', 0)} read attempts; reasons in summary.json)")
    return line


def _plot(args: argparse.Namespace) -> int:
    from clipstack.train.plots import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(path)
    return 0
