"""Generic incremental occlusion (fx graph, Krypton) and the approximate mode, against full forwards."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convlens.core.capture import record_activations
from convlens.occlusion.approx import ssim
from convlens.occlusion.incremental import IncrementalPlan
from convlens.occlusion.maps import Approximation, occluder_positions, occlusion_map


def naive(model: nn.Module, image: torch.Tensor, window: int, stride: int, fill: float, layer: str, channel: int):
    """One occluded image per plain forward: (probs (gy, gx, K), activity (gy, gx))."""
    H, W = image.shape[-2:]
    py, px = occluder_positions(H, window, stride), occluder_positions(W, window, stride)
    probs, act = [], []
    inplace = [m for m in model.modules() if getattr(m, "inplace", False)]  # else a recorded BN output is clamped
    for m in inplace:
        m.inplace = False
    with torch.no_grad():
        for y in py:
            for x in px:
                img = image.clone()
                img[:, y:y + window, x:x + window] = fill
                with record_activations(model, [layer]) as acts:
                    logits = model(img[None])
                probs.append(logits.softmax(1)[0])
                act.append(acts[layer][0, channel].sum())
    for m in inplace:
        m.inplace = True
    return torch.stack(probs).reshape(len(py), len(px), -1), torch.stack(act).reshape(len(py), len(px))


def _model(name: str) -> nn.Module:
    """Random weights with BatchNorm statistics calibrated on random images (else ReLU6 saturates
    and mobilenet_v2's output hardly moves), non-trivial BN affine parameters (folded into convs)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).double()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.momentum = None  # cumulative average
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
        model.train()(torch.randn(8, 3, 64, 64, dtype=torch.float64))
        head = model.fc if name.startswith("resnet") else model.classifier[1]
        head.weight.mul_(3)
    return model.eval()


@pytest.fixture(scope="module")
def resnet18():
    return _model("resnet18")


@pytest.fixture(scope="module")
def mobilenet_v2():
    return _model("mobilenet_v2")


CASES = [  # (model, size, layer, window, stride): interior and border occluders, flush last positions
    ("resnet18", 64, "layer2", 16, 12),
    ("resnet18", 64, "layer4.1", 24, 20),
    ("resnet18", 48, "layer1.0.relu", 7, 7),
    ("mobilenet_v2", 64, "features.13", 20, 11),
    ("mobilenet_v2", 48, "features.4", 9, 8),
    # the layer is the BatchNorm before a ReLU6 / ReLU: the in-place clamp must not reach the layer's value
    ("mobilenet_v2", 48, "features.5.conv.1.1", 9, 8),
    ("resnet18", 48, "layer1.0.bn1", 7, 7),
]


@pytest.mark.parametrize("name,size,layer,window,stride", CASES)
def test_generic_incremental_equals_full_forwards(name, size, layer, window, stride, request):
    model = request.getfixturevalue(name)
    image = torch.randn(3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(size + window))
    occ = occlusion_map(model, image, window=window, stride=stride, fill=0.3, layer=layer, batch_size=5)
    assert occ.method == "incremental"
    probs, act = naive(model, image, window, stride, 0.3, layer, occ.channel)
    torch.testing.assert_close(occ.probs, probs, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(occ.feature_activity, act, rtol=1e-9, atol=1e-9)
    assert occ.target_prob.std() > 1e-3 and occ.feature_activity.std() > 1e-3  # live: the test can fail


def test_local_prefix_from_graph(mobilenet_v2, resnet18):
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    plan = IncrementalPlan(mobilenet_v2, x, "features.18", 0.0, 8)
    local = {str(n.target) for n, k in plan.kind.items() if k is not None}
    assert {"features.0.0", "features.13.conv.1.0", "features.18.2"} <= local  # convs, depthwise, ReLU6
    assert not any(t.startswith("classifier") for t in local)
    assert plan.kind[next(n for n in plan.nodes if "adaptive_avg_pool2d" in n.name)] is None  # first global op
    plan = IncrementalPlan(resnet18, x, "layer4", 0.0, 8)
    kinds = {str(n.target): k for n, k in plan.kind.items()}
    assert kinds["maxpool"][0] == "max" and kinds["avgpool"] is None and kinds["fc"] is None


class _SE(nn.Module):
    """Conv with squeeze-excitation: the global pooling ends the local prefix inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 4)
        self.head = nn.Linear(4 * 12 * 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).relu()
        s = torch.sigmoid(self.fc(y.mean((2, 3))))
        return self.head((y * s[:, :, None, None]).flatten(1))


def test_squeeze_excitation_falls_back_exactly():
    torch.manual_seed(0)
    model = _SE().double().eval()
    image = torch.randn(3, 12, 12, dtype=torch.float64)
    occ = occlusion_map(model, image, window=5, stride=3, layer="conv", batch_size=4)
    probs, act = naive(model, image, 5, 3, 0.0, "conv", occ.channel)
    torch.testing.assert_close(occ.probs, probs)
    torch.testing.assert_close(occ.feature_activity, act)
    assert occ.target_prob.std() > 0


def test_untraceable_model_uses_plain_forwards():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 2, 3), nn.Linear(2 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if y.sum() > 1e9:  # data-dependent control flow: fx cannot trace it
                y = -y
            return self.fc(y.flatten(1))

    model = Branchy().double()
    image = torch.randn(3, 8, 8, dtype=torch.float64)
    occ = occlusion_map(model, image, window=3, stride=2, layer="conv")
    assert occ.method == "batched"
    torch.testing.assert_close(occ.probs, naive(model, image, 3, 2, 0.0, "conv", occ.channel)[0])


def test_no_side_effects_on_torchvision_model(resnet18):
    resnet18.train()
    inplace = [m for m in resnet18.modules() if getattr(m, "inplace", False)]
    try:
        occlusion_map(resnet18, torch.randn(3, 32, 32, dtype=torch.float64), window=16, stride=16, layer="layer1")
        assert resnet18.training and all(m.training for m in resnet18.modules())
        assert inplace and all(m.inplace for m in inplace)
        assert not any(m._forward_hooks for m in resnet18.modules())
    finally:
        resnet18.eval()


@pytest.mark.slow  # five float64 MobileNetV2 occlusion maps at 64 px: 17 s on a shared machine
def test_approximate_mode(mobilenet_v2):
    image = torch.randn(3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    kw = dict(window=16, stride=8, layer="features.13")
    exact = occlusion_map(mobilenet_v2, image, **kw)
    # no cap, every position on the coarse grid: the approximate mode computes the exact map
    same = occlusion_map(mobilenet_v2, image, approximate=Approximation(threshold=None, coarse=1), **kw)
    torch.testing.assert_close(same.probs, exact.probs)
    # every fine position drilled: exact again (the drilled values are kept)
    drilled = occlusion_map(mobilenet_v2, image, approximate=Approximation(threshold=None, drill_fraction=1.0), **kw)
    torch.testing.assert_close(drilled.probs, exact.probs)
    torch.testing.assert_close(drilled.feature_activity, exact.feature_activity)
    approx = occlusion_map(mobilenet_v2, image, approximate=Approximation(quality=True), **kw)
    q = approx.quality
    assert approx.method == "incremental approximate" and exact.quality is None
    assert q is not None and q["computed_fraction"] < 0.5
    assert -1 <= q["ssim_prob"] <= 1 and -1 <= q["ssim_activity"] <= 1 and q["max_abs_prob_diff"] > 0
    coarse = occlusion_map(mobilenet_v2, image, approximate=Approximation(threshold=None, drill_fraction=0), **kw)
    idx = torch.tensor([0, 3, 6])  # the coarse grid (every 3rd position and the last) is computed exactly
    torch.testing.assert_close(coarse.probs[idx][:, idx], exact.probs[idx][:, idx])
    assert not torch.allclose(coarse.probs, exact.probs)  # the rest is interpolated


def test_ssim():
    a = torch.rand(40, 40, generator=torch.Generator().manual_seed(0))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, a + 0.5 * torch.rand(40, 40)) < 0.9
    with pytest.raises(ValueError, match="threshold"):
        Approximation(threshold=0)


def test_tf_same_padding_hooks(mobilenet_v2):
    """convlens's TF "SAME" padding pre-hook (asymmetric padding) is understood; other hooks end the prefix."""
    import copy

    from convlens.core.padding import use_tf_same_padding

    model = use_tf_same_padding(copy.deepcopy(mobilenet_v2))
    image = torch.randn(3, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    occ = occlusion_map(model, image, window=9, stride=8, layer="features.6", batch_size=7)
    probs, act = naive(model, image, 9, 8, 0.0, "features.6", occ.channel)
    torch.testing.assert_close(occ.probs, probs, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(occ.feature_activity, act, rtol=1e-9, atol=1e-9)
    assert occ.target_prob.std() > 1e-3
    model.features[3].conv[0][0].register_forward_hook(lambda _m, _i, out: out * 2)
    plan = IncrementalPlan(model, image[None], "features.6", 0.0, 9)
    kinds = {str(n.target): k for n, k in plan.kind.items()}
    assert kinds["features.2.conv.1.0"][3] == 0 and kinds["features.3.conv.0.0"] is None


def test_workers_and_inplace_clamps(mobilenet_v2, monkeypatch):
    """Occluder batches in two worker threads equal one thread; the ReLU6 nodes clamp in place
    (except where the clamped tensor is the layer's value) and the caller's thread count is restored."""
    from convlens.occlusion import engine as _occlusion_engine

    image = torch.randn(3, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = occlusion_map(mobilenet_v2, image, window=9, stride=8, layer="features.6", batch_size=4)
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(_occlusion_engine, "WORKERS", 1)
        # the reference in one thread, as the docstring says: one worker with torch's 2 threads gave the
        # same numbers but spun for minutes (40 s of CPU) on a shared 2-core machine
        torch.set_num_threads(1)
        one = occlusion_map(mobilenet_v2, image, window=9, stride=8, layer="features.6", batch_size=4)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(two.probs, one.probs, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(two.feature_activity, one.feature_activity, rtol=1e-12, atol=1e-12)
    plan = IncrementalPlan(mobilenet_v2, image[None], "features.5.conv.1.1", 0.0, 9)
    clamped = {str(n.target) for n in plan.clamps}
    assert "features.5.conv.0.2" in clamped and "features.18.2" in clamped
    assert "features.5.conv.1.2" not in clamped  # its input is the layer's value


def test_trace_is_kept_per_model_until_its_modules_change():
    from convlens.core.graph import traced

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    first = traced(model)
    assert traced(model) is first  # kept
    model.layer1[0].relu = nn.ReLU6()  # a replaced submodule: traced again, with it
    second = traced(model)
    assert second is not first and isinstance(second.get_submodule("layer1.0.relu"), nn.ReLU6)
    model.train()  # a mode change: traced again
    assert traced(model) is not second

    class Untraceable(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(Exception, match="symbolically traced"):
        traced(Untraceable())


def test_relu_subclasses_keep_their_own_forward():
    """Only exact ReLU/ReLU6/Hardtanh modules become in-place clamps: a subclass keeps its forward."""

    class Leaky(nn.ReLU):  # fx traces into it: a leaky_relu call, not a ReLU module
        def forward(self, x):
            return torch.nn.functional.leaky_relu(x, 0.1)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Leaky(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double().eval()
    image = torch.randn(3, 24, 24, dtype=torch.float64)
    plan = IncrementalPlan(model, image[None], "3", 0.0, 6)
    assert {str(n.target) for n in plan.clamps} == {"3"}
    occ = occlusion_map(model, image, window=6, stride=5, layer="3", fill=0.5)
    probs, act = naive(model, image, 6, 5, 0.5, "3", occ.channel)
    torch.testing.assert_close(occ.probs, probs, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(occ.feature_activity, act, rtol=1e-9, atol=1e-9)
