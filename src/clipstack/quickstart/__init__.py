"""`clipstack quickstart`: the main job, every stage end to end on the embedded data, then a report.

    clipstack quickstart                          # ./quickstart_out, about 6 minutes on 2 CPU cores
    clipstack quickstart --workdir DIR --budget-minutes 2

From Python: `run_quickstart(workdir, QuickstartSettings(...))`. Each stage runs as the very `clipstack`
command the report lists, so any step can be rerun alone. The workdir holds one run: rerunning with the
same settings resumes after the last finished stage (training from its latest checkpoint); other
settings are refused.
"""

from __future__ import annotations

import argparse

from clipstack.lazy import lazy_attributes

_LAZY = {"QuickstartSettings": "clipstack.quickstart.pipeline", "run_quickstart": "clipstack.quickstart.pipeline",
         "write_report": "clipstack.quickstart.report"}


__getattr__ = lazy_attributes(__name__, _LAZY)


def register(sub: argparse._SubParsersAction) -> None:
    from clipstack.quickstart.settings import add_arguments

    p = sub.add_parser("quickstart", help="the main job: synth, curate, train, evaluate, index, query, report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=_handle)


def _handle(args: argparse.Namespace) -> int:
    from clipstack.quickstart.pipeline import main

    return main(args)


__all__ = list(_LAZY)
