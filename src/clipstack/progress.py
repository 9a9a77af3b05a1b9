"""Progress bars for long work (rate and ETA), through tqdm, quiet when not on a terminal or when asked."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool | None = None, **kwargs: Any):
    """A tqdm bar with rate and ETA. Disabled when CLIPSTACK_NO_PROGRESS=1 is set."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = os.environ.get("CLIPSTACK_NO_PROGRESS") == "1"
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                file=sys.stderr, mininterval=0.5, **kwargs)
