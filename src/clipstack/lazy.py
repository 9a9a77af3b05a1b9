"""Lazy public names: a package lists where each name lives, and nothing loads until a name is used.

This keeps `import clipstack` and `clipstack --help` free of torch, FAISS, servers and plotting.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, where: dict[str, str],
                    aliases: dict[str, str] | None = None) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package` resolving `name` to `where[name]`'s attribute.

    `aliases` maps a public name to the attribute's own name where they differ (e.g. a function that
    shares its module's name, which the submodule attribute would otherwise shadow).
    """
    aliases = aliases or {}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), aliases.get(name, name))
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
