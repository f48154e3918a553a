"""Occlusion sensitivity: exact against a brute-force loop, a linear model by hand, errors, CLI."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from convlens.nets.convnet import ConvNet, ConvNetConfig, ConvSpec, PoolSpec, build_model
from convlens.occlusion.maps import occluded_images, occluder_positions, occlusion_map


def naive(model: nn.Module, image: torch.Tensor, window: int, stride: int, fill: float, layer: str, channel: int):
    """One occluded image per forward: (probs (gy, gx, C), activity (gy, gx))."""
    H, W = image.shape[-2:]
    py, px = occluder_positions(H, window, stride), occluder_positions(W, window, stride)
    probs, act = [], []
    with torch.no_grad():
        for y in py:
            for x in px:
                img = image.clone()
                img[:, y:y + window, x:x + window] = fill
                out = model.features(img[None], [layer, "fc8"])
                probs.append(out["fc8"].softmax(1)[0])
                act.append(out[layer][0, channel].sum())
    return torch.stack(probs).reshape(len(py), len(px), -1), torch.stack(act).reshape(len(py), len(px))


@pytest.fixture(scope="module")
def tiny64():
    return build_model("zfnet-tiny", init="kaiming", seed=0).double().eval()


@pytest.fixture(scope="module")
def reference(tiny64):
    """The naive loop, computed once: window 8, stride 6 (positions 0, 6, 12, 18, 24 = flush)."""
    torch.set_num_threads(1)
    image = torch.randn(3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    channel = int(tiny64.features(image[None], ["conv5"])["conv5"][0].sum((1, 2)).argmax())
    return image, channel, *naive(tiny64, image, 8, 6, 0.3, "conv5", channel)


def test_positions_cover_every_pixel():
    assert occluder_positions(32, 8, 5) == [0, 5, 10, 15, 20, 24]  # last one flush with the border
    assert occluder_positions(32, 8, 8) == [0, 8, 16, 24]
    assert occluder_positions(6, 6, 1) == [0]


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_equals_naive_loop(tiny64, reference, incremental, batch_size):
    image, channel, probs, act = reference
    occ = occlusion_map(tiny64, image, window=8, stride=6, fill=0.3, layer="conv5",
                        batch_size=batch_size, incremental=incremental)
    assert occ.channel == channel  # default: the largest total activation
    torch.testing.assert_close(occ.probs, probs)
    torch.testing.assert_close(occ.feature_activity, act)
    torch.testing.assert_close(occ.target_prob, probs[..., occ.target])
    assert torch.equal(occ.top_label, probs.argmax(-1))
    assert occ.feature_activity.std() > 0 and occ.target_prob.std() > 0  # the test can fail


@pytest.mark.parametrize("arch,size,layer", [("alexnet-small", 28, "conv2"), ("zfnet-small", 28, "pool2")])
def test_incremental_other_geometries(arch, size, layer):
    model = build_model(arch, init="kaiming", seed=1).double().eval()
    image = torch.randn(3, size, size, dtype=torch.float64)
    occ = occlusion_map(model, image, window=7, stride=5, layer=layer, batch_size=4)
    probs, act = naive(model, image, 7, 5, 0.0, layer, occ.channel)
    torch.testing.assert_close(occ.probs, probs)
    torch.testing.assert_close(occ.feature_activity, act)


def six_by_six_net() -> ConvNet:
    cfg = ConvNetConfig(
        name="six", input_size=6,
        convs=((1, ConvSpec(4, 3, 1, 1, pool=PoolSpec(3, 2, ceil_mode=True), norm=True)),
               (2, ConvSpec(3, 2, 1, 0))),
        fc=(), num_classes=3, lrn_alpha=0.5,
    )
    model = ConvNet(cfg)
    torch.manual_seed(3)
    for p in model.parameters():
        nn.init.normal_(p, 0, 1)
    return model.double().eval()


@pytest.mark.parametrize("window,stride", [(2, 1), (3, 2), (5, 3), (6, 1)])
def test_six_by_six_brute_force(window, stride):
    model = six_by_six_net()
    image = torch.randn(3, 6, 6, dtype=torch.float64)
    for incremental in (True, False):
        occ = occlusion_map(model, image, window=window, stride=stride, layer="conv2", batch_size=2,
                            incremental=incremental)
        probs, act = naive(model, image, window, stride, 0.0, "conv2", occ.channel)
        torch.testing.assert_close(occ.probs, probs)
        torch.testing.assert_close(occ.feature_activity, act)


def test_linear_model_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).double()
    image = torch.randn(3, 6, 6, dtype=torch.float64)
    fill = 0.25
    occ = occlusion_map(model, image, window=3, stride=2, fill=fill, layer="0", target=2)
    w = model[1].weight.reshape(4, 3, 6, 6)
    clean = model(image[None])[0]
    for gy, y in enumerate([0, 2, 3]):
        for gx, x in enumerate([0, 2, 3]):
            change = (w[:, :, y:y + 3, x:x + 3] * (fill - image[:, y:y + 3, x:x + 3])).sum((1, 2, 3))
            logp = occ.probs[gy, gx].log()
            # log-probability differences are logit differences
            torch.testing.assert_close(logp - logp[0], (clean + change) - (clean + change)[0])
    assert occ.positions[2, 1].tolist() == [3, 2]


def test_heatmaps_average_covering_occluders(tiny64):
    image = torch.randn(3, 32, 32, dtype=torch.float64)
    occ = occlusion_map(tiny64, image, window=8, stride=5)
    pos = occluder_positions(32, 8, 5)
    cover = [i for i, p in enumerate(pos) if p <= 22 < p + 8]  # pixel (22, 22)
    expect = occ.target_prob[cover][:, cover].mean()
    torch.testing.assert_close(occ.prob_heatmap[22, 22], expect)
    assert occ.prob_heatmap.shape == (32, 32) and occ.label_heatmap.shape == (32, 32)
    assert occ.label_heatmap[0, 0] == occ.top_label[0, 0] and occ.label_heatmap[31, 31] == occ.top_label[-1, -1]


def test_no_side_effects(tiny_model):
    tiny_model.train()
    image = torch.randn(1, 3, 32, 32)
    before = image.clone()
    occlusion_map(tiny_model, image, window=16, stride=16)
    assert tiny_model.training and torch.equal(image, before)


@pytest.mark.parametrize("kw,msg", [
    (dict(window=40, stride=4), "larger than the image"),
    (dict(window=8, stride=0), "positive"),
    (dict(window=8, stride=9), "never be occluded"),
    (dict(window=8, stride=4, layer="conv9"), "unknown layer"),
    (dict(window=8, stride=4, target=7), "out of range"),
])
def test_bad_inputs(tiny_model, kw, msg):
    with pytest.raises(ValueError, match=msg):
        occlusion_map(tiny_model, torch.randn(3, 32, 32), **kw)


def test_bad_layer_generic_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ValueError, match="unknown layer"):
        occlusion_map(model, torch.randn(3, 2, 2), window=1, stride=1, layer="features.3")


def test_occluded_images():
    img = torch.zeros(1, 3, 5, 5)
    out = occluded_images(img, torch.tensor([0, 3]), torch.tensor([1, 3]), 2, 1.0)
    assert out[0, :, 0:2, 1:3].eq(1).all() and out[0].sum() == 12
    assert out[1, :, 3:5, 3:5].eq(1).all() and out[1].sum() == 12


def test_cli_end_to_end(tiny_checkpoint, image_folder, tmp_path):
    from convlens.cli import main

    image = next(iter(sorted((image_folder / "a").iterdir())))
    out = tmp_path / "occ"
    rc = main(["occlude", "--checkpoint", str(tiny_checkpoint), "--image", str(image), "--window", "8",
               "--stride", "4", "--label", "1", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["kind"] == "occlusion" and result["data"]["target"] == 1
    for fig in result["figures"]:
        assert (out / fig["path"]).is_file()
    assert main(["occlude", "--checkpoint", str(tiny_checkpoint), "--image", str(image), "--window", "99",
                 "--stride", "4", "--out", str(out)]) == 2


def test_panel_c_projection_is_drawn(tiny_model):
    """Fig. 7 panel (c): the projection of the map's strongest unit exists and is not blank."""
    from types import SimpleNamespace

    from convlens.core.capture import capture
    from convlens.occlusion.figures import occlusion_projection

    x = torch.randn(3, 32, 32)
    act = capture(tiny_model, x[None], ["conv5"])["conv5"][0]
    channel = int(act.flatten(1).amax(1).argmax())
    assert act[channel].max() > 0
    proj01, box = occlusion_projection(tiny_model, x, SimpleNamespace(layer="conv5", channel=channel), "deconvnet")
    assert proj01 is not None and box is not None
    assert proj01.shape == (3, 32, 32) and float(proj01.std()) > 0


def test_colour_bars_span_exactly_the_drawn_values(tiny_model):
    """Panels (b) and (d): each colour bar's ends are the min and max of the map drawn, and it says how."""
    from convlens.occlusion.figures import HOW_DRAWN, render_occlusion

    x = torch.randn(3, 32, 32)
    occ = occlusion_map(tiny_model, x, window=8, stride=4)
    fig = render_occlusion(torch.rand(3, 32, 32), occ, None, None, [])
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(bars) == 2
    for heat, bar in zip((occ.activity_heatmap, occ.prob_heatmap), bars, strict=True):
        assert float(heat.max()) > float(heat.min())  # a live map
        assert bar.get_ylim() == pytest.approx((float(heat.min()), float(heat.max())))
        assert HOW_DRAWN in bar.get_ylabel().replace(",\n", ", ")
    # the grid spans more than the drawn per-pixel means: the CLI's summary says which is which
    assert float(occ.target_prob.max()) >= float(occ.prob_heatmap.max()) - 1e-6
