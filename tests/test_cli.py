"""The command line: help, version, and a light package import."""

import subprocess
import sys

from clipstack.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "clipstack 0.1.0" in capsys.readouterr().out


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: clipstack" in out


def test_import_is_light():
    code = (
        "import sys, clipstack, clipstack.cli; "
        "heavy = [m for m in ('torch', 'faiss', 'fastapi', 'uvicorn', 'matplotlib', 'pyarrow') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_output_piped_to_a_reader_that_leaves_is_not_a_traceback():
    """`clipstack models --show ... | head -1`: the reader closes the pipe early."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    proc = subprocess.run([sys.executable, "-m", "clipstack", "models", "--show", "ViT-B-32"], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 141
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
