"""Each projection rule against an oracle that shares none of convlens's rule code.

Captum's ``NeuronDeconvolution`` (deconvnet: ReLU backward = ReLU of the signal) and
``NeuronGuidedBackprop`` (guided: also gated by the forward ReLU), and plain autograd for the
``gradient`` rule, on small nets in float64: convlens's own ConvNet (explicit path, overlapping
3x3/2 max pooling, LRN) and generic ``nn.Module`` CNNs (a Sequential with BatchNorm and max
pooling, a residual block). Captum seeds the unit with 1 where convlens seeds it with the
activation, so the reference is scaled by the unit's value. Units are checked live before they are
compared.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from convlens.deconv.project import project_units
from convlens.nets.convnet import build_model

captum = pytest.importorskip("captum.attr")

ORACLES = {"deconvnet": "NeuronDeconvolution", "guided": "NeuronGuidedBackprop"}


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(self.pool(self.relu(h + self.body(h))))


class _Strided(nn.Module):
    """No max pooling (like MobileNet/ResNet bodies): the explicit way down on the traced graph."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=3), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.Conv2d(6, 6, 1))
        self.head = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(h + self.body(h))


NETS = {"sequential": ("8", lambda: _sequential()), "residual": ("head.1", lambda: _Residual()),
        "strided": ("head.1", lambda: _Strided())}


def _sequential() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())


def _eval64(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.double().eval()


def _lrn_pass_through(model: nn.Module, rule: str) -> list[torch.utils.hooks.RemovableHandle]:
    # the deconvnet rule passes LRN straight through on the way down (docs/deconv.md), the guided
    # rule takes its true gradient; so must the oracle
    if rule != "deconvnet":
        return []
    return [m.register_full_backward_hook(lambda _m, _gi, go: (go[0],))
            for m in model.modules() if isinstance(m, nn.LocalResponseNorm)]


def _live_units(act: torch.Tensor, k: int) -> torch.Tensor:
    """(k, 3) (channel, y, x) of the k strongest positive activations of image 0, distinct channels."""
    a = act[0]
    best = a.flatten(1).max(1)
    chans = best.values.argsort(descending=True)[:k]
    units = [(int(c), *divmod(int(best.indices[c]), a.shape[-1])) for c in chans]
    assert all(a[c, y, x] > 0 for c, y, x in units), "the oracle needs live units"
    return torch.tensor(units)


def _check(model: nn.Module, module: nn.Module, layer: str, x: torch.Tensor, rule: str, k: int = 3) -> None:
    store: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o.detach()))
    try:
        model(x)
    finally:
        handle.remove()
    units = _live_units(store["a"], k)
    proj = project_units(model, x, layer, units, rule=rule)
    hooks = _lrn_pass_through(model, rule)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            method = getattr(captum, ORACLES[rule])(model, module)
            refs = [method.attribute(x, tuple(u.tolist())) for u in units]
    finally:
        for h in hooks:
            h.remove()
    for j, ref in enumerate(refs):
        value = store["a"][0][tuple(units[j].tolist())]
        assert float(ref.abs().sum()) > 0, "the reference projection is empty"
        torch.testing.assert_close(proj.images[0, j], value * ref[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_convnet_rules_equal_captum(rule: str) -> None:
    model = build_model("zfnet-tiny", init="kaiming", seed=0).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    _check(model, model.relu3, "conv3", x, rule)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("size", [24, 12])  # 24: receptive-field crops; 12: whole images (the explicit way down
def test_generic_rules_equal_captum(rule: str, net: str, size: int) -> None:  # without max pooling)
    layer, make = NETS[net]
    model = _eval64(make())
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    _check(model, model.get_submodule(layer), layer, x, rule)


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("size", [24, 12])
def test_gradient_rule_equals_autograd(net: str, size: int) -> None:
    layer, make = NETS[net]
    model = _eval64(make())
    x = torch.randn(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    store: dict[str, torch.Tensor] = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
    try:
        model(x)
    finally:
        handle.remove()
    units = _live_units(store["a"].detach(), 2)
    proj = project_units(model, x.detach(), layer, units, rule="gradient")
    for j, (c, y, xx) in enumerate(units.tolist()):
        act = store["a"][0, c, y, xx]
        (grad,) = torch.autograd.grad(act, x, retain_graph=True)
        assert float(grad.abs().sum()) > 0
        torch.testing.assert_close(proj.images[0, j], act.detach() * grad[0], rtol=1e-9, atol=1e-12)
