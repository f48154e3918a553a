"""Receptive fields: hand values for ZFNet, and the box contains the support of the input gradient."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convlens.model import build_model
from convlens.receptive_field import RF, receptive_fields, unit_box


def _meta(fn):  # structure only: no memory, no initialization time
    with torch.device("meta"):
        return fn()


def test_zfnet_hand_values():
    # conv1 7/2 pad 1; pool 3/2; conv2 5/2; pool 3/2; conv3-5 3/1 pad 1; pool5 3/2 (Fig. 3)
    model = _meta(lambda: build_model("zfnet"))
    rfs = receptive_fields(model, 224)
    assert rfs["conv1"] == RF(7, 2, -1)
    assert rfs["pool1"] == RF(11, 4, -1)
    assert rfs["conv2"] == RF(27, 8, -1)
    assert rfs["pool2"] == RF(43, 16, -1)
    assert rfs["conv5"] == rfs["relu5"] == RF(139, 16, -49)
    assert rfs["pool5"] == RF(171, 32, -49)
    assert rfs["fc6"] == RF(224, 0, 0)
    assert unit_box(model, "conv5", 0, 0, 224) == (0, 0, 90, 90)  # clipped at the top-left
    assert unit_box(model, "conv5", 6, 7, 224) == (47, 63, 186, 202)
    assert unit_box(model, "conv5", 12, 12, 224) == (143, 143, 224, 224)
    assert unit_box(model, "fc7", 0, 0, (224, 200)) == (0, 0, 224, 200)


def test_torchvision_alexnet_and_resnet():
    rfs = receptive_fields(_meta(torchvision.models.alexnet), 224)
    assert rfs["features.0"] == RF(11, 4, -2)
    assert rfs["features.12"].size == 195  # pool5 of torchvision alexnet
    assert rfs["classifier.1"].stride == 0
    r18 = receptive_fields(_meta(torchvision.models.resnet18), 224)
    assert r18["layer4.1.conv2"] == RF(435, 32, -217)  # the well-known 435 px of resnet18
    assert r18["fc"].stride == 0


def test_bad_layer_and_non_square():
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        unit_box(build_model("zfnet-tiny"), "conv9", 0, 0, 32)
    net = nn.Sequential(nn.Conv2d(3, 4, (3, 5)))
    with pytest.raises(ValueError, match="square"):
        receptive_fields(net, 32)


def _support_inside(model: nn.Module, layer: str, x: torch.Tensor, units: list[tuple[int, int, int]]) -> None:
    from convlens.hooks import record_activations

    x = x.clone().requires_grad_(True)
    with record_activations(model, [layer]) as acts:
        model(x)
    act = acts[layer]
    for c, y, xx in units:
        (g,) = torch.autograd.grad(act[0, c, y, xx], x, retain_graph=True)
        nz = g[0].abs().sum(0).nonzero()
        if len(nz) == 0:
            continue
        y0, x0, y1, x1 = unit_box(model, layer, y, xx, tuple(x.shape[-2:]))
        assert y0 <= int(nz[:, 0].min()) and int(nz[:, 0].max()) < y1
        assert x0 <= int(nz[:, 1].min()) and int(nz[:, 1].max()) < x1


@pytest.mark.parametrize("arch", ["zfnet-tiny", "zfnet-small", "alexnet-small"])
def test_box_contains_gradient_support_convnet(arch):
    model = build_model(arch, init="kaiming", seed=0).double().eval()
    size = model.cfg.input_size
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    for layer in ("conv1", "conv2", "conv5"):
        h = model.features(x, [layer])[layer].shape[-1]
        _support_inside(model, layer, x, [(0, 0, 0), (1, h // 2, h - 1), (2, h - 1, h // 3)])


def test_box_contains_gradient_support_resnet_and_tight_for_conv():
    model = torchvision.models.resnet18().double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    _support_inside(model, "layer1.1.bn2", x, [(0, 0, 0), (3, 8, 9)])
    _support_inside(model, "layer2.0.conv1", x, [(1, 4, 4)])
    # a stride-1 conv chain without relus: the support fills the box exactly
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, stride=2)).double()
    nn.init.constant_(net[0].weight, 1.0)
    nn.init.constant_(net[1].weight, 1.0)
    x = torch.ones(1, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(net(x)[0, 0, 2, 3], x)
    nz = g[0, 0].nonzero()
    box = unit_box(net, "1", 2, 3, 12)
    assert box == (int(nz[:, 0].min()), int(nz[:, 1].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1)
