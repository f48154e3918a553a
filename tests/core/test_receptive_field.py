"""Receptive fields: hand values for ZFNet, and the box contains the support of the input gradient."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from conftest import SHARED, needs_shared
from convlens.core.receptive_field import RF, axis_receptive_fields, receptive_fields, unit_box
from convlens.nets.convnet import build_model


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



def test_non_square_kernels_are_followed_per_axis():
    # inception-style 1x7 then 7x1 (plus a 3x5 stride-(1, 2) conv): exact per axis, square again at the end
    net = nn.Sequential(nn.Conv2d(3, 4, (1, 7), padding=(0, 3)), nn.Conv2d(4, 4, (7, 1), padding=(3, 0)),
                        nn.Conv2d(4, 2, (3, 5), stride=(1, 2))).double()
    axes = axis_receptive_fields(net, 32)
    assert axes["0"] == (RF(1, 1, 0), RF(7, 1, -3))
    assert axes["1"] == (RF(7, 1, -3), RF(7, 1, -3))
    assert axes["2"] == (RF(9, 1, -3), RF(11, 2, -3))
    assert set(receptive_fields(net, 32)) == {"1"}  # only the layer whose two axes agree
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    for layer, (y, xx) in (("0", (10, 12)), ("2", (5, 7)), ("2", (0, 0))):
        out = net[: int(layer) + 1](x)
        (g,) = torch.autograd.grad(out[0, 0, y, xx], x)
        nz = g[0].abs().sum(0).nonzero()
        assert unit_box(net, layer, y, xx, 32) == (int(nz[:, 0].min()), int(nz[:, 1].min()),
                                                   int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1)


def _support_inside(model: nn.Module, layer: str, x: torch.Tensor, positions: list[tuple[int, int]]) -> int:
    """For each (y, x) the strongest channel's unit there: its input-gradient support lies in its box.
    Returns how many probed units were live (non-zero gradient)."""
    from convlens.core.capture import capture

    x = x.clone().requires_grad_(True)
    act = capture(model, x, [layer], no_grad=False)[layer]
    live = 0
    for y, xx in positions:
        c = int(act[0, :, y, xx].argmax())
        (g,) = torch.autograd.grad(act[0, c, y, xx], x, retain_graph=True)
        nz = g[0].abs().sum(0).nonzero()
        if len(nz) == 0:
            continue
        live += 1
        y0, x0, y1, x1 = unit_box(model, layer, y, xx, tuple(x.shape[-2:]))
        assert y0 <= int(nz[:, 0].min()) and int(nz[:, 0].max()) < y1, (layer, y, xx)
        assert x0 <= int(nz[:, 1].min()) and int(nz[:, 1].max()) < x1, (layer, y, xx)
    return live


@pytest.mark.parametrize("arch", ["zfnet-tiny", "zfnet-small", "alexnet-small"])
def test_box_contains_gradient_support_convnet(arch):
    model = build_model(arch, init="kaiming", seed=0).double().eval()
    size = model.cfg.input_size
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    live = 0
    for layer in ("conv1", "conv2", "conv5"):
        h = model.features(x, [layer])[layer].shape[-1]
        live += _support_inside(model, layer, x, [(0, 0), (h // 2, h - 1), (h - 1, h // 3)])
    assert live == 9  # every probed unit is live: the check checked something


def test_box_contains_gradient_support_resnet_and_tight_for_conv():
    model = torchvision.models.resnet18().double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    assert _support_inside(model, "layer1.1.bn2", x, [(0, 0), (8, 9)]) == 2
    assert _support_inside(model, "layer2.0.conv1", x, [(4, 4)]) == 1
    # a stride-1 conv chain without relus: the support fills the box exactly
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, stride=2)).double()
    nn.init.constant_(net[0].weight, 1.0)
    nn.init.constant_(net[1].weight, 1.0)
    x = torch.ones(1, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(net(x)[0, 0, 2, 3], x)
    nz = g[0, 0].nonzero()
    box = unit_box(net, "1", 2, 3, 12)
    assert box == (int(nz[:, 0].min()), int(nz[:, 1].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1)


# --- blocks: exact boxes ------------------------------------------------------------------------

def _linearized(model: nn.Module) -> nn.Module:
    """Same receptive fields, no sparsity: activations -> identity, max pools -> average pools. With
    generic random float64 weights every input pixel of the RF then reaches the unit, so the
    support of its input gradient fills the box exactly."""
    for m in list(model.modules()):
        for cname, c in list(m.named_children()):
            if isinstance(c, (nn.ReLU, nn.ReLU6)):
                setattr(m, cname, nn.Identity())
            elif isinstance(c, nn.MaxPool2d):
                setattr(m, cname, nn.AvgPool2d(c.kernel_size, c.stride, c.padding, ceil_mode=c.ceil_mode))
    return model


def _support_boxes(model: nn.Module, layer: str, size: int, positions: list[tuple[int, int]]):
    """Per position: the strongest channel's unit, its box and the bounding box of its gradient support
    (None for a dead unit). One image per unit, one backward for all (eval mode: images independent)."""
    from convlens.core.capture import capture

    x = torch.randn(len(positions), 3, size, size, dtype=torch.float64, requires_grad=True)
    act = capture(model, x, [layer], no_grad=False)[layer]
    picked = []
    for i, (y, xx) in enumerate(positions):
        c = int(act[i, :, y, xx].argmax())
        picked.append(act[i, c, y, xx])
    (g,) = torch.autograd.grad(torch.stack(picked).sum(), x)
    out = []
    for i, (y, xx) in enumerate(positions):
        nz = g[i].abs().sum(0).nonzero()
        support = None if len(nz) == 0 else (int(nz[:, 0].min()), int(nz[:, 1].min()),
                                              int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1)
        out.append((unit_box(model, layer, y, xx, size), support))
    return out


def _positions(model: nn.Module, layer: str, size: int) -> list[tuple[int, int]]:
    from convlens.core.capture import capture

    h, w = capture(model, torch.zeros(1, 3, size, size, dtype=torch.float64), [layer])[layer].shape[-2:]
    return [(0, 0), (h // 2, w // 2), (h - 1, w // 3), (h // 3, w - 1)]


def _build(arch: str) -> nn.Module:
    """A random-weight torchvision model in float64, without its (large, here irrelevant) classifier."""
    with torch.device("meta"):
        model = getattr(torchvision.models, arch)()
    if hasattr(model, "classifier"):
        model.classifier = nn.Identity()
    model.to_empty(device="cpu")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):  # random statistics: no unit is dead by construction
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.double().eval()


BLOCKS = [
    ("mobilenet_v2", 64, ["features.1", "features.2", "features.3", "features.6", "features.7"]),
    ("resnet18", 64, ["layer1.0", "layer2.1", "layer2"]),
    ("vgg11", 64, ["features.2", "features.5", "features.10"]),
]
# the theoretical receptive field sizes (hand-derived: kernel/stride/padding of each path)
THEORY = {
    "features.1": 7, "features.2": 11, "features.3": 19, "features.6": 59, "features.7": 75,  # mobilenet_v2
    "layer1.0": 27, "layer2.1": 99, "layer2": 99,  # resnet18
}


@pytest.mark.parametrize(("arch", "size", "layers"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_block_box_contains_gradient_support_and_is_exact(arch, size, layers):
    torch.manual_seed(0)
    model = _build(arch)
    rfs = receptive_fields(model, size)
    live = probed = 0
    for layer in layers:
        if layer in THEORY and arch != "vgg11":
            assert rfs[layer].size == THEORY[layer], layer
        for box, support in _support_boxes(model, layer, size, _positions(model, layer, size)):
            probed += 1
            if support is None:
                continue
            live += 1
            y0, x0, y1, x1 = box
            assert y0 <= support[0] and x0 <= support[1] and support[2] <= y1 and support[3] <= x1, (layer, box)
            assert y1 - y0 <= rfs[layer].size and x1 - x0 <= rfs[layer].size
    assert live == probed == 4 * len(layers)
    # the same model without sparsity (identity activations, average pools): support == box exactly
    lin = _linearized(model)
    for layer in layers:
        for box, support in _support_boxes(lin, layer, size, _positions(lin, layer, size)):
            assert support == box, (layer, box, support)


def test_vgg11_block_hand_values():
    rfs = receptive_fields(_meta(torchvision.models.vgg11), 224)
    # conv3/1/1, pool2/2 (x2), then two conv3 per stage
    assert rfs["features.2"] == RF(4, 2, -1)
    assert rfs["features.5"] == RF(10, 4, -3)
    assert rfs["features.10"] == RF(30, 8, -11)
    assert rfs["features"] == rfs["features.20"] == RF(150, 32, -59)


def test_timm_block_boxes_if_installed():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False)
    for m in model.modules():  # timm zero-initializes each block's last BatchNorm: the main path would be dead
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    model = model.double().eval()
    rfs = receptive_fields(model, 64)
    assert rfs["layer2.1"] == RF(99, 8, -49) and rfs["layer4"].size == 435
    for box, support in _support_boxes(_linearized(model), "layer2.1", 64, [(0, 0), (4, 3), (7, 7)]):
        assert support == box


def test_functional_ops_and_string_padding():
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding="same")
            self.w = nn.Parameter(torch.randn(4, 4, 5, 5))

        def forward(self, x):
            x = F.pad(self.a(x), (1, 1, 1, 1))
            x = F.conv2d(x, self.w, stride=2)
            return F.max_pool2d(x, 2)

    rfs = receptive_fields(Net(), 32)
    assert rfs["a"] == RF(3, 1, -1)
    assert rfs == {"a": RF(3, 1, -1)}  # functional calls are not modules: no names of their own
    with pytest.raises(ValueError, match="unknown layer 'b'"):
        unit_box(Net(), "b", 0, 0, 32)


@needs_shared
@pytest.mark.shared_data
def test_mobilenet_v2_imagenet_weights_block_boxes_contain_live_gradient_support():
    from PIL import Image

    weights = SHARED / "models" / "mobilenet_v2_imagenet" / "mobilenet_v2_imagenet.pt"
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model = model.double().eval()
    path = next((SHARED / "imagenet-sample" / "n01440764").glob("*.JPEG"))
    img = Image.open(path).convert("RGB").resize((96, 96))
    x = torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1)[None].double() / 127.5 - 1
    live = 0
    for layer in ("features.2", "features.3", "features.6", "features.10"):
        h = model.features[: int(layer.split(".")[1]) + 1](x).shape[-1]
        live += _support_inside(model, layer, x, [(0, 0), (h // 2, h // 2), (h - 1, h // 3)])
    assert live == 12
