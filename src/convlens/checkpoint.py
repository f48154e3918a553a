"""Checkpoints: atomic saving, safe loading (``weights_only=True``), and loading any model.

A convlens checkpoint is a dict saved with ``torch.save``::

    {"format": "convlens-checkpoint/1", "arch": "zfnet-small", "num_classes": 10, "in_channels": 3,
     "model": state_dict, "preprocessing": Preprocessing.to_dict(), "class_names": [...],
     "epoch": 3, ...training state (optimizer, scheduler, rng, metrics) added by train.py...}

``load_model`` also accepts ``torchvision:<name>`` with a state_dict file (``weights``): any
torchvision classification CNN. A ``meta.json`` beside the weights file may give the input
normalization (``input.normalize_mean/std`` in [0, 1] units) and ``imagenet_classes.txt`` or
``classes.txt`` the class names; otherwise torchvision's ImageNet normalization is assumed.

Weights converted from TensorFlow / TF Lite (``meta.json`` naming a ``.tflite`` source, or
``tf_padding=True``) expect TF "SAME" padding in stride-2 convs (pad 0 top/left, the rest
bottom/right) where torchvision pads symmetrically; :func:`use_tf_same_padding` fixes that with
forward pre-hooks on those convs (module names and the state_dict unchanged). Receptive-field
boxes stay exact: the top-left origin is that of ``padding=0``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .artifacts import atomic_write
from .data import Preprocessing, imagenet_preprocessing
from .model import ConvNet, build_model

__all__ = ["FORMAT", "Loaded", "atomic_save", "load_checkpoint", "load_model", "save_checkpoint", "use_tf_same_padding"]

FORMAT = "convlens-checkpoint/1"


@dataclass
class Loaded:
    """A model ready for analysis (eval mode) with what is needed to feed and read it."""

    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]
    arch: str
    epoch: int | None = None
    path: str | None = None


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
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a convlens checkpoint (expected format {FORMAT!r}); for a torchvision "
            "state_dict use --arch torchvision:NAME --weights FILE"
        )
    return state


def _same_pad(mod: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    x = inputs[0]
    (kh, kw), (sh, sw) = mod.kernel_size, mod.stride  # type: ignore[misc]
    h, w = x.shape[-2:]
    ph = max((-(-h // sh) - 1) * sh + kh - h, 0)
    pw = max((-(-w // sw) - 1) * sw + kw - w, 0)
    return (torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)),)


def use_tf_same_padding(model: nn.Module) -> nn.Module:
    """Make every stride-2 ``Conv2d`` pad like TensorFlow's "SAME" (in place; returns the model)."""
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d) and mod.stride != (1, 1):
            mod.padding = (0, 0)
            mod.register_forward_pre_hook(_same_pad)
    return model


def _wants_tf_padding(folder: Path) -> bool:
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    source = json.loads(meta.read_text()).get("source", {})
    return isinstance(source, dict) and str(source.get("file", "")).endswith((".tflite", ".pb"))


def _torchvision_model(name: str, weights: str | Path | None, tf_padding: bool | None) -> Loaded:
    import torchvision

    builder = getattr(torchvision.models, name, None)
    if builder is None or not callable(builder) or name.startswith("_"):
        raise ValueError(f"unknown torchvision architecture {name!r}; e.g. torchvision:alexnet, "
                         "torchvision:vgg16, torchvision:resnet18, torchvision:mobilenet_v2")
    pre = imagenet_preprocessing()
    class_names = [str(i) for i in range(1000)]
    model = builder(weights=None)
    if weights is not None:
        wpath = Path(weights)
        if not wpath.is_file():
            raise FileNotFoundError(f"weights file not found: {wpath}")
        state = torch.load(wpath, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        model.load_state_dict(state)
        pre, class_names = _sidecar(wpath.parent, pre, class_names)
        if tf_padding is None:
            tf_padding = _wants_tf_padding(wpath.parent)
    if tf_padding:
        use_tf_same_padding(model)
    return Loaded(model.eval(), pre, class_names, f"torchvision:{name}", None, str(weights) if weights else None)


def _sidecar(folder: Path, pre: Preprocessing, names: list[str]) -> tuple[Preprocessing, list[str]]:
    meta = folder / "meta.json"
    if meta.is_file():
        info = json.loads(meta.read_text()).get("input", {})
        if "normalize_mean" in info and "normalize_std" in info:
            mean = torch.tensor(info["normalize_mean"], dtype=torch.float32).view(3, 1, 1) * 255
            std = torch.tensor(info["normalize_std"], dtype=torch.float32).view(3, 1, 1) * 255
            pre = Preprocessing(pre.resize, pre.crop, mean, std)
    for fname in ("imagenet_classes.txt", "classes.txt"):
        f = folder / fname
        if f.is_file():
            lines = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
            names = [ln.split(",")[0] for ln in lines]
            break
    return pre, names


def load_model(spec: str | Path, *, weights: str | Path | None = None,
               map_location: str | torch.device = "cpu", tf_padding: bool | None = None) -> Loaded:
    """Load a model for analysis, in eval mode.

    Args:
        spec: a convlens checkpoint path, or ``torchvision:<name>`` (then ``weights`` is its state_dict file).
        weights: state_dict file for a torchvision architecture (loaded with ``weights_only=True``).
        map_location: device to load the tensors on.
        tf_padding: TF "SAME" padding for stride-2 convs of a torchvision model (default: on when a
            ``meta.json`` beside ``weights`` names a TensorFlow source; see the module docstring).

    Example:
        >>> loaded = load_model("runs/demo/checkpoints/last.pt")
        >>> x = loaded.preprocessing.load("dog.jpg")[None]
        >>> loaded.model(x).softmax(1)
    """
    spec = str(spec)
    if spec.startswith("torchvision:"):
        return _torchvision_model(spec.split(":", 1)[1], weights, tf_padding)
    state = load_checkpoint(spec, map_location)
    model = build_model(state["arch"], num_classes=state["num_classes"], in_channels=state["in_channels"])
    model.load_state_dict(state["model"])
    model.to(map_location).eval()
    pre = Preprocessing.from_dict(state["preprocessing"])
    return Loaded(model, pre, list(state["class_names"]), state["arch"], state.get("epoch"), spec)
