"""Deconvnet projections (Sec. 2.1): exactness against autograd, hand cases, batching, hygiene, Captum."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from convlens.core.receptive_field import unit_box
from convlens.deconv import project as deconv
from convlens.deconv import sanity
from convlens.deconv.project import RULES, project_max, project_topk, project_units
from convlens.deconv.sanity import sanity_check
from convlens.nets.convnet import ConvNet, ConvNetConfig, ConvSpec, PoolSpec, build_model

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is not present")



def _generic(model: nn.Module, images: torch.Tensor, layer: str, units: torch.Tensor, rule: str) -> torch.Tensor:
    """The autograd-rule path (what any nn.Module gets), forced on a ConvNet."""
    return deconv._project_generic(model.eval(), images, layer, lambda act: units, rule)[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("arch", ["zfnet-tiny", "zfnet-small", "alexnet-small"])
def test_explicit_equals_autograd_rules(arch):
    model = build_model(arch, init="kaiming", seed=0).double().eval()
    size = model.cfg.input_size
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    for layer in ("conv1", "conv2", "conv5", "fc7"):
        proj = project_max(model, x, layer, range(model.features(x, [layer])[layer].shape[1]))
        order = proj.values.argsort(dim=1, descending=True)[:, :2]  # each image's two strongest channels
        proj = project_units(model, x, layer, proj.units.gather(1, order[..., None].expand(-1, -1, 3)))
        live = proj.values > 0
        assert live.all(), f"{arch} {layer}: {int((~live).sum())} of 4 projected units are dead"
        for rule in RULES:
            ours = project_units(model, x, layer, proj.units, rule=rule).images
            ref = _generic(model, x, layer, proj.units, rule)
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max()))
            assert ref[live].abs().amax() > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["zfnet", "alexnet"])
def test_explicit_equals_autograd_full_size(arch):
    model = build_model(arch, init="kaiming", seed=0).double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    proj = project_topk(model, x, "conv5", 7, k=2)
    assert (proj.values > 0).all()
    ref = _generic(model, x, "conv5", proj.units, "deconvnet")
    assert _rel(proj.images, ref) < 1e-10


def _pool_net(in_ch: int = 1) -> ConvNet:
    """1x1 ones conv -> relu -> 3x3/2 max pool -> 2x2 ones conv -> relu (a unit of 'conv2' reads 4 pooled)."""
    cfg = ConvNetConfig(name="pool-tie", input_size=5, in_channels=in_ch, fc=(), num_classes=1,
                        convs=((1, ConvSpec(1, 1, pool=PoolSpec(3, 2))), (2, ConvSpec(1, 2))))
    net = ConvNet(cfg).double()
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.constant_(m.weight, 1.0)
            nn.init.zeros_(m.bias)
    return net.eval()


def test_overlapping_pool_switch_shared_by_four_windows_sums():
    # The centre pixel is the max of all four overlapping 3x3/2 windows of a 5x5 input.
    net = _pool_net()
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = 1.0
    proj = project_units(net, x, "conv2", torch.tensor([[0, 0, 0]]))
    assert float(proj.values) == 4.0  # conv2 = sum of the four pooled maxima
    expected = torch.zeros(1, 5, 5, dtype=torch.float64)
    expected[0, 2, 2] = 4.0 * 4.0  # value 4, unpooled by four windows onto one switch: SUMMED (x4)
    torch.testing.assert_close(proj.images[0, 0], expected)
    torch.testing.assert_close(proj.images[0, 0], _generic(net, x, "conv2", proj.units, "deconvnet")[0, 0])
    # max_unpool2d (overwrite) would put 4, not 16, there: the documented convention is the sum


def test_pool_ties_equal_values_match_autograd():
    # plateaus: every window has ties; switches must be the very ones autograd uses
    net = _pool_net()
    x = torch.tensor([[1, 1, 2, 2, 2], [1, 1, 2, 2, 2], [0, 0, 2, 2, 2], [3, 3, 3, 0, 0], [3, 3, 3, 0, 0]],
                     dtype=torch.float64)[None, None]
    units = torch.tensor([[[0, 0, 0]]])
    for rule in RULES:
        ours = project_units(net, x, "conv2", units, rule=rule).images
        torch.testing.assert_close(ours, _generic(net, x, "conv2", units, rule))


def _without_relus(model: ConvNet) -> ConvNet:
    for name, m in model.stages():
        if isinstance(m, nn.ReLU):
            setattr(model, name, nn.Identity())
    return model


def _value_times_grad(model: ConvNet, x: torch.Tensor, layer: str, unit: tuple[int, int, int]) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    act = model.features(xg, [layer])[layer][0, unit[0], unit[1], unit[2]]
    (grad,) = torch.autograd.grad(act, xg)
    return act.detach() * grad


def test_no_relu_net_projection_is_value_times_input_gradient():
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    unit = (3, 1, 2)
    model = _without_relus(build_model("zfnet-tiny", init="kaiming", seed=1).double().eval())
    ours = project_units(model, x, "conv5", torch.tensor([[unit]]), rule="gradient").images[0]
    torch.testing.assert_close(ours, _value_times_grad(model, x, "conv5", unit))  # true LRN gradient
    model.norm1, model.norm2 = nn.Identity(), nn.Identity()  # the deconvnet passes LRN through
    for rule in RULES:
        ours = project_units(model, x, "conv5", torch.tensor([[unit]]), rule=rule).images[0]
        torch.testing.assert_close(ours, _value_times_grad(model, x, "conv5", unit))


def test_hand_computed_4x4_ones_weights():
    # captum tests/attr/test_deconvolution.py, BasicModel_ConvNet_One_Conv: conv 1->2 3x3 ones
    # (biases -50, -75), relu, fc 8->4 with rows [1,1,1,1,1,-1,-1,-1].
    cfg = ConvNetConfig(name="one-conv", input_size=4, in_channels=1, convs=((1, ConvSpec(2, 3)),), fc=((6, 4),),
                        num_classes=1, dropout=0.0)
    net = ConvNet(cfg).double().eval()
    with torch.no_grad():
        net.conv1.weight.fill_(1.0)
        net.conv1.bias.copy_(torch.tensor([-50.0, -75.0]))
        net.fc6.weight.copy_(torch.cat([torch.ones(4, 5), -torch.ones(4, 3)], 1))
        net.fc6.bias.zero_()
    x = torch.arange(16.0, dtype=torch.float64).view(1, 1, 4, 4)
    proj = project_units(net, x, "fc6", torch.tensor([[[0, 0, 0]]]))
    assert float(proj.values) == 54.0  # (0 + 4 + 31 + 40 + 0) - (0 + 6 + 15)
    expected = torch.tensor([[2, 3, 3, 1], [3, 5, 5, 2], [3, 5, 5, 2], [1, 2, 2, 1]], dtype=torch.float64)
    torch.testing.assert_close(proj.images[0, 0, 0], 54.0 * expected)
    torch.testing.assert_close(proj.boxes[0, 0], torch.tensor([0, 0, 4, 4]))


def test_batching_equals_one_at_a_time():
    model = build_model("zfnet-tiny", init="kaiming", seed=0).double().eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    act = model.features(x, ["conv5"])["conv5"]
    # 4 live units per image (value > 0), drawn at random among that image's live units
    units = torch.stack([act[n].nonzero()[torch.randperm(int((act[n] > 0).sum()))[:4]] for n in range(3)])
    batched = project_units(model, x, "conv5", units)
    assert units.shape == (3, 4, 3) and (batched.values > 0).all()
    for n in range(3):
        for k in range(4):
            one = project_units(model, x[n : n + 1], "conv5", units[n : n + 1, k : k + 1])
            torch.testing.assert_close(batched.images[n, k], one.images[0, 0], rtol=0, atol=1e-13)
            assert float(batched.values[n, k]) == float(one.values[0, 0])


def test_project_max_topk_values_and_boxes(tiny_model):
    x = torch.randn(2, 3, 32, 32)
    act = tiny_model.features(x, ["conv5"])["conv5"]
    proj = project_max(tiny_model, x, "conv5", [4, 1])
    assert proj.images.shape == (2, 2, 3, 32, 32) and proj.layer == "conv5" and proj.rule == "deconvnet"
    torch.testing.assert_close(proj.values, act[:, [4, 1]].flatten(2).amax(-1))
    assert (proj.values > 0).all()
    n, k = 1, 0
    _c, y, xx = proj.units[n, k].tolist()
    assert tuple(proj.boxes[n, k].tolist()) == unit_box(tiny_model, "conv5", y, xx, 32)
    top = project_topk(tiny_model, x, "conv5", 4, k=3)
    assert top.units.shape == (2, 3, 3) and (top.values[:, :-1] >= top.values[:, 1:]).all()
    torch.testing.assert_close(top.values[:, 0], proj.values[:, 0])
    d = top.to_dict()
    assert set(d) >= {"images", "values", "units", "boxes", "layer", "rule"}


def test_projection_lies_inside_receptive_field(tiny_model):
    x = torch.randn(1, 3, 32, 32)
    act = tiny_model.features(x, ["conv2"])["conv2"][0]
    channel = int((act > 0).flatten(1).sum(1).argmax())  # the channel with the most live units
    proj = project_topk(tiny_model, x, "conv2", channel, k=4)
    assert (proj.values > 0).all()  # live units: their projections are not trivially zero
    for k in range(4):
        assert float(proj.images[0, k].abs().sum()) > 0
        assert _outside(proj.images[0, k], proj.boxes[0, k].tolist()) == 0.0


def test_errors(tiny_model):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="rule must be one of"):
        project_max(tiny_model, x, "conv5", [0], rule="lrp")
    with pytest.raises(ValueError, match="unknown layer"):
        project_max(tiny_model, x, "conv9", [0])
    with pytest.raises(ValueError, match="channel out of range"):
        project_units(tiny_model, x, "conv5", torch.tensor([[99, 0, 0]]))
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, W\)"):
        project_max(tiny_model, x[0], "conv5", [0])
    with pytest.raises(ValueError, match="units must have shape"):
        project_units(tiny_model, x, "conv5", torch.tensor([0, 0, 0]))


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            raise RuntimeError("boom")
        return x


def _outside(img: torch.Tensor, box: list[int]) -> float:
    """Largest |value| of a (3, H, W) map outside a (y0, x0, y1, x1) box."""
    m = img.abs().sum(0)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = 0
    return float(m.max())


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_hygiene_after_success_and_exception(tiny_model):
    tiny_model.train()
    params = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    x0 = x.clone()
    for rule in RULES:
        project_max(tiny_model, x, "conv3", [1], rule=rule)
        _generic(tiny_model, x, "conv3", torch.tensor([[[1, 0, 0]]] * 2), rule)
        tiny_model.train()
    assert tiny_model.training and all(m.training for m in tiny_model.modules())
    assert _hooks(tiny_model) == 0
    torch.testing.assert_close(x, x0)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, params[k]), k
    # generic path, torchvision-style inplace relus, failing forward
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), _Boom(), nn.Conv2d(4, 2, 3)).train()
    with pytest.raises(RuntimeError, match="boom"):
        project_max(net, x, "3", [0])
    assert _hooks(net) == 0 and net.training and net[1].inplace
    assert project_max(nn.Sequential(*net[:2], net[3]).train(), x, "2", [0]).images.shape == (2, 1, 3, 32, 32)
    assert net[1].inplace and net.training


def test_generic_torchvision_resnet_and_relu6():
    net = torchvision.models.resnet18(num_classes=3).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    proj = project_max(net, x, "layer2.1.bn2", [0, 5])
    assert (proj.values > 0).all()
    for k in range(2):
        assert float(proj.images[0, k].abs().sum()) > 0
        assert _outside(proj.images[0, k], proj.boxes[0, k].tolist()) == 0.0
    # gradient rule == value * autograd gradient
    grad = project_units(net, x, "layer2.1.bn2", proj.units, rule="gradient").images
    xg = x.clone().requires_grad_(True)
    out = {}
    h = net.layer2[1].bn2.register_forward_hook(lambda m, i, o: out.setdefault("a", o))
    net(xg)
    h.remove()
    c, yy, xx = proj.units[0, 0].tolist()
    (g,) = torch.autograd.grad(out["a"][0, c, yy, xx], xg)
    torch.testing.assert_close(grad[0, 0], proj.values[0, 0] * g[0])
    # ReLU6 (mobilenet): warned once, treated as a rectifier
    mb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(inplace=True),
                       nn.Conv2d(4, 2, 3)).double().eval()
    with pytest.warns(UserWarning, match="ReLU6"):
        p = project_max(mb, x, "3", [0])
    assert torch.isfinite(p.images).all() and mb[2].inplace


class _FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


def test_functional_relu_is_an_error_for_rectifying_rules():
    net = _FunctionalNet().eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="functional relus"):
        project_max(net, x, "conv2", [0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert project_max(net, x, "conv2", [0], rule="gradient").images.shape == (1, 1, 3, 16, 16)


def test_sanity_check_does_not_touch_model_and_scores(tiny_model):
    params = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    units = project_max(tiny_model, x, "conv3", [2]).units
    sc = sanity_check(tiny_model, x, "conv3", units, seed=0)
    assert sc.layers == ("conv3", "conv2", "conv1")
    assert sc.spearman.shape == (3, 2, 1) and sc.randomized.shape == (3, 2, 1, 3, 32, 32)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, params[k]), k
    assert float(sc.spearman.nan_to_num(1.0).abs().max()) <= 1.0 + 1e-6
    # all three layers random: the maps no longer look like the trained ones (pearson well below 1)
    assert float(sc.pearson[-1].nan_to_num(0.0).mean()) < 0.9
    d = sc.to_dict()
    assert len(d["spearman_mean"]) == 3


@pytest.mark.slow
def test_captum_neuron_deconvolution_matches_at_224():
    # Conditions: LRN passed straight through on the way down (a full backward hook returning
    # grad_output on each norm, convlens' deconvnet rule); Captum seeds the unit with 1, we seed
    # it with its activation; separate, non-inplace nn.ReLU modules; eval mode.
    captum = pytest.importorskip("captum.attr")
    model = build_model("zfnet", seed=0).double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    proj = project_topk(model, x, "conv5", 11, k=1)
    hooks = [m.register_full_backward_hook(lambda _m, _gi, go: (go[0],))
             for m in model.modules() if isinstance(m, nn.LocalResponseNorm)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = captum.NeuronDeconvolution(model, model.relu5).attribute(x, tuple(proj.units[0, 0].tolist()))
    finally:
        for h in hooks:
            h.remove()
    assert _rel(proj.images[0, 0], proj.values[0, 0] * ref[0]) < 1e-5


@needs_shared
@pytest.mark.shared_data
def test_mobilenet_v2_generic_path_on_imagenet_sample():
    from PIL import Image

    weights = SHARED / "models" / "mobilenet_v2_imagenet" / "mobilenet_v2_imagenet.pt"
    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    path = next((SHARED / "imagenet-sample" / "n01440764").glob("*.JPEG"))
    img = Image.open(path).convert("RGB").resize((112, 112))
    x = torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proj = project_max(net, x, "features.6.conv.0.2", [0, 1, 2, 3])
    assert proj.images.shape == (1, 4, 3, 112, 112) and torch.isfinite(proj.images).all()
    live = proj.values[0] > 0
    assert live.any()
    for k in range(4):
        assert _outside(proj.images[0, k], proj.boxes[0, k].tolist()) == 0.0
        assert (float(proj.images[0, k].abs().sum()) > 0) == bool(live[k])


def test_cli_project_writes_pngs_and_result(tiny_checkpoint, image_folder, tmp_path):
    import json

    from convlens.cli import main

    image = next((image_folder / "a").glob("*.png"))
    out = tmp_path / "project"
    rc = main(["project", "--checkpoint", str(tiny_checkpoint), "--image", str(image), "--layer", "conv2",
               "--top", "4", "--sanity", "--out", str(out)])
    assert rc == 0
    for name in ("image.png", "view.png", "projection.png", "projection_rf.png", "patch.png", "grid.png", "sanity.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "result.json").read_text())
    assert result["kind"] == "project" and len(result["data"]["units"]) == 4
    for view, rf in zip(result["data"]["views"], result["data"]["rf_boxes"], strict=True):  # display box inside the RF
        y0, x0, y1, x1 = view["display_box"]
        assert view["rf_box"] == rf and rf[0] <= y0 < y1 <= rf[2] and rf[1] <= x0 < x1 <= rf[3]
    assert "grey = 0" in result["data"]["contrast"]
    assert result["data"]["values"][0] >= result["data"]["values"][-1]
    assert result["data"]["sanity"]["layers"] == ["conv2", "conv1"]
    assert main(["project", "--checkpoint", str(tiny_checkpoint), "--image", str(image), "--top", "0",
                 "--out", str(out)]) == 2


def test_spearman_averages_ties():
    # two sparse maps sharing no support: scipy.stats.spearmanr gives -0.0973729 (ties averaged);
    # ordinal ranks of the zeros would instead correlate through pixel order
    a = torch.zeros(1, 3, 4, 4)
    a[0, 0, 1, 1], a[0, 1, 2, 2] = 1.0, 2.0
    b = torch.zeros(1, 3, 4, 4)
    b[0, 0, 3, 3] = 1.0
    spearman, _pearson = sanity._correlations(a, b)
    assert float(spearman) == pytest.approx(-0.09737289911202952, abs=1e-12)
    assert float(sanity._correlations(a, a)[0]) == pytest.approx(1.0)
