"""Which device a model runs on: a name checked against this machine before anything is built."""

from __future__ import annotations

import torch


def resolve(name: str | None) -> torch.device:
    """`name` (None: cuda if a GPU is visible, else cpu) as a device this machine has, or a
    ValueError naming it: an unknown kind (`tpu`), or a known one that is not here (`cuda` without a
    GPU, `cuda:3` on a one-GPU machine)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not one torch knows (cpu, cuda, cuda:N, mps, ...)") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"device {name!r} is not available on this machine (torch {torch.__version__}); use cpu")
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {name!r}: this machine has {count} {device.type} device(s), numbered from 0")
    return device
