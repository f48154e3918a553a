"""Layer listing, default layers and name validation on ConvNet, torchvision and timm models."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convlens.layers import LayerInfo, default_layers, list_layers, resolve_layers
from convlens.model import build_model


def test_default_layers_adapt_to_the_model():
    assert default_layers(build_model("zfnet-tiny"), 32) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert default_layers(torchvision.models.resnet18(), 64) == ["layer1", "layer2", "layer3", "layer4"]
    mb2 = torchvision.models.mobilenet_v2()
    assert default_layers(mb2, 64) == ["features.1", "features.3", "features.6", "features.13", "features.18"]
    # at 32 px features.14-18 are 1x1: left out
    assert default_layers(mb2, 32) == ["features.1", "features.3", "features.6", "features.13"]
    with torch.device("meta"):
        vgg = torchvision.models.vgg11()
    vgg.classifier = nn.Identity()
    vgg.to_empty(device="cpu")
    # the last activation of each resolution stage of the flat trunk
    assert default_layers(vgg, 64) == ["features.1", "features.4", "features.9", "features.14", "features.19"]


def test_default_layers_timm_if_installed():
    timm = pytest.importorskip("timm")
    assert default_layers(timm.create_model("resnet18"), 64) == ["layer1", "layer2", "layer3", "layer4"]


def test_list_layers_resnet18():
    model = torchvision.models.resnet18().train()
    infos = list_layers(model, 64)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert all(not m._forward_hooks for m in model.modules())
    by = {i.name: i for i in infos}
    assert len(infos) == len([n for n, _ in model.named_modules() if n])
    assert isinstance(by["layer2.1"], LayerInfo)
    assert by["layer2.1"].output_shape == (128, 8, 8) and by["layer2.1"].channels == 128
    assert (by["layer2.1"].rf_size, by["layer2.1"].rf_stride, by["layer2.1"].rf_offset) == (99, 8, -49)
    assert by["layer2.1.conv1"].leaf and not by["layer2.1"].leaf and by["layer2.1"].spatial
    assert by["layer1.0.relu"].calls == 2 and by["layer1.0"].calls == 1
    assert by["fc"].output_shape == (1000,) and by["fc"].rf_stride == 0 and not by["fc"].spatial
    assert by["layer2"].params == sum(p.numel() for p in model.layer2.parameters())
    assert by["layer2.1"].to_dict()["output_shape"] == [128, 8, 8]


def test_list_layers_convnet_and_too_small_input():
    infos = {i.name: i for i in list_layers(build_model("zfnet-tiny"), 32)}
    assert infos["conv1"].output_shape == (8, 15, 15) and infos["conv1"].rf_size == 5
    with pytest.raises(ValueError, match="larger --input-size"):
        list_layers(torchvision.models.vgg11().features, 1)


def test_resolve_layers():
    model = torchvision.models.mobilenet_v2()
    assert resolve_layers(model, "features.3, features.13,,features.3") == ["features.3", "features.13"]
    assert resolve_layers(model, ["features.3.conv.0"]) == ["features.3.conv.0"]
    assert resolve_layers(build_model("zfnet-tiny"), "conv5,pool1") == ["conv5", "pool1"]
    with pytest.raises(ValueError, match=r"unknown layer 'feature\.3'.*closest: features\.3"):
        resolve_layers(model, "feature.3")
    with pytest.raises(ValueError, match="no layer names"):
        resolve_layers(model, " , ")
