"""Checking a device name before a model is loaded onto it, for every stage that takes `--device`."""

from __future__ import annotations

from clipstack.errors import ConfigError


def check_device(device: str, flag: str = "--device") -> None:
    """ConfigError naming `flag` when torch cannot use `device` here (no CUDA build, no such GPU),
    instead of torch's assertion deep inside model loading."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exn:
        raise ConfigError(f"{flag} {device!r}: not a torch device ({exn})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{flag} {device}: torch sees no CUDA GPU here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{flag} {device}: torch sees {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{flag} {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{flag} {device}: expected cpu, cuda, cuda:N or mps")
