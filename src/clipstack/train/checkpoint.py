"""Training checkpoints: atomic folders holding everything needed to continue bit for bit.

`RUN/checkpoints/step_000120/` holds `state.pt` (model, optimizer, scheduler, grad scaler, step, epoch,
data position and counters) -- or, under FSDP, `sharded/` written by torch.distributed.checkpoint plus
`state.pt` without the model and optimizer -- one `rng_rank{r}.pt` per rank (python, numpy, torch and
CUDA generator states) and `meta.json`, written last. The folder is assembled as `.tmp-step_000120` and
renamed into place, so a kill at any moment leaves the earlier checkpoints whole; `latest` is the highest
step folder that has its `meta.json`. Only the last K are kept.

Loading never ends in a torch traceback: a damaged file is a `DataError` naming it, a checkpoint of another
model a `ClipstackError` naming the first differing keys, and `--resume latest` passes over a damaged
newest checkpoint (with a warning naming it) to the newest intact one.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipstack.errors import ClipstackError, DataError
from clipstack.io import read_json, write_json

__all__ = ["checkpoint_dir", "list_checkpoints", "resolve_resume", "save_checkpoint", "load_checkpoint",
           "check_checkpoint", "rng_state", "set_rng_state"]

_PREFIX = "step_"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a folder counts once its meta.json exists)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def resolve_resume(resume: str | None, run_dir: str | os.PathLike, warn: bool = True) -> Path | None:
    """`latest` -> the newest intact checkpoint of `run_dir` (None when there is none yet); a path -> it.

    Checkpoints are written atomically, so a damaged one was broken from outside; `latest` then warns,
    naming it, and falls back to the next older one. Every rank makes the same choice (the checks read
    the same files). A named folder that is damaged is an error: the user asked for that one."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        problems = []
        for path in reversed(found):
            try:
                check_checkpoint(path)
                return path
            except DataError as err:
                problems.append(str(err))
                if warn:
                    print(f"clipstack: warning: skipping damaged checkpoint: {err}", file=sys.stderr, flush=True)
        if found:
            raise DataError(f"checkpoint.resume: no intact checkpoint in {checkpoint_dir(run_dir)} "
                            f"({len(found)} damaged; newest: {problems[0]})")
        return None
    path = Path(resume)
    if not (path / "meta.json").is_file():
        raise ClipstackError(f"checkpoint.resume: {path} is not a complete checkpoint folder (no meta.json)")
    check_checkpoint(path)
    return path


def check_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Cheap integrity check of a checkpoint folder; its meta.json, or `DataError` naming the bad file.

    Reads meta.json and the zip directories of state.pt and the rng files (torch.save writes zip
    archives whose directory sits at the end, so a truncated file has none) without loading tensors."""
    path = Path(path)
    meta = read_json(path / "meta.json", "checkpoint meta.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise DataError(f"{path / 'meta.json'}: checkpoint meta.json has no step number")
    files = [path / "state.pt", *sorted(path.glob("rng_rank*.pt"))]
    for file in files:
        if not file.is_file():
            raise DataError(f"{file}: checkpoint file is missing")
        try:
            with zipfile.ZipFile(file) as zf:
                zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exn:
            raise DataError(f"{file}: checkpoint file is damaged or truncated ({exn})") from None
    return meta


def _torch_load(file: Path, what: str) -> Any:
    """torch.load, with a damaged or missing file reported as one DataError naming it."""
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise DataError(f"{file}: {what} is missing") from None
    except Exception as exn:  # torch and pickle raise many types for a cut or garbled file
        text = str(exn).strip()
        first = text.splitlines()[0] if text else type(exn).__name__
        raise DataError(f"{file}: {what} is damaged or truncated ({first})") from None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def _barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any = None, scaler: Any = None,
                    extra: dict[str, Any] | None = None, keep_last: int = 3, sharded: bool = False,
                    rank: int = 0) -> Path:
    """Write checkpoint `step` atomically (every rank calls this); return its folder."""
    root = checkpoint_dir(run_dir)
    final = root / f"{_PREFIX}{step:06d}"
    tmp = root / f".tmp-{final.name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by a kill during an earlier write
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    state: dict[str, Any] = {
        "step": step,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        **(extra or {}),
    }
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        # The model's own state_dict (DTensor shards under FSDP2) keeps its open_clip key names, which
        # differ from attribute paths; dcp's get_model_state_dict insists they match, so it is not used.
        dcp.save({"model": model.state_dict(), "optimizer": get_optimizer_state_dict(model, optimizer)},
                 checkpoint_id=str(tmp / "sharded"))
    else:
        # open_clip's key for the weights, so `create_model(..., pretrained=".../state.pt")` and open_clip's
        # own load_checkpoint both read a training checkpoint as it is.
        state["state_dict"] = _unwrap(model).state_dict()
        state["optimizer"] = optimizer.state_dict()
    if rank == 0:
        _save_synced(state, tmp / "state.pt")
    _save_synced(rng_state(), tmp / f"rng_rank{rank}.pt")
    _barrier()
    if rank == 0:
        write_json(tmp / "meta.json", {"step": step, "epoch": state.get("epoch"), "sharded": sharded,
                                       "world_size": _world_size()})
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. the final save after a periodic one)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any = None, scaler: Any = None, rank: int = 0,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Restore every part saved by `save_checkpoint` in place; return the saved dict (step, epoch, ...)."""
    path = Path(path)
    meta = read_json(path / "meta.json", "checkpoint meta.json")
    state = _torch_load(path / "state.pt", "checkpoint state")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise DataError(f"{path}: not a clipstack training checkpoint (meta.json or state.pt is not a mapping)")
    if meta.get("sharded"):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        loaded = {"model": model.state_dict(), "optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(loaded, checkpoint_id=str(path / "sharded"))  # in place, each rank its own shards
        model.load_state_dict(loaded["model"])
        set_optimizer_state_dict(model, optimizer, optim_state_dict=loaded["optimizer"])
    else:
        weights = state.get("state_dict", state.get("model"))  # "model": checkpoints before 0.1
        if weights is None:
            raise ClipstackError(f"{path}: checkpoint has no model state")
        _load_weights(_unwrap(model), weights, path / "state.pt")
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError) as exn:
            raise ClipstackError(f"{path / 'state.pt'}: the optimizer state does not match this run's "
                                 f"trainable parameters ({exn}); resume with the checkpoint's "
                                 "model.lock_image / model.lock_text settings") from None
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    rng_file = path / f"rng_rank{rank}.pt"
    if restore_rng and rng_file.is_file():
        set_rng_state(_torch_load(rng_file, "checkpoint RNG state"))
    state["meta"] = meta
    return state


def _load_weights(model: torch.nn.Module, weights: dict[str, Any], file: Path) -> None:
    """load_state_dict, with a checkpoint of another model named in one line, not torch's key dump."""
    from clipstack.models.pretrained import check_keys

    try:
        check_keys(weights, model, str(file))
    except ClipstackError as err:
        raise ClipstackError(f"checkpoint.resume: {err} (was the run trained with another model.name or "
                             "model.overrides?)") from None
    model.load_state_dict(weights)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), torch.nn.Module):
            model = getattr(model, attr)
    return model


def _world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist is not None else 1


def _save_synced(obj: Any, path: Path) -> None:
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
