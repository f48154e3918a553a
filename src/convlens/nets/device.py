"""The one device resolver: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` -> ``torch.device``.

``auto`` picks CUDA when it is available, else CPU. Under ``torchrun`` (``LOCAL_RANK`` set),
``cuda`` and ``auto`` pick this process's GPU. A device that is not available is a ``ValueError``
naming the fix (``--device cpu``), never a crash later in the first CUDA call.
"""
from __future__ import annotations

import os
import re

import torch

__all__ = ["DEVICE_CHOICES", "resolve_device"]

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn a device name into a ``torch.device`` that exists on this machine.

    Args:
        name: ``auto`` (default; CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``,
            or a ``torch.device``.

    Raises:
        ValueError: an unknown name, or a device this machine does not have.

    Example:
        >>> resolve_device("auto")
        device(type='cpu')
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = "auto" if name is None else str(name).strip().lower()
    if not _PATTERN.match(text):
        raise ValueError(f"--device: expected {DEVICE_CHOICES}, got {name!r}")
    rank = os.environ.get("LOCAL_RANK")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}); use --device cpu or --device auto")
        if text == "cuda" and rank is not None:
            text = f"cuda:{int(rank)}"
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(0..{torch.cuda.device_count() - 1}); use --device cuda:0 or --device auto")
    if text == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu or --device auto")
    return torch.device(text)
