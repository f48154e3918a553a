"""Checkpoints: atomic saving and safe loading (``weights_only=True``).

A convlens checkpoint is a dict saved with ``torch.save``::

    {"format": "convlens-checkpoint/1", "arch": "zfnet-small", "num_classes": 10, "in_channels": 3,
     "model": state_dict, "preprocessing": Preprocessing.to_dict(), "class_names": [...],
     "epoch": 3, ...training state (optimizer, scheduler, rng, metrics) added by train.py...}

:func:`convlens.nets.loading.load_model` loads any model spec (a convlens checkpoint among them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from convlens.images.data import Preprocessing
from convlens.io.artifacts import atomic_write
from convlens.nets.convnet import ConvNet

__all__ = ["FORMAT", "atomic_save", "load_checkpoint", "save_checkpoint"]

FORMAT = "convlens-checkpoint/1"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def save_checkpoint(path: str | Path, model: ConvNet, *, preprocessing: Preprocessing, class_names: list[str],
                    epoch: int | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a convlens checkpoint atomically (see the module docstring for its content)."""
    model = getattr(model, "module", model)  # unwrap DDP
    state = {
        "format": FORMAT,
        "arch": model.cfg.name,
        "num_classes": model.cfg.num_classes,
        "in_channels": model.cfg.in_channels,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "preprocessing": preprocessing.to_dict(),
        "class_names": list(class_names),
        "epoch": epoch,
    }
    state.update(extra or {})
    return atomic_save(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a convlens checkpoint dict safely (``weights_only=True``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a convlens checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read checkpoint {path} ({detail}); expected a convlens checkpoint written by "
                         "convlens train (for a plain state_dict use --arch SPEC --weights FILE)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a convlens checkpoint (expected a dict with format {FORMAT!r}); for a plain "
            "state_dict give the model it belongs to and the file as weights, e.g. --arch torchvision:resnet18 "
            "--weights FILE or --arch my_model.py:build --weights FILE"
        )
    return state
