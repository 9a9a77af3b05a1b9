"""Every stage's lazy public surface: each listed name resolves, an unknown one names the package."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ["clipstack", "clipstack.data", "clipstack.curate", "clipstack.models", "clipstack.train",
            "clipstack.evaluate", "clipstack.search", "clipstack.quickstart"]


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_resolve(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError, match=rf"module '{package}' has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_importing_every_stage_package_stays_light():
    code = ("import sys, " + ", ".join(PACKAGES) + "\n"
            "print(sorted(m for m in ('torch', 'faiss', 'fastapi', 'matplotlib', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
