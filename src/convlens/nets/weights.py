"""Weights files into models: reading a state_dict safely, fitting it with errors that say what
does not fit, and refusing non-finite weights."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["WEIGHTS_HELP", "check_finite", "fit_state_dict", "read_state_dict"]

WEIGHTS_HELP = ("a state_dict: torch.save(model.state_dict(), 'w.pt') (read with weights_only=True) "
                "or a .safetensors file")


def _few(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _unwrap(obj: Any) -> Any:
    """The state_dict inside common wrappers (a convlens checkpoint, {"state_dict": ...}, DDP prefixes)."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if isinstance(obj, Mapping) and obj:
        for prefix in ("module.", "_orig_mod."):
            if all(isinstance(k, str) and k.startswith(prefix) for k in obj):
                obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict file (``.safetensors``, or ``torch.load(weights_only=True)`` for anything else).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file; expected {WEIGHTS_HELP}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and format errors come in many types
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--weights {path}: cannot read it ({detail}); expected {WEIGHTS_HELP}") from None
    obj = _unwrap(obj)
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"--weights {path}: holds {type(obj).__name__}, not a state_dict; expected {WEIGHTS_HELP}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"--weights {path}: entries that are not tensors ({_few(bad)}); expected {WEIGHTS_HELP}")
    return dict(obj)


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, arch: str) -> None:
    """``model.load_state_dict(state)`` after checking that it fits, with a message that names the misfit.

    Raises:
        ValueError: missing, unexpected or wrongly shaped keys (a few of each named).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing key(s): {_few(missing)}"] if missing else []
        parts += [f"{len(unexpected)} unexpected key(s): {_few(unexpected)}"] if unexpected else []
        parts += [f"{len(shapes)} of the wrong shape: {_few(shapes, 2)}"] if shapes else []
        foreign = len(missing) + len(unexpected) > 0 and not (set(own) & set(state))
        fix = ("they come from another architecture: give the spec of the model they were saved from"
               if foreign else "check that they were saved from this architecture (model.state_dict()) with the "
               "same number of classes")
        raise ValueError(f"{source} does not fit {arch}: {'; '.join(parts)}; {fix}")
    model.load_state_dict(state, strict=False)


def check_finite(model: nn.Module, source: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged run, a damaged file): every result would be NaN."""
    bad = [k for k, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{source}: {len(bad)} tensor(s) hold NaN or infinite values ({_few(bad)}); the weights "
                         "come from a diverged run or a damaged file: use an earlier checkpoint")
