"""TensorFlow "SAME" padding for stride-2 convolutions of weights converted from TensorFlow.

Weights converted from TensorFlow / TF Lite (``meta.json`` naming a ``.tflite`` source, or
``tf_padding=True``) expect TF "SAME" padding in stride-2 convs (pad 0 top/left, the rest
bottom/right) where torchvision pads symmetrically; :func:`use_tf_same_padding` fixes that with
forward pre-hooks on those convs (module names and the state_dict unchanged). Receptive-field
boxes stay exact: the top-left origin is that of ``padding=0``. The traced graph
(:mod:`convlens.core.graph`), the explicit way down of the deconvnet and the incremental occlusion
recognise the hook with :func:`has_only_same_pad`.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["has_only_same_pad", "same_padding", "use_tf_same_padding"]


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
