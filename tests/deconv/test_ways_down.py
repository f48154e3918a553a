"""Receptive-field-cropped projections (generic path) equal full-image autograd projections."""
from __future__ import annotations

import copy
import functools
import warnings
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from convlens.core.capture import get_module
from convlens.deconv import autograd_way as _deconv_generic
from convlens.deconv.project import _LRN, _rule_hook, project_units


@functools.cache
def _model(name: str) -> nn.Module:
    """Random weights; BatchNorm statistics calibrated on random images (else ReLU6 saturates)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).double()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.momentum = None
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
        if bns:
            model.train()(torch.randn(4, 3, 64, 64, dtype=torch.float64))
    return model.eval()


def reference(model: nn.Module, images: torch.Tensor, layer: str, units: torch.Tensor, rule: str) -> torch.Tensor:
    """One full-image forward and backward per unit, the rule hooks on every ReLU: (N, K, 3, H, W)."""
    target = get_module(model, layer)
    store = {}
    inplace = [m for m in model.modules() if getattr(m, "inplace", False)]
    for m in inplace:
        m.inplace = False
    hook = _rule_hook(rule)
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.ReLU, nn.ReLU6)) or (rule == "deconvnet" and isinstance(m, _LRN))]
    handles.append(target.register_forward_hook(lambda _m, _i, out: store.__setitem__("act", out)))
    try:
        out = torch.zeros(*units.shape[:2], *images.shape[1:], dtype=images.dtype)
        for i in range(units.shape[0]):
            for j, (c, y, x) in enumerate(units[i].tolist()):
                img = images[i:i + 1].clone().requires_grad_(True)
                model(img)
                act = store["act"]
                seed = torch.zeros_like(act)
                seed[0, c, y, x] = act[0, c, y, x].detach()
                (out[i, j],) = torch.autograd.grad(act, img, seed)
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True
    return out


def live_units(model: nn.Module, images: torch.Tensor, layer: str) -> torch.Tensor:
    """(N, 5, 3): the strongest channel at the four corners and the centre of each image's map."""
    with torch.no_grad():
        act, _ = _deconv_generic.forward_to(model, get_module(model, layer), images)
    h, w = act.shape[-2:]
    out = []
    for i in range(len(images)):
        rows = []
        for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2)):
            rows.append([int(act[i, :, y, x].argmax()), y, x])
        out.append(rows)
    return torch.tensor(out)


def assert_equals_reference(model: nn.Module, images: torch.Tensor, layer: str, units: torch.Tensor,
                            rule: str) -> Any:
    """``project_units`` equals :func:`reference` (float64), every compared projection live; returns it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proj = project_units(model, images, layer, units, rule=rule)
    ref = reference(model, images, layer, units, rule)
    assert (ref.flatten(2).abs().amax(-1) > 0).all()  # every compared projection is live
    torch.testing.assert_close(proj.images, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))
    return proj


CASES = [("resnet18", 96, "layer1.1.relu"),  # called twice per block: its last call is the block output
         pytest.param("vgg11", 64, "features.9", marks=pytest.mark.slow),  # float64 VGG11: ~12 s in all
         ("mobilenet_v2", 64, "features.4.conv.3")]


@pytest.mark.parametrize("name,size,layer", CASES)
@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_cropped_equals_full_image(name, size, layer, rule):
    model = _model(name)
    images = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert _deconv_generic.crop_plan(model, layer, (size, size)) is not None  # the crop path is taken
    proj = assert_equals_reference(model, images, layer, live_units(model, images, layer), rule)
    assert (proj.values > 0).all()


@pytest.mark.parametrize("rule", ["guided", "gradient"])
def test_crops_with_tf_same_padding(rule):
    """convlens's TF "SAME" padding hooks: crops when the image side is a multiple of the layer's
    stride (then exact), full images otherwise; both equal the full-image autograd projection."""
    from convlens.core.padding import use_tf_same_padding

    model = use_tf_same_padding(copy.deepcopy(_model("mobilenet_v2")))
    layer = "features.4.conv.3"  # stride 8
    for size, cropped in ((64, True), (60, False)):
        images = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(size))
        assert (_deconv_generic.crop_plan(model, layer, (size, size)) is not None) == cropped
        assert_equals_reference(model, images, layer, live_units(model, images, layer), rule)


def test_full_image_path_and_batch_invariance(monkeypatch):
    """No crop (global op or a crop too big): one forward per image, backward passes batched."""
    model = _model("mobilenet_v2")
    images = torch.randn(2, 3, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    layer = "features.6.conv.3"
    units = live_units(model, images, layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crop = project_units(model, images, layer, units, rule="guided")
        monkeypatch.setattr(_deconv_generic, "CROP_FRACTION", 0.0)
        full = project_units(model, images, layer, units, rule="guided")
        one = project_units(model, images[1:], layer, units[1:], rule="guided")
    ref = reference(model, images, layer, units, rule="guided")
    torch.testing.assert_close(full.images, ref)
    torch.testing.assert_close(crop.images, ref)
    torch.testing.assert_close(one.images[0], full.images[1])
    assert (ref.flatten(2).abs().amax(-1) > 0).all()


class _SE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv1(x))
        return self.conv2(y * y.mean((2, 3), keepdim=True).sigmoid())


def test_global_operation_means_full_images():
    model = _SE().double()
    assert _deconv_generic.crop_plan(model, "conv2", (64, 64)) is None
    assert _deconv_generic.crop_plan(model, "conv1", (64, 64)) is not None
    images = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    units = torch.tensor([[[0, 5, 60], [1, 0, 0]]])
    proj = project_units(model, images, "conv2", units, rule="gradient")
    torch.testing.assert_close(proj.images, reference(model, images, "conv2", units, "gradient"))
    assert (proj.images.flatten(2).abs().amax(-1) > 0).all()


@pytest.mark.parametrize("name,layer,tf_same", [("resnet18", "layer2.0.relu", False),
                                                ("mobilenet_v2", "features.6.conv.3", False),
                                                ("mobilenet_v2", "features.6.conv.3", True)])
@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
# split into single samples: the same numbers by another batching; slow (half of this matrix, ~25 s)
@pytest.mark.parametrize("split", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_explicit_way_down_equals_autograd(monkeypatch, name, layer, tf_same, rule, split):
    """The explicit batched way down (full images), with TF "SAME" padding hooks and with the batch
    split into single samples on large maps, equals one autograd backward per unit."""
    from convlens.core.padding import use_tf_same_padding
    from convlens.deconv import graph_way as _deconv_graph

    model = copy.deepcopy(_model(name))
    if tf_same:
        use_tf_same_padding(model)
    if name == "resnet18":  # max pooling is left to autograd; the additions and shared signals are tested
        model.maxpool = nn.Identity()
    images = torch.randn(2, 3, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    units = live_units(model, images, layer)
    monkeypatch.setattr(_deconv_generic, "CROP_FRACTION", 0.0)
    if split:
        monkeypatch.setattr(_deconv_graph, "SPLIT_NUMEL", 1)
        monkeypatch.setattr(_deconv_graph, "SPLIT_BATCH", 1)
    seed = torch.ones(units.shape[0] * units.shape[1], dtype=torch.float64)
    assert _deconv_graph.project(model, images, layer, units, seed, rule) is not None  # the explicit path
    assert_equals_reference(model, images, layer, units, rule)


@pytest.mark.parametrize("images_at_once", [1, 16])
def test_explicit_way_images_together_or_in_parts(monkeypatch, images_at_once):
    """Three images recorded together (one forward, every unit gated by its own image) or one at a time
    (more images than ``IMAGES``: the layer's output from a plain forward, then the images in parts)
    equal one autograd backward per unit; the explicit way is the one taken."""
    from convlens.deconv import graph_way as _deconv_graph

    model = _model("mobilenet_v2")
    layer = "features.6.conv.3"
    images = torch.randn(3, 3, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    units = live_units(model, images, layer)
    monkeypatch.setattr(_deconv_generic, "CROP_FRACTION", 0.0)
    monkeypatch.setattr(_deconv_graph, "IMAGES", images_at_once)
    calls = []
    down = _deconv_graph.Recorded.down
    monkeypatch.setattr(_deconv_graph.Recorded, "down", lambda self, *a, **kw: calls.append(len(self.act)) or
                        down(self, *a, **kw))
    assert_equals_reference(model, images, layer, units, "guided")
    assert calls == ([3] if images_at_once == 16 else [1, 1, 1])
