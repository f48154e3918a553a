"""Layer names of any model: list them, validate them, choose sensible defaults.

* :func:`list_layers`: every module path (leaves and blocks) with its type, output shape,
  channels and receptive field (what ``convlens layers`` prints).
* :func:`default_layers`: the layers the commands use when none are given: ``conv1`` ...
  ``conv5`` on a :class:`~convlens.nets.convnet.ConvNet`; on any other CNN the last block of each
  resolution stage of its trunk (3-5 spatial block outputs larger than 1x1, e.g. resnet18 ->
  ``layer1`` ... ``layer4``, mobilenet_v2 -> ``features.1, features.3, features.6, features.13,
  features.18``).
* :func:`resolve_layers`: validate user-given names (a list or ``"a,b"``); an unknown name gets
  the closest few existing names.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from convlens.core.capture import resolve_layer
from convlens.core.receptive_field import RF, receptive_fields

__all__ = ["LayerInfo", "default_layers", "list_layers", "resolve_layers"]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                nn.Hardswish, nn.Mish, nn.Hardtanh)


@dataclass(frozen=True)
class LayerInfo:
    """One module of a model, as seen on one input of ``input_size``.

    Attributes:
        name: module path (``layer2.1``, ``features.3.conv.0``).
        type: class name of the module.
        output_shape: output shape for one image without the batch axis (``(C, H, W)`` for conv
            layers, ``(F,)`` for fc layers); None when the output is not a tensor or the forward
            never calls the module.
        channels: ``output_shape[0]`` (None as above).
        rf_size, rf_stride, rf_offset: receptive field (:class:`convlens.core.receptive_field.RF`); a
            stride of 0 means every unit sees the whole image; None when unknown.
        params: number of parameters of the module and its submodules.
        calls: how many times one forward calls it (a shared ``relu`` is called more than once).
        leaf: whether it has no submodules.
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    channels: int | None
    rf_size: int | None
    rf_stride: int | None
    rf_offset: int | None
    params: int
    calls: int
    leaf: bool

    @property
    def spatial(self) -> bool:
        """A (C, H, W) output with H and W larger than 1."""
        s = self.output_shape
        return s is not None and len(s) == 3 and s[1] > 1 and s[2] > 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_shape"] = list(self.output_shape) if self.output_shape is not None else None
        return d


def _side(input_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        h = w = input_size
    else:
        h, w = (int(v) for v in input_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"input_size must be positive, got {input_size!r}")
    return h, w


def _in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _probe(model: nn.Module, input_size: int | tuple[int, int]) -> tuple[list[str], dict[str, Any], dict[str, int]]:
    """One forward on zeros: modules in the order of their first call, their outputs' shapes, call counts."""
    h, w = _side(input_size)
    p = next(model.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None and p.is_floating_point() else ("cpu", torch.float32)
    order: list[str] = []
    shapes: dict[str, Any] = {}
    calls: dict[str, int] = {}
    handles = []

    def make(name: str) -> Any:
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if name not in calls:
                order.append(name)
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None
        return hook

    try:
        for name, m in model.named_modules():
            if name:
                handles.append(m.register_forward_hook(make(name)))
        with _eval(model), torch.no_grad():
            try:
                model(torch.zeros(1, _in_channels(model), h, w, device=device, dtype=dtype))
            except RuntimeError as exc:
                raise ValueError(f"input size {h}x{w} does not work for {type(model).__name__}: {exc}; "
                                 "give a larger --input-size") from None
    finally:
        for handle in handles:
            handle.remove()
    return order, shapes, calls


def _safe_rfs(model: nn.Module, size: tuple[int, int]) -> dict[str, RF]:
    try:
        return receptive_fields(model, size)
    except ValueError:  # e.g. non-square kernels: no receptive fields, but the layers are still listed
        return {}


def list_layers(model: nn.Module, input_size: int | tuple[int, int]) -> list[LayerInfo]:
    """Every module path of ``model`` (leaves and blocks, in ``named_modules`` order) with its
    output shape on one ``input_size`` image, channels and receptive field.

    The model's mode is restored and no hook is left on it.

    Raises:
        ValueError: ``input_size`` too small for the model.

    Example:
        >>> for info in list_layers(torchvision.models.resnet18(), 224):
        ...     print(info.name, info.output_shape, info.rf_size)
    """
    size = _side(input_size)
    _, shapes, calls = _probe(model, size)
    rfs = _safe_rfs(model, size)
    out = []
    for name, m in model.named_modules():
        if not name:
            continue
        shape = shapes.get(name)
        rf = rfs.get(name)
        out.append(LayerInfo(
            name=name, type=type(m).__name__, output_shape=shape, channels=shape[0] if shape else None,
            rf_size=rf.size if rf else None, rf_stride=rf.stride if rf else None, rf_offset=rf.offset if rf else None,
            params=sum(p.numel() for p in m.parameters()), calls=calls.get(name, 0),
            leaf=not any(True for _ in m.children()),
        ))
    return out


def _is_convnet(model: nn.Module) -> bool:
    return hasattr(model, "layer_names") and callable(getattr(model, "resolve", None))


def _evenly(items: list[str], n: int) -> list[str]:
    if len(items) <= n:
        return items
    step = (len(items) - 1) / (n - 1)
    return [items[round(i * step)] for i in range(n)]


def default_layers(model: nn.Module, input_size: int | tuple[int, int], *, at_most: int = 5) -> list[str]:
    """A few layers worth looking at, in forward order.

    A ConvNet: its conv layers (``conv1`` ... ``conv5``). Any other CNN: its trunk is the module
    (the model itself, ``features``, ``blocks`` ...) whose direct children's outputs span the
    most resolutions (spatial maps larger than 1x1; ties: more such children); among those
    children the blocks (or, in a flat trunk such
    as vgg's ``features``, the activations), the last one of each output resolution, at most
    ``at_most`` of them evenly spread (always the deepest).

    Raises:
        ValueError: no module outputs a spatial map larger than 1x1 at this ``input_size``.

    Example:
        >>> default_layers(torchvision.models.resnet18(), 224)
        ['layer1', 'layer2', 'layer3', 'layer4']
    """
    if _is_convnet(model):
        return [n for n in model.layer_names if n.startswith("conv")]  # type: ignore[union-attr]
    order, shapes, _ = _probe(model, input_size)
    rank = {name: i for i, name in enumerate(order)}

    def spatial(name: str) -> bool:
        s = shapes.get(name)
        return s is not None and len(s) == 3 and s[1] > 1 and s[2] > 1

    best: tuple[tuple[int, int], list[tuple[str, nn.Module]]] | None = None
    for path, m in model.named_modules():
        kids = [(f"{path}.{n}" if path else n, c) for n, c in m.named_children()]
        kids = [(n, c) for n, c in kids if spatial(n)]
        score = (len({shapes[n][1:] for n, _ in kids}), len(kids))  # resolutions spanned, then children
        if kids and (best is None or score > best[0]):
            best = (score, kids)
    if best is None:
        raise ValueError(f"no layer of {type(model).__name__} outputs a spatial map larger than 1x1 on "
                         f"{input_size} px inputs; give the layers explicitly or a larger input size")
    kids = sorted(best[1], key=lambda nc: rank[nc[0]])
    blocks = [(n, c) for n, c in kids if any(True for _ in c.children())]
    acts = [(n, c) for n, c in kids if isinstance(c, _ACTIVATIONS)]
    chosen = blocks or acts or kids
    names = [n for n, _ in chosen]
    # the last of each run of equal output resolution
    picked = [n for i, n in enumerate(names) if i + 1 == len(names) or shapes[names[i + 1]][1:] != shapes[n][1:]]
    if len(picked) < 3:
        picked = names
    return _evenly(picked, at_most)


def resolve_layers(model: nn.Module, names: str | Sequence[str]) -> list[str]:
    """Validate layer names: a list or a comma-separated string; blanks dropped, duplicates removed.

    Returns:
        the names as given (module paths, or a ConvNet's ``conv1`` ... names), in order.

    Raises:
        ValueError: no names, or an unknown one (the closest few existing names are given).

    Example:
        >>> resolve_layers(model, "layer2.1, layer4")
        ['layer2.1', 'layer4']
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    out = list(dict.fromkeys(str(n).strip() for n in items if str(n).strip()))
    if not out:
        raise ValueError(f"no layer names given (got {names!r}); name at least one, e.g. 'layer2.1,layer4'")
    for name in out:
        resolve_layer(model, name)
    return out
