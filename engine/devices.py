"""Which torch device to compute on: the one resolver that encoders, the linear probe and the kNN code share.

``auto`` means the fastest accelerator this machine has: CUDA when torch sees a CUDA device, else Apple MPS when
available and the caller can use it (``mps=True``), else the CPU.  An explicit device (``cpu``, ``cuda``,
``cuda:<i>``, ``mps``) is checked: asking for an accelerator that is not there, or for an unknown device, is a
one-line :class:`engine.catalog.CurateError` instead of a torch traceback later.

Callers that cannot use MPS pass ``mps=False`` (the linear probe: its torch backend is only the default on CUDA),
so ``auto`` there means CUDA else CPU.

torch is imported only when needed: :func:`cuda_available` answers False without importing torch (seconds) on a
machine with no NVIDIA driver.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import TYPE_CHECKING

from curate.engine.catalog import CurateError

if TYPE_CHECKING:  # pragma: no cover
    import torch

def cuda_available() -> bool:
    """Whether torch can use CUDA; False without importing torch on machines with no NVIDIA driver, and False
    when torch cannot be imported."""
    driver = os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None
    if "torch" not in sys.modules and not driver:
        return False
    try:
        import torch
    except Exception:  # pragma: no cover - torch is a hard dependency, but stay importable without it
        return False
    return bool(torch.cuda.is_available())


def mps_available() -> bool:
    """Whether torch can use Apple's Metal (MPS) backend."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return mps is not None and bool(mps.is_available())


def resolve_device(device: "str | torch.device | None" = "auto", *, mps: bool = True) -> "torch.device":
    """The torch device to compute on.

    Parameters
    ----------
    device : ``auto`` (or None), ``cpu``, ``cuda``, ``cuda:<i>``, ``mps`` (case-insensitive), or a
        ``torch.device``, which is returned as it is.
    mps : whether ``auto`` may pick Apple MPS (after CUDA, before the CPU).  An explicit ``mps`` is honoured
        either way.

    Returns
    -------
    torch.device

    Raises
    ------
    CurateError
        An explicit accelerator that is not available here, or an unknown device name.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    if isinstance(device, torch.device):
        return device
    device = (device or "auto").lower()
    if device == "auto":
        if cuda_available():
            return torch.device("cuda")
        if mps and mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not cuda_available():
        raise CurateError(f"--device {device} requested but CUDA is not available here; use --device auto or cpu")
    if device == "mps" and not mps_available():
        raise CurateError("--device mps requested but Apple MPS is not available here; use --device auto or cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise CurateError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    return torch.device(device)
