"""Layer listing, default layers and name validation on ConvNet, torchvision and timm models."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convlens.core.layers import LayerInfo, default_layers, list_layers, resolve_layers
from convlens.nets.convnet import build_model


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
        list_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3)), 4)


def test_resolve_layers():
    model = torchvision.models.mobilenet_v2()
    assert resolve_layers(model, "features.3, features.13,,features.3") == ["features.3", "features.13"]
    assert resolve_layers(model, ["features.3.conv.0"]) == ["features.3.conv.0"]
    assert resolve_layers(build_model("zfnet-tiny"), "conv5,pool1") == ["conv5", "pool1"]
    with pytest.raises(ValueError, match=r"unknown layer 'feature\.3'.*closest: features\.3"):
        resolve_layers(model, "feature.3")
    with pytest.raises(ValueError, match="no layer names"):
        resolve_layers(model, " , ")


def test_cli_summary_and_layers_any_model(tmp_path, capsys):
    import json

    from convlens.cli import main

    assert main(["summary", "--arch", "torchvision:mobilenet_v2", "--input-size", "64", "--out",
                 str(tmp_path / "s")]) == 0
    res = json.loads((tmp_path / "s" / "result.json").read_text())
    rows = {r[0]: r for r in res["tables"][0]["rows"]}
    assert rows["features.3"][1:] == ["24x16x16", "8,832", "19 / 4"] and "features.3.conv" not in rows
    assert res["kind"] == "summary" and res["params"]["input_size"] == 64
    capsys.readouterr()
    assert main(["layers", "--arch", "torchvision:resnet18", "--input-size", "64", "--out", str(tmp_path / "l")]) == 0
    out = capsys.readouterr().out
    assert "* layer2 " in out and "layer2.1.conv1" in out and "default layers: layer1, layer2, layer3, layer4" in out
    res = json.loads((tmp_path / "l" / "result.json").read_text())
    assert res["data"]["default_layers"] == ["layer1", "layer2", "layer3", "layer4"]
    by = {d["name"]: d for d in res["data"]["layers"]}
    assert by["layer2.1"]["rf_size"] == 99 and by["layer2.1"]["output_shape"] == [128, 8, 8]
    assert len(by) == len([n for n, _ in torchvision.models.resnet18().named_modules() if n])


def test_cli_layers_user_factory_and_convnet(tmp_path, capsys):
    from convlens.cli import main

    src = tmp_path / "net.py"
    src.write_text("import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 5, 2), nn.ReLU(),"
                   " nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU()), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
                   " nn.Linear(8, 4))\n")
    assert main(["layers", "--arch", f"{src}:build", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.split()[:2] == ["2.0", "Conv2d"])
    assert row.split()[2:] == ["8x12x12", "8", "9", "/", "2"]  # conv 5/2, then conv 3: 5 + (3 - 1) * 2
    assert main(["layers", "--arch", "zfnet-tiny", "--depth", "1"]) == 0
    assert "relu5" in capsys.readouterr().out
    assert main(["layers", "--arch", "zfnet-tiny", "--depth", "0"]) == 2


def test_cli_summary_checkpoint_timm_and_factory_with_weights(tiny_checkpoint, tmp_path, capsys):
    from convlens.cli import main

    assert main(["summary", "--checkpoint", str(tiny_checkpoint)]) == 0
    assert "conv5" in capsys.readouterr().out
    src = tmp_path / "net.py"
    src.write_text("import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(),"
                   " nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))\n")
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    assert main(["summary", "--arch", f"{src}:build", "--weights", str(tmp_path / "w.pt"), "--input-size", "16"]) == 0
    assert "8x14x14" in capsys.readouterr().out
    pytest.importorskip("timm")
    assert main(["summary", "--arch", "timm:resnet18", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "layer2.1" in out and "99 / 8" in out
