"""Shared helpers for the train-stage tests: tiny real shards and subprocess runners."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
RGB = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
       "purple": (140, 30, 160), "orange": (250, 140, 20), "white": (240, 240, 240), "black": (15, 15, 15)}


def png_bytes(color: str, size: int = 40, variant: int = 0) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), RGB[color])
    ImageDraw.Draw(img).rectangle((variant % 10, 3, 12 + variant % 10, 15), fill=(128, 128, 128))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_samples(shard: int, n: int, captions: int = 2):
    from clipstack.data.shards import Sample

    out = []
    for i in range(n):
        color = COLORS[(shard * n + i) % len(COLORS)]
        caps = [f"a {color} square number {i}", f"a photo of something {color}", f"{color} picture {shard}"]
        out.append(Sample(key=f"{shard:05d}{i:04d}", image=png_bytes(color, variant=i), captions=caps[:captions],
                          ext="png"))
    return out


def write_shards(out_dir: Path, shards: int, per_shard: int, captions: int = 2) -> list[Path]:
    from clipstack.data.shards import write_shard, write_sizes

    for s in range(shards):
        write_shard(out_dir, s, make_samples(s, per_shard, captions))
    write_sizes(out_dir)
    return sorted(Path(out_dir).glob("*.tar"))


def tiny_config(run_dir: Path, urls: str, **sections) -> dict:
    cfg = {
        "model": {"name": "clip-tiny"},
        "data": {"urls": urls, "batch_size": 8, "workers": 0, "shuffle_buffer": 8},
        "optim": {"lr": 1e-3},
        "schedule": {"epochs": 1, "warmup_steps": 2},
        "checkpoint": {"every_steps": 2, "keep_last": 2, "export": False},
        "logging": {"run_dir": str(run_dir), "progress": False, "plots": False},
        "seed": 0,
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(name, {}).update(values)
        else:
            cfg[name] = values
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def env() -> dict:
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CLIPSTACK_NO_PROGRESS": "1",
              "PYTHONPATH": str(REPO / "src")})
    return e


def run_cli(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "clipstack", *args], capture_output=True, text=True,
                          env=env(), timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"clipstack {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def torchrun(nproc: int, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-port", str(_free_port()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_state(run_dir: Path) -> dict:
    """The model state of the newest checkpoint of a run."""
    import torch

    from clipstack.train.checkpoint import list_checkpoints

    ckpt = list_checkpoints(run_dir)[-1]
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)["state_dict"]


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]
