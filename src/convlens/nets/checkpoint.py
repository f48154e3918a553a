"""Checkpoints: atomic saving, safe loading (``weights_only=True``), and loading any model.

A convlens checkpoint is a dict saved with ``torch.save``::

    {"format": "convlens-checkpoint/1", "arch": "zfnet-small", "num_classes": 10, "in_channels": 3,
     "model": state_dict, "preprocessing": Preprocessing.to_dict(), "class_names": [...],
     "epoch": 3, ...training state (optimizer, scheduler, rng, metrics) added by train.py...}

:func:`load_model` (from :mod:`convlens.nets.loading`, re-exported here) loads any model spec: a
convlens checkpoint, ``torchvision:NAME``, ``timm:NAME``, ``file.py:factory``, ``module:factory``.

Weights converted from TensorFlow / TF Lite (``meta.json`` naming a ``.tflite`` source, or
``tf_padding=True``) expect TF "SAME" padding in stride-2 convs (pad 0 top/left, the rest
bottom/right) where torchvision pads symmetrically; :func:`use_tf_same_padding` fixes that with
forward pre-hooks on those convs (module names and the state_dict unchanged). Receptive-field
boxes stay exact: the top-left origin is that of ``padding=0``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.images.data import Preprocessing
from convlens.io.artifacts import atomic_write
from convlens.nets.convnet import ConvNet
from convlens.nets.loading import Loaded, load_model

__all__ = ["FORMAT", "Loaded", "atomic_save", "load_checkpoint", "load_model", "save_checkpoint", "use_tf_same_padding"]

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


def same_padding(mod: nn.Module, h: int, w: int) -> tuple[int, int, int, int]:
    """TensorFlow "SAME" zero padding (left, right, top, bottom) of conv ``mod`` for an h x w input."""
    (kh, kw), (sh, sw) = mod.kernel_size, mod.stride  # type: ignore[misc]
    ph = max((-(-h // sh) - 1) * sh + kh - h, 0)
    pw = max((-(-w // sw) - 1) * sw + kw - w, 0)
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def _same_pad(mod: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    x = inputs[0]
    return (torch.nn.functional.pad(x, same_padding(mod, *x.shape[-2:])),)


def has_only_same_pad(mod: nn.Module) -> bool:
    """Whether ``mod`` is a conv whose only hook is :func:`use_tf_same_padding`'s (and padding 0)."""
    return (isinstance(mod, nn.Conv2d) and not mod._forward_hooks and mod.padding in (0, (0, 0))
            and list(mod._forward_pre_hooks.values()) == [_same_pad])


def use_tf_same_padding(model: nn.Module) -> nn.Module:
    """Make every stride-2 ``Conv2d`` pad like TensorFlow's "SAME" (in place; returns the model)."""
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d) and mod.stride != (1, 1):
            mod.padding = (0, 0)
            mod.register_forward_pre_hook(_same_pad)
    return model
