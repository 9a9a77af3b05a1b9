"""The quickstart's settings and workdir, checked before any stage runs, by the stages' own validation.

A value some stage would refuse (a zero time budget, an unknown model, a negative learning rate) must
fail at once, as one line naming the quickstart option -- not after synth, metadata and curate have run,
leaving a workdir that only the same failing settings may resume. So each stage's config is built from
the very command the quickstart will run, and validated by that stage's own code; nothing is written.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from clipstack.errors import ClipstackError, ConfigError, DataError
from clipstack.quickstart.settings import QuickstartSettings

# The start of a stage's error message (the field it names) -> the quickstart option that set it.
_OPTION_OF = {
    "synth": {"samples": "samples", "seed": "seed", "eval_scale": "eval_scale"},
    "curate": {"--t": "t", "--seed": "seed"},
    "train": {"model.": "model", "data.batch_size": "batch_size", "optim.lr": "lr",
              "schedule.warmup_steps": "warmup_steps", "schedule.max_steps": "steps",
              "schedule.time_budget_s": "budget_minutes", "seed": "seed"},
}


def check_settings(settings: QuickstartSettings, stage_argvs: dict[str, list[str]]) -> None:
    """`ConfigError` naming the first quickstart option a stage would refuse; `stage_argvs` holds each
    stage's command line (without `clipstack`), as `pipeline.plan` builds it."""
    budget = settings.budget_minutes
    if not 0 < budget < math.inf:  # checked here: the train stage would name seconds, not this option
        raise ConfigError(f"--budget-minutes: must be a positive number of minutes, got {budget}")
    from clipstack.cli import build_parser

    parser = build_parser()
    for stage, check in (("synth", _check_synth), ("curate", _check_curate), ("train", _check_train)):
        if stage not in stage_argvs:
            continue
        args = _parse(parser, stage_argvs[stage])
        try:
            check(args)
        except ClipstackError as err:
            raise ConfigError(_blame(settings, stage, str(err))) from None


def check_workdir(workdir: Path) -> None:
    """A file where the workdir (or a folder on the way to it) should be: one line naming it."""
    blocker = next((p for p in (workdir, *workdir.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "" if blocker == workdir else f" ({blocker} is a file)"
        raise DataError(f"--workdir {workdir}: is not a folder{where}; choose an empty or new --workdir")


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except SystemExit:  # argparse printed why; the quickstart built this command, so it is our bug
        raise ConfigError(f"quickstart built a command its stage does not accept: {' '.join(argv)}") from None


def _check_synth(args: argparse.Namespace) -> None:
    from clipstack.data.synthetic.cli import parse_rates
    from clipstack.data.synthetic.writer import check_options

    check_options(samples=args.samples, seed=args.seed, workers=args.workers, shard_size=args.shard_size,
                  zipf=args.zipf, rates=parse_rates(args.defect_rate, args.no_defects),
                  multi_caption=args.multi_caption, caption_noise=args.caption_noise, eval_scale=args.eval_scale)


def _check_curate(args: argparse.Namespace) -> None:
    from clipstack.curate.pipeline import CurateConfig

    CurateConfig(steps=[s.strip() for s in args.steps.split(",") if s.strip()], metadata=args.metadata,
                 balance_t=args.t, seed=args.seed, min_side=args.min_side, phash_threshold=args.phash_threshold,
                 phash_size=args.phash_size).validate()


def _check_train(args: argparse.Namespace) -> None:
    from clipstack.train.cli import overrides_from_args
    from clipstack.train.config import load_config

    config = load_config(None, overrides_from_args(args))
    name = config.model.name
    if not name.startswith("hf-hub:"):  # a hub name needs the network; the train stage resolves it
        from clipstack.models.factory import resolve_config

        try:
            resolve_config(name)  # a bundled config name, a JSON config or a model folder
        except ClipstackError as err:
            raise ConfigError(f"model.name: {err}") from None


def _blame(settings: QuickstartSettings, stage: str, message: str) -> str:
    for prefix, option in _OPTION_OF[stage].items():
        if message.startswith(prefix):
            flag = "--" + option.replace("_", "-")
            return f"{flag} {getattr(settings, option)}: the {stage} stage refuses it ({message})"
    return f"the {stage} stage refuses these quickstart settings ({message})"
