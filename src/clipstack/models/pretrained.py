"""Checkpoint files in and out, in OpenCLIP's formats.

Reads: a training checkpoint (`.pt`/`.pth` with `state_dict`, keys maybe prefixed `module.`), a plain
state_dict (`.bin`/`.pt`), a `.safetensors` file, a folder holding `open_clip_config.json` beside its
weights, and `hf-hub:org/repo` through huggingface_hub (its cache and offline mode included).
Writes: `save_pretrained(model, dir)` -> `open_clip_model.safetensors` + `open_clip_config.json`, the
layout open_clip's `create_model_from_pretrained` and the Hugging Face hub use.

On load, the image position grid is resized (bicubic) when the image size differs, the text positions
when the context length differs, a missing `logit_bias` is zero-filled, and any remaining key or shape
mismatch is one ClipstackError naming the file and the keys, not a torch traceback.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipstack.errors import ClipstackError, DataError
from clipstack.io import atomic_path, write_json

HF_HUB_PREFIX = "hf-hub:"
CONFIG_NAME = "open_clip_config.json"
# The weight file names open_clip looks for in a folder or hub repo, best first.
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
_WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DDP wrapping, torch.compile wrapping


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict stored in `path`, with training-checkpoint wrappers and prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise ClipstackError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and why, in one line
        raise _load_error(path, err) from None
    for wrapper in ("state_dict", "model"):  # open_clip / clipstack training checkpoints
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ClipstackError(f"{path}: not a state_dict (expected a mapping of names to tensors)")
    state_dict = dict(obj)
    for prefix in _STRIP_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _load_error(path: Path, err: Exception) -> DataError:
    """One line for a failed checkpoint read: torch's own text spans paragraphs and advises
    `weights_only=False` (unsafe) and filing a torch issue, neither of which helps here."""
    if isinstance(err, OSError):  # permissions, a vanished file: not the content's fault
        return DataError(f"{path}: cannot read checkpoint ({err.strerror or err})")
    with open(path, "rb") as fh:
        head = fh.read(8)
    text = str(err)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:  # a real torch.save file, but with pickled objects beyond tensors and plain containers
        return DataError(f"{path}: checkpoint holds a {unsafe.group(1)} object; only tensors, numbers, "
                         "strings and containers are loaded (for safety): save the state_dict alone")
    if not head:
        return DataError(f"{path}: checkpoint file is empty")
    # torch.save writes a zip (or, before torch 1.6, a pickle); anything else is some other kind of file
    if path.suffix != ".safetensors" and not head.startswith((b"PK\x03\x04", b"\x80")):
        return DataError(f"{path}: not a checkpoint (neither a safetensors file nor a torch.save file)")
    # the first sentence only: torch follows it with paragraphs of generic advice
    first = next((line.strip() for line in text.splitlines() if line.strip()), "").split(". ")[0]
    detail = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return DataError(f"{path}: cannot read checkpoint ({detail}); the file may be truncated or corrupt")


def find_weights_in_dir(folder: str | Path) -> Path | None:
    """The weight file in a model folder: a known name first, else the only safetensors/bin/pt file."""
    folder = Path(folder)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for ext in _WEIGHT_GLOBS for p in folder.glob(ext))
    return found[0] if len(found) == 1 else None


def hub_download(repo_id: str, filename: str, required: bool = True) -> Path | None:
    """A file of a hub repo through huggingface_hub (cache, HF_HUB_OFFLINE and HF_HOME apply)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except (EntryNotFoundError, LocalEntryNotFoundError) as err:
        if not required:
            return None
        raise ClipstackError(f"hf-hub:{repo_id}: cannot get {filename} ({type(err).__name__}); "
                             "offline runs need it in the local Hugging Face cache") from err
    except Exception as err:
        if not required:
            return None
        raise ClipstackError(f"hf-hub:{repo_id}: cannot get {filename} ({type(err).__name__}: {err})") from err


def hub_weights(repo_id: str) -> Path:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        path = hub_download(repo_id, name, required=False)
        if path is not None:
            return path
    raise ClipstackError(f"hf-hub:{repo_id}: no open_clip_model.safetensors or open_clip_pytorch_model.bin "
                         "found (in the hub or the local cache)")


def resolve_weights(pretrained: str | Path) -> Path:
    """Where the weights named by `pretrained` (file, model folder or `hf-hub:org/repo`) are."""
    text = str(pretrained)
    if text.startswith(HF_HUB_PREFIX):
        return hub_weights(text[len(HF_HUB_PREFIX):])
    path = Path(text)
    if path.is_dir() and (path / "state.pt").is_file() and (path / "meta.json").is_file():
        # a clipstack training checkpoint folder (RUN/checkpoints/step_N)
        if (path / "sharded").is_dir():
            raise ClipstackError(f"{path}: an FSDP checkpoint keeps its weights in sharded/ (one piece per "
                                 "rank); load the run's export/ folder instead, or resume the run to export")
        return path / "state.pt"
    if path.is_dir():
        found = find_weights_in_dir(path)
        if found is None:
            candidates = sorted(p.name for ext in _WEIGHT_GLOBS for p in path.glob(ext))
            why = (f"several candidates ({', '.join(candidates)}) and none has a known name" if candidates
                   else "none found")
            raise DataError(f"{path}: model folder has no weight file: {why}; looked for "
                            f"{', '.join(WEIGHT_NAMES)} (or a single *.safetensors/*.bin/*.pt/*.pth file)")
        return found
    if not path.is_file():
        raise ClipstackError(f"pretrained={text!r}: no such file or folder (and not an hf-hub: name)")
    return path


def _resize_image_positions(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic-resize the patch position grid (the class-token row is kept), as OpenCLIP does."""
    cls_pos, patch_pos = pos[:1], pos[1:]
    old = int(math.isqrt(patch_pos.shape[0]))
    if old * old != patch_pos.shape[0]:
        raise ClipstackError(f"cannot resize a non-square grid of {patch_pos.shape[0]} image positions")
    patch_pos = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", antialias=True, align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


def _resize_text_positions(pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample text positions to a new context length, as OpenCLIP does."""
    resized = F.interpolate(pos.T.unsqueeze(0).float(), size=length, mode="linear", align_corners=False)
    return resized[0].T.to(pos.dtype).contiguous()


def adapt_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Make a checkpoint fit `model` where OpenCLIP would: positions resized, logit scalars reshaped,
    a missing logit_bias zero-filled."""
    state_dict = dict(state_dict)
    expected = model.state_dict()
    key = "visual.positional_embedding"
    if key in state_dict and key in expected and state_dict[key].shape[0] != expected[key].shape[0]:
        state_dict[key] = _resize_image_positions(state_dict[key], model.visual.grid_size)
    for key in ("positional_embedding", "text.positional_embedding"):
        if key in state_dict and key in expected and state_dict[key].shape[0] != expected[key].shape[0] \
                and state_dict[key].shape[1] == expected[key].shape[1]:
            state_dict[key] = _resize_text_positions(state_dict[key], expected[key].shape[0])
    for key in ("logit_scale", "logit_bias"):
        if key in state_dict and key in expected and state_dict[key].numel() == 1:
            state_dict[key] = state_dict[key].reshape(expected[key].shape)
    if "logit_bias" in expected and "logit_bias" not in state_dict:
        state_dict["logit_bias"] = torch.zeros_like(expected["logit_bias"])
    return state_dict


def check_keys(state_dict: dict, model: nn.Module, source: str) -> None:
    """Raise one ClipstackError naming `source` and the first differing keys/shapes unless
    `state_dict` fits `model` exactly (also used when resuming a training checkpoint)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if not (missing or unexpected or mismatched):
        return

    def head(items: list[str]) -> str:
        return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

    parts = [f"{label} {len(items)}: {head(items)}" for label, items in
             (("shape mismatches", mismatched), ("missing keys", missing), ("unexpected keys", unexpected))
             if items]
    raise ClipstackError(f"{source}: checkpoint does not fit the model config; " + "; ".join(parts))


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load weights from a file, model folder or `hf-hub:org/repo` into `model` (in place); returns it."""
    weights = resolve_weights(path)
    state_dict = adapt_state_dict(read_state_dict(weights), model)
    if strict:
        check_keys(state_dict, model, str(weights))
    else:
        expected = model.state_dict()
        state_dict = {k: v for k, v in state_dict.items() if k in expected and v.shape == expected[k].shape}
    model.load_state_dict(state_dict, strict=strict)
    return model


def save_pretrained(model: nn.Module, out_dir: str | Path) -> Path:
    """Write `model` as an OpenCLIP/hub model folder (safetensors weights + open_clip_config.json).

    Each file is written atomically, the config last, so a folder with a config always has complete
    weights beside it. Returns the folder."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / "open_clip_model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    preprocess = dict(getattr(model, "preprocess_cfg", {}) or {})
    write_json(out_dir / CONFIG_NAME, {"model_cfg": model.model_config, "preprocess_cfg": preprocess})
    return out_dir
